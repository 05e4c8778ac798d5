"""The checks `jaxrnn.testing.check_cell` runs, each against an independent reference."""

from __future__ import annotations

import importlib.util
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

from jaxrnn import checkpoint, export
from jaxrnn.cells import KINDS, base, kernel
from jaxrnn.layers import recurrent
from jaxrnn.rnn_stack import rnn_layers
from jaxrnn.scan import scan
from jaxrnn.stream import stream
from jaxrnn.testing.reference import (
  Case,
  CellCheckError,
  compare,
  float_dtype,
  loop_reference,
  row,
)


def real_parts(tree) -> list[jax.Array]:
  """The leaves of ``tree``, a complex one as its real and imaginary parts: what a check's
  real-valued loss sums over (a complex carry's)."""
  leaves = jax.tree.leaves(tree)
  return [p for a in leaves for p in ((a.real, a.imag) if jnp.iscomplexobj(a) else (a,))]


def check_step(case: Case) -> str:
  """``step``: its carry keeps the initial carry's structure, shapes and dtypes; jitted,
  vmapped and unbatched it gives the batched eager values."""
  cell, params, carry, x = case.cell, case.params, case.carry, case.xs[:, 0]
  tol = dict(rtol=case.rtol, atol=case.atol)
  new, y = cell.step(params, carry, x)
  want = jax.tree.map(lambda a: (a.shape, a.dtype), carry)
  got = jax.tree.map(lambda a: (a.shape, a.dtype), new)
  if jax.tree.structure(new) != jax.tree.structure(carry) or got != want:
    raise CellCheckError("step", f"the new carry is {got}; expected the carry's {want}.")
  compare("step", jax.jit(cell.step)(params, carry, x), (new, y), what="jit(step)", **tol)
  vmapped = jax.vmap(cell.step, in_axes=(None, 0, 0))(params, carry, x)
  compare("step", vmapped, (new, y), what="vmap(step)", **tol)
  single = cell.step(params, row(carry, 0), x[0])
  compare("step", single, row((new, y), 0), what="step(one row)", **tol)
  return "passed"


def check_scan(case: Case) -> str:
  """`jaxrnn.scan` with lengths, resets and a random initial carry, forward and reverse,
  against `loop_reference`."""
  for reverse in (False, True):
    run = jax.jit(
      lambda p, xs, c, r=reverse: scan(
        case.cell, p, xs, c, seq_lengths=case.lengths, resets=case.resets, reverse=r, unroll=1
      )
    )
    got = run(case.params, case.xs, case.carry)
    want = loop_reference(case, reverse, lengths=case.lengths, resets=case.resets)
    what = "reversed " if reverse else ""
    compare("scan", got[1], want[1], what=what + "ys", time_axis=1, rtol=case.rtol, atol=case.atol)
    compare("scan", got[0], want[0], what=what + "carry", rtol=case.rtol, atol=case.atol)
  return "passed"


def _noise(case: Case) -> kernel.Noise | None:
  """Recurrent-dropout and zoneout masks, if the cell's kernel takes them."""
  if not getattr(case.cell.sequence, "takes_noise", False):
    return None
  rng = np.random.default_rng(3)
  h = kernel.hidden(case.carry)
  T = case.xs.shape[1]
  keep = jax.tree.map(lambda c: jnp.asarray(rng.random((T,) + c.shape) < 0.3, c.dtype), case.carry)
  h_mask = jnp.asarray((rng.random(h.shape) > 0.3) / 0.7, h.dtype)
  y = jax.eval_shape(case.cell.step, case.params, case.carry, case.xs[:, 0])[1]
  zoned = y.shape == h.shape  # zoneout needs a cell whose output is its h (no readout)
  return kernel.Noise(h_mask, keep if zoned else None)


def check_kernel(case: Case) -> str:
  """The default path (the cell's whole-sequence kernel) against ``impl="step"``: values,
  and gradients with respect to params, initial carry and inputs, forward and reverse,
  with lengths, resets and the regularizer masks the kernel takes."""
  if case.cell.sequence is None and case.cell.coefficients is None:
    return "skipped: the cell has no whole-sequence kernel (its default path is the step loop)"
  noise = _noise(case)
  rng = np.random.default_rng(4)

  def loss(params, carry, xs, w, impl, reverse):
    kw = dict(seq_lengths=case.lengths, resets=case.resets, noise=noise, reverse=reverse)
    kw.update(unroll=1)  # unrolling changes no value, and multiplies the compile time
    final, ys = scan(case.cell, params, xs, carry, impl=impl, **kw)
    total = jnp.sum(ys * w) + sum(jnp.sum(jnp.sin(c)) for c in real_parts(final))
    return total, (final, ys)

  @jax.jit
  def runs(params, carry, xs, w):
    grad = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
    return {(i, r): grad(params, carry, xs, w, i, r) for i in ("auto", "step") for r in (0, 1)}

  width = jax.eval_shape(scan, case.cell, case.params, case.xs)[1].shape[-1]
  w = jnp.asarray(rng.normal(size=case.xs.shape[:2] + (width,)), case.xs.dtype)
  out = runs(case.params, case.carry, case.xs, w)
  for r, direction in ((0, ""), (1, "reversed ")):
    (_, (final, ys)), grads = out[("auto", r)]
    (_, (final_s, ys_s)), grads_s = out[("step", r)]
    tol = dict(rtol=case.rtol, atol=case.atol)
    compare("kernel", ys, ys_s, what=direction + "ys", time_axis=1, **tol)
    compare("kernel", final, final_s, what=direction + "carry", **tol)
    for name, g, g_s in zip(("params", "carry", "xs"), grads, grads_s, strict=True):
      scale = max(1.0, max((float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(g_s)), default=1))
      tol_g = dict(rtol=case.rtol, atol=case.atol * scale)
      compare("kernel", g, g_s, what=f"{direction}grad {name}", **tol_g)
  masks = ["recurrent dropout"] if noise is not None else []
  masks += ["zoneout"] if noise is not None and noise.keep is not None else []
  return "passed" + (f" (with {' and '.join(masks)} masks)" if masks else "")


def check_gradients(case: Case) -> str:
  """`jax.test_util.check_grads` (finite differences, float64) of a loss of the default
  path with lengths and resets, with respect to params, initial carry and inputs."""
  with jax.enable_x64(True):
    wide = lambda a: jnp.complex128 if jnp.iscomplexobj(a) else jnp.float64  # noqa: E731
    to64 = lambda a: a.astype(wide(a)) if jnp.issubdtype(a.dtype, jnp.inexact) else a  # noqa: E731
    params, carry, xs = jax.tree.map(to64, (case.params, case.carry, case.xs))

    @jax.jit
    def loss(params, carry, xs):
      kw = dict(seq_lengths=case.lengths, resets=case.resets, unroll=1)
      final, ys = scan(case.cell, params, xs, carry, **kw)
      return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(c * c) for c in real_parts(final))

    try:
      check_grads(loss, (params, carry, xs), order=1, modes=("rev",), eps=1e-4)
    except AssertionError as e:
      raise CellCheckError(
        "gradients", f"reverse-mode gradients differ from finite differences: {e}"
      ) from None
  return "passed"


def check_stream(case: Case) -> str:
  """`jaxrnn.stream`'s step over each time step, with resets, against `jaxrnn.scan`."""
  s = stream(case.cell)
  step = jax.jit(s.step)
  carry, ys = scan(case.cell, case.params, case.xs, case.carry, resets=case.resets)
  state = case.carry
  tol = dict(rtol=case.rtol, atol=case.atol)
  for t in range(case.xs.shape[1]):
    state, y = step(case.params, state, case.xs[:, t], jnp.asarray(case.resets[:, t]))
    try:
      compare("stream", y, ys[:, t], what="ys", **tol)
    except CellCheckError as e:
      msg = str(e).removeprefix("check_cell[stream]: ")
      raise CellCheckError(
        "stream", f"at time step {t}: {msg}", step=t, leaf=e.leaf, got=e.got, want=e.want
      ) from None
  compare("stream", state, carry, what="carry", **tol)
  return "passed"


def check_layers(case: Case) -> str:
  """``rnn_layers(cell, num_layers=2, bidirectional=True)`` with lengths and resets against
  its layers' scans composed by hand (forward, reverse, concatenated)."""
  model = rnn_layers(case.cell, num_layers=2, bidirectional=True, unroll=1)
  params = model.init(jax.random.key(7), case.xs.shape[-1])
  kw = dict(seq_lengths=case.lengths, resets=case.resets)
  carry, ys = jax.jit(lambda p, xs: model.apply(p, xs, **kw))(params, case.xs)
  inputs, carries = case.xs, []
  for layer in params:
    c_f, y_f = scan(case.cell, layer.forward, inputs, **kw)
    c_b, y_b = scan(case.cell, layer.backward, inputs, reverse=True, **kw)
    inputs = jnp.concatenate([y_f, y_b], axis=-1)
    carries.append((c_f, c_b))
  tol = dict(rtol=case.rtol, atol=case.atol)
  compare("layers", ys, inputs, what="ys", time_axis=1, **tol)
  compare("layers", [tuple(c) for c in carry], carries, what="carry", **tol)
  return "passed"


PLATFORMS = ("cpu", "cuda", "tpu")
"""What `check_export` lowers for: a cell must lower for each (only cpu runs here)."""


def check_export(case: Case) -> str:
  """An exported and loaded `recurrent` model, lowered for cpu, cuda and tpu: its ``apply``
  (with lengths and resets) and its streaming ``step`` against the model's, run on cpu."""
  model = recurrent(case.cell)
  xs = np.asarray(case.xs)
  _, want = model.apply(case.params, case.xs, seq_lengths=case.lengths, resets=case.resets)
  _, want_stream = model.apply(case.params, case.xs, resets=case.resets)
  with tempfile.TemporaryDirectory() as path:
    export.save(
      path, model, case.params, input_size=xs.shape[-1], streaming=True, platforms=PLATFORMS
    )
    artifact = export.load(path, expected_config=model)
  _, got = artifact.apply(xs, seq_lengths=case.lengths, resets=case.resets)
  tol = dict(rtol=case.rtol, atol=case.atol)
  compare("export", got, want, what="artifact.apply ys", time_axis=1, **tol)
  state = artifact.init_state(xs.shape[0])
  for t in range(xs.shape[1]):
    state, y = artifact.step(state, xs[:, t], reset=case.resets[:, t])
    compare("export", y, want_stream[:, t], what=f"artifact.step ys at step {t}", **tol)
  return "passed"


def check_checkpoint(case: Case) -> str:
  """A checkpoint of the params, saved and restored with the cell, bit for bit."""
  if importlib.util.find_spec("orbax") is None:
    return "skipped: orbax-checkpoint is not installed (pip install orbax-checkpoint)"
  target = case.cell.init(jax.random.key(11), case.xs.shape[-1])
  with tempfile.TemporaryDirectory() as path:
    checkpoint.save(path, 0, case.params, model=case.cell)
    restored, _ = checkpoint.restore(path, target, model=case.cell)
  compare("checkpoint", restored, case.params, what="params", rtol=0.0, atol=0.0)
  return "passed"


def check_dtype(case: Case) -> str:
  """The dtype policy: inputs of another floating dtype are cast to the compute dtype, so
  they give what the same values in the params' dtype give; the carry keeps its dtype; a
  registered kind's carry follows ``carry_dtype`` (`_check_carry_dtype`)."""
  dtype = float_dtype(case.params)
  other = jnp.float16 if dtype != jnp.float16 else jnp.float32
  low = case.xs.astype(other)
  kw = dict(seq_lengths=case.lengths, unroll=1)
  try:
    got = scan(case.cell, case.params, low, case.carry, **kw)
  except (TypeError, ValueError) as e:
    raise CellCheckError(
      "dtype",
      f"{jnp.dtype(other).name} inputs raised {type(e).__name__}: {e} (a cell casts "
      "floating inputs to its compute dtype)",
    ) from None
  want = scan(case.cell, case.params, low.astype(dtype), case.carry, **kw)
  kinds = jax.tree.map(lambda a: a.dtype, (got, case.carry))
  wanted = jax.tree.map(lambda a: a.dtype, (want, case.carry))
  if kinds != wanted:
    raise CellCheckError("dtype", f"carry and outputs have dtypes {kinds}; expected {wanted}.")
  tol = dict(rtol=case.rtol, atol=case.atol)
  compare("dtype", got[1], want[1], what="ys", time_axis=1, **tol)
  compare("dtype", got[0], want[0], what="carry", **tol)
  _check_carry_dtype(case)
  return "passed"


def _carry_dtypes(cell, params, xs) -> list:
  """The dtypes of ``initial_carry``'s leaves and of `scan`'s returned carry's (traced only)."""
  carry = cell.initial_carry(params, xs.shape[:1])
  after = jax.eval_shape(lambda p, x, c: scan(cell, p, x, c)[0], params, xs, carry)
  return [a.dtype for a in jax.tree.leaves(carry)] + [a.dtype for a in jax.tree.leaves(after)]


def _check_carry_dtype(case: Case) -> None:
  """For a registered kind with the default ``carry_dtype``: with bfloat16 params its carry
  is float32 (complex64 for a complex one), with ``carry_dtype=bfloat16`` bfloat16, and
  with the case's params their dtype (each through ``initial_carry`` and `scan`)."""
  config, kind = dict(case.cell.config), KINDS.get(case.cell.name)
  if kind is None or "carry_dtype" not in config or config["carry_dtype"] is not None:
    return  # a user's cell, or one that asked for its own carry dtype
  to16 = lambda a: a.astype(jnp.bfloat16) if jnp.issubdtype(a.dtype, jnp.floating) else a  # noqa: E731
  low = jax.tree.map(to16, case.params)
  runs = (
    (case.cell, case.params, float_dtype(case.params)),
    (case.cell, low, jnp.float32),
    (kind.factory(**dict(config, carry_dtype="bfloat16")), low, jnp.bfloat16),
  )
  for cell, params, want in runs:
    got = _carry_dtypes(cell, params, case.xs)
    wanted = [
      base.complex_of(want) if jnp.issubdtype(g, jnp.complexfloating) else want for g in got
    ]
    if [jnp.dtype(g) for g in got] != [jnp.dtype(w) for w in wanted]:
      raise CellCheckError(
        "dtype",
        f"with {float_dtype(params).name} params and carry_dtype="
        f"{dict(cell.config)['carry_dtype']!r} the carry has dtypes {got}; expected {wanted}.",
      )


def check_padding(case: Case) -> str:
  """NaN and inf past each row's length reach no value and no gradient: outputs, final
  carry and gradients (params, initial carry, inputs) equal a run on zero padding, on the
  default path and on ``impl="step"``."""
  T = case.xs.shape[1]
  past = np.arange(T)[None, :] >= case.lengths[:, None]
  junk = np.where(np.arange(case.xs.shape[0])[:, None, None] % 2 == 0, np.nan, np.inf)
  zero = jnp.where(jnp.asarray(past)[..., None], jnp.zeros_like(case.xs), case.xs)
  bad = jnp.where(jnp.asarray(past)[..., None], jnp.asarray(junk, case.xs.dtype), case.xs)

  def loss(params, carry, xs, impl):
    final, ys = scan(case.cell, params, xs, carry, seq_lengths=case.lengths, impl=impl, unroll=1)
    total = jnp.sum(jnp.sin(ys)) + sum(jnp.sum(c * c) for c in real_parts(final))
    return total, (final, ys)

  @jax.jit
  def runs(xs):
    grad = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
    return {impl: grad(case.params, case.carry, xs, impl) for impl in ("auto", "step")}

  got, want = runs(bad), runs(zero)
  for impl in ("auto", "step"):
    compare(
      "padding",
      got[impl],
      want[impl],
      what=f"impl={impl!r} (value, outputs), grads",
      rtol=0.0,
      atol=0.0,
    )
  return "passed"
