"""Mamba against a float64 loop of Gu and Dao 2023's algorithm 2 and the authors' reference.

The reference (`reference`) is written from the paper (section 3.2, algorithm 2 "SSM +
Selection (S6)"; section 3.4, the block of figure 3) and from the authors' PyTorch code in
``state-spaces/mamba``: ``mamba_ssm/modules/mamba_simple.py`` (``Mamba.forward``'s path
without the fused kernels: ``in_proj``, ``conv1d`` over the whole sequence with its left
padding, SiLU, ``x_proj``, ``dt_proj``) and ``mamba_ssm/ops/selective_scan_interface.py``
(``selective_scan_ref``: ``deltaA = exp(delta A)``, ``deltaB_u = delta B u``, a loop of
``x = deltaA x + deltaB_u``, ``y = x C``, ``+ D u``, ``* silu(z)``). Their package does not
install without CUDA, so it is rewritten here, whole segment by whole segment: each segment
of a row (split at its resets, up to its length, read backwards for ``reverse``) runs as
``Mamba.forward`` on that segment alone, its convolution's left padding being the carried
window (zeros after a reset). Values: NumPy, float64. Gradients: central differences of
the same NumPy function, float64, on every coordinate of the params, the initial carry
and the inputs.
"""

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from jax.test_util import check_grads

import jaxrnn

mamba_module = importlib.import_module("jaxrnn.cells.mamba")  # jaxrnn.cells.mamba is the factory

B, T = 3, 7
LENGTHS = np.array([T, 5, 0])
RESETS = np.zeros((B, T), bool)
RESETS[0, [0, 4]] = True
RESETS[1, [2, 3]] = True  # a segment of one step
CONFIG = dict(hidden_size=4, expand=2, state_size=3, conv_width=4, dt_rank=2)
INPUT = 3  # != 4: the projection


def silu(xp, v):
  return v / (1.0 + xp.exp(-v))


def softplus(xp, v):
  return xp.logaddexp(0.0, v)


def reference_segment(xp, p, xs, h, window):
  """``Mamba.forward`` on one segment ``xs`` ``(L, I)`` from the state ``h`` ``(E D, N)`` and
  the window ``(K - 1, E D)`` (the convolution's left padding): ``(ys, h, window)``."""
  ED = p["a_log"].shape[0]
  u = xs if p["w_in"] is None else xs @ p["w_in"] + p["b_in"][None]
  xz = u @ p["in_proj"]
  x, z = xz[:, :ED], xz[:, ED:]
  padded = xp.concatenate([window, x])  # F.conv1d(padding=K - 1)[..., :L], the padding carried
  K, L = p["conv_w"].shape[0], xs.shape[0]
  conv = [p["conv_b"] + sum(p["conv_w"][j] * padded[t + j] for j in range(K)) for t in range(L)]
  x = silu(xp, xp.stack(conv))
  R, N = p["dt_w"].shape[0], p["a_log"].shape[1]
  x_dbl = x @ p["x_proj"]
  dt, b, c = x_dbl[:, :R], x_dbl[:, R : R + N], x_dbl[:, R + N :]
  delta = softplus(xp, dt @ p["dt_w"] + p["dt_b"][None])  # delta_bias, delta_softplus=True
  a = -xp.exp(p["a_log"])
  delta_a = xp.exp(xp.einsum("ld,dn->ldn", delta, a))  # selective_scan_ref from here
  delta_b_u = xp.einsum("ld,ln,ld->ldn", delta, b, x)
  ys = []
  for i in range(L):
    h = delta_a[i] * h + delta_b_u[i]
    ys.append(xp.einsum("dn,n->d", h, c[i]))
  y = (xp.stack(ys) + x * p["d"][None]) * silu(xp, z)
  return y @ p["out_proj"], h, padded[L:]


def reference(xp, p, xs, h0, w0, lengths, resets, reverse):
  """Every row, segment by segment: ``(ys (B, T, D), h (B, E D N), window (B, (K-1) E D))``.

  A row's valid part ``[0, length)`` splits where ``resets`` is True; the segment processed
  first starts from ``(h0, w0)`` (forward, unless a reset is at 0), the others from zeros;
  with ``reverse`` each segment is read from its end and the last one is processed first.
  """
  ED, N = p["a_log"].shape
  D, K = p["out_proj"].shape[1], p["conv_w"].shape[0]
  rows, hs, windows = [], [], []
  for r in range(xs.shape[0]):
    n = int(lengths[r])
    starts = sorted({0} | {t for t in range(n) if resets[r, t]})
    segments = [(s, e) for s, e in zip(starts, starts[1:] + [n], strict=True) if s < n]
    segments = segments[::-1] if reverse else segments
    h, window = h0[r].reshape(ED, N), w0[r].reshape(K - 1, ED)
    out = [xp.zeros(D)] * xs.shape[1]
    for i, (s, e) in enumerate(segments):
      if i > 0 or (not reverse and resets[r, 0]):
        h, window = xp.zeros((ED, N)), xp.zeros((K - 1, ED))
      seg = xs[r, s:e][::-1] if reverse else xs[r, s:e]
      ys, h, window = reference_segment(xp, p, seg, h, window)
      for j in range(e - s):
        out[e - 1 - j if reverse else s + j] = ys[j]
    rows.append(xp.stack(out))
    hs.append(h.reshape(-1))
    windows.append(window.reshape(-1))
  return xp.stack(rows), xp.stack(hs), xp.stack(windows)


def as_dict(params, to=np.asarray):
  return {k: None if v is None else to(v) for k, v in params._asdict().items()}


def random_params(cell, input_size, rng, dtype=np.float32):
  """Params of ``cell``'s shapes drawn by NumPy (no compile): weights N(0, 0.5^2), ``dt_b``
  N(0, 1) (``Delta`` about 0.7), ``a_log`` N(0, 0.5^2), ``d`` N(1, 0.5^2), so the state both
  forgets and remembers within a few steps."""
  shapes = jax.eval_shape(lambda k: cell.init(k, input_size), jax.random.key(0))
  draw = lambda name, s: (  # noqa: E731
    rng.normal(size=s.shape) * (1.0 if name == "dt_b" else 0.5) + (name == "d")
  ).astype(dtype)
  return type(shapes)(
    **{k: None if s is None else jnp.asarray(draw(k, s)) for k, s in shapes._asdict().items()}
  )


@functools.cache
def setup(seed=0):
  """``(cell, params, xs, random initial carry, the loss's weights)``, drawn by NumPy."""
  cell = jaxrnn.mamba(**CONFIG)
  rng = np.random.default_rng(seed)
  params = random_params(cell, INPUT, rng)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
  xs = normal(B, T, INPUT)
  c0 = jax.eval_shape(lambda p: cell.initial_carry(p, (B,)), params)
  carry = type(c0)(normal(*c0.h.shape), normal(*c0.conv.shape))
  return cell, params, xs, carry, normal(B, T, CONFIG["hidden_size"])


def loss_of(ys, h, window, weights, xp=jnp):
  return xp.sum(ys * weights) + xp.sum(xp.sin(h)) + xp.sum(window * window)


def close(got, want, rtol):
  """Equal within ``rtol`` relative to the largest magnitude of ``want``."""
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(np.abs(want).max(), 1.0))


@functools.cache
def jaxrnn_runs(chunk_size=None):
  """Values and gradients of `jaxrnn.scan` (its default path: the whole-sequence kernel),
  forward and reverse, with lengths and resets, in one compiled function (the registry's
  ``kernel`` check holds ``impl="step"`` to it; `test_streaming...` the step); with
  ``chunk_size``, of a cell with that ``chunk_size``."""
  cell, params, xs, carry, weights = setup()
  cell = cell if chunk_size is None else jaxrnn.mamba(**CONFIG, chunk_size=chunk_size)

  def loss(params, carry, xs, reverse):
    kw = dict(seq_lengths=LENGTHS, resets=RESETS, reverse=reverse, unroll=1)
    final, ys = jaxrnn.scan(cell, params, xs, carry, **kw)
    return loss_of(ys, final.h, final.conv, weights), (ys, final)

  grad = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
  runs = jax.jit(lambda *a: {r: grad(*a, r) for r in (False, True)})
  return runs(params, carry, xs)


@pytest.mark.parametrize("reverse", [False, True])
def test_values_equal_the_reference_with_lengths_resets_and_reverse(reverse):
  cell, params, xs, carry, _ = setup()
  p64 = as_dict(params, lambda v: np.asarray(v, np.float64))
  args = (np.asarray(xs, np.float64), np.asarray(carry.h, np.float64))
  want = reference(np, p64, *args, np.asarray(carry.conv, np.float64), LENGTHS, RESETS, reverse)
  (_, (ys, final)), _ = jaxrnn_runs()[reverse]
  close(ys, want[0], 1e-5)
  close(final.h, want[1], 1e-5)
  close(final.conv, want[2], 1e-5)


def finite_differences(f, args, eps=1e-6):
  """The gradient of ``f`` at ``args`` (a tree of float64 NumPy arrays), coordinate by
  coordinate, by central differences of step ``eps``."""
  leaves, treedef = jax.tree.flatten(args)
  grads = []
  for i, leaf in enumerate(leaves):
    grad = np.zeros_like(leaf)
    for idx in np.ndindex(leaf.shape):
      values = []
      for sign in (1.0, -1.0):
        moved = leaf.copy()
        moved[idx] += sign * eps
        values.append(f(jax.tree.unflatten(treedef, leaves[:i] + [moved] + leaves[i + 1 :])))
      grad[idx] = (values[0] - values[1]) / (2 * eps)
    grads.append(grad)
  return jax.tree.unflatten(treedef, grads)


@pytest.mark.parametrize("reverse", [False, True])
def test_gradients_equal_the_references_finite_differences(reverse):
  """The gradients (params, initial carry, inputs) equal the float64 reference's, every
  coordinate by central differences (step 1e-6, about 1e-9 accurate), to 1e-4 relative."""
  cell, params, xs, carry, weights = setup()
  f64 = lambda v: np.asarray(v, np.float64)  # noqa: E731

  def ref_loss(args):
    p, h0, w0, x = args
    ys, h, window = reference(np, p, x, h0, w0, LENGTHS, RESETS, reverse)
    return loss_of(ys, h, window, f64(weights), xp=np)

  want = finite_differences(
    ref_loss, (as_dict(params, f64), f64(carry.h), f64(carry.conv), f64(xs))
  )
  _, (g_params, g_carry, g_xs) = jaxrnn_runs()[reverse]
  for name, g in as_dict(g_params).items():
    if g is not None:
      close(g, want[0][name], 1e-4)
  close(g_carry.h, want[1], 1e-4)
  close(g_carry.conv, want[2], 1e-4)
  close(g_xs, want[3], 1e-4)


@pytest.mark.parametrize("chunk_size", [3, 16])
def test_chunks_equal_the_reference_when_t_is_not_a_multiple_or_is_smaller(chunk_size):
  """T = 7 in chunks of 3 (the last one padded with two masked steps) or 16 (one chunk
  longer than T): values equal the float64 reference, gradients the default path's (held
  to the reference's finite differences above), forward and reverse."""
  _, params, xs, carry, _ = setup()
  p64 = as_dict(params, lambda v: np.asarray(v, np.float64))
  args = (np.asarray(xs, np.float64), np.asarray(carry.h, np.float64))
  for reverse in (False, True):
    want = reference(np, p64, *args, np.asarray(carry.conv, np.float64), LENGTHS, RESETS, reverse)
    (_, (ys, final)), grads = jaxrnn_runs(chunk_size)[reverse]
    close(ys, want[0], 1e-5)
    close(final.h, want[1], 1e-5)
    close(final.conv, want[2], 1e-5)
    default_grads = jaxrnn_runs()[reverse][1]
    for got, default in zip(jax.tree.leaves(grads), jax.tree.leaves(default_grads), strict=True):
      close(got, default, 1e-5)


def test_a_bad_chunk_size_is_a_value_error():
  with pytest.raises(ValueError, match="chunk_size=0"):
    jaxrnn.mamba(4, chunk_size=0)


def test_streaming_token_by_token_equals_the_whole_sequence():
  """``step`` one token at a time (a reset: the initial carry; past a row's length: nothing)
  equals the whole sequence's outputs and final carry (its default path)."""
  cell, params, xs, carry, _ = setup()
  (_, (ys, final)), _ = jaxrnn_runs()[False]
  step, initial = jax.jit(cell.step), cell.initial_carry(params, (B,))
  state, outputs = carry, []
  for t in range(T):
    fresh = jax.tree.map(lambda i, c, t=t: jnp.where(RESETS[:, t, None], i, c), initial, state)
    new, y = step(params, fresh, xs[:, t])
    valid = jnp.asarray(t < LENGTHS)[:, None]
    state = jax.tree.map(lambda n, c, v=valid: jnp.where(v, n, c), new, state)
    outputs.append(jnp.where(valid, y, jnp.zeros_like(y)))
  close(jnp.stack(outputs, axis=1), ys, 1e-5)
  close(state.h, final.h, 1e-5)
  close(state.conv, final.conv, 1e-5)


def test_check_grads_float64():
  """`check_grads` on one flat float64 vector of (params, carry, xs): its own arithmetic is
  then a few operations, not a few per leaf (each compiled)."""
  with jax.enable_x64(True):
    cell = jaxrnn.mamba(2, expand=1, state_size=2, conv_width=3, dtype=jnp.float64)
    rng = np.random.default_rng(2)
    params = random_params(cell, 2, rng, np.float64)
    xs = rng.normal(size=(2, 4, 2))
    shapes = jax.eval_shape(lambda p: cell.initial_carry(p, (2,)), params)
    carry = jax.tree.map(lambda c: jnp.asarray(rng.normal(size=c.shape)), shapes)
    lengths, resets = np.array([4, 3]), np.array([[False, False, True, False]] * 2)

    flat, unravel = ravel_pytree((params, carry, xs))

    def loss(flat):  # with lengths and resets (reverse: the reference's test)
      params, carry, xs = unravel(flat)
      kw = dict(seq_lengths=lengths, resets=resets, unroll=1)
      final, ys = jaxrnn.scan(cell, params, xs, carry, **kw)
      return jnp.sum(jnp.sin(ys)) + jnp.sum(final.h**2) + jnp.sum(final.conv**2)

    check_grads(jax.jit(loss), (flat,), order=1, modes=("rev",), eps=1e-4)


def test_init_is_mamba_simples():
  cell = jaxrnn.mamba(32, state_size=5, dt_min=1e-3, dt_max=1e-1)
  p = jax.jit(cell.init, static_argnums=1)(jax.random.key(0), 32)
  R = 2  # ceil(32 / 16)
  assert p.w_in is None and p.b_in is None
  shapes = jax.tree.map(jnp.shape, p._replace(w_in=0, b_in=0))
  assert shapes == mamba_module.MambaParams(
    (), (), (32, 128), (4, 64), (64,), (64, R + 10), (R, 64), (64,), (64, 5), (64,), (64, 32)
  )
  np.testing.assert_allclose(p.a_log, np.log(np.tile(np.arange(1.0, 6.0), (64, 1))), rtol=1e-6)
  np.testing.assert_array_equal(p.d, np.ones(64))
  dt = np.asarray(jax.nn.softplus(p.dt_b))
  assert 1e-3 * 0.999 <= dt.min() and dt.max() <= 1e-1 * 1.001
  assert np.abs(p.dt_w).max() <= R**-0.5 and np.abs(p.conv_w).max() <= 0.5
  assert np.abs(p.in_proj).max() <= 32**-0.5 and np.abs(p.out_proj).max() <= 64**-0.5


def test_a_bfloat16_model_keeps_a_float32_state():
  cell = jaxrnn.mamba(4, state_size=3, dtype=jnp.bfloat16)
  params = jax.eval_shape(lambda k: cell.init(k, 4), jax.random.key(0))  # shapes, dtypes
  assert params.in_proj.dtype == jnp.bfloat16
  xs = jax.ShapeDtypeStruct((2, 5, 4), jnp.bfloat16)
  carry, ys = jax.eval_shape(functools.partial(jaxrnn.scan, cell), params, xs)
  assert carry.h.dtype == carry.conv.dtype == jnp.float32 and ys.dtype == jnp.bfloat16
  initial = jax.eval_shape(lambda p: cell.initial_carry(p, (2,)), params)
  x = jax.ShapeDtypeStruct((2, 4), jnp.bfloat16)
  stepped, y = jax.eval_shape(cell.step, params, initial, x)
  assert initial.h.dtype == stepped.h.dtype == jnp.float32 and y.dtype == jnp.bfloat16


def test_a_float32_carry_is_closer_to_float32_than_a_bfloat16_one():
  """bfloat16 params, the default carry (float32) and ``carry_dtype=bfloat16``: the mean
  relative error of the final state against the float32 model on the same (bfloat16)
  weights. With the paper's ``A = -(1, ..., N)`` and a slow ``Delta`` (log-uniform on
  [1e-3, 1e-2]) the state sums about 256 increments, which a bfloat16 state rounds away:
  measured 5.0e-2 (bfloat16 carry) and 5.5e-3 (float32 carry: the bfloat16 matmuls')."""
  factory = functools.partial(jaxrnn.mamba, 4, state_size=4)
  rng = np.random.default_rng(0)
  params = random_params(factory(), 4, rng)._replace(  # drawn by NumPy: no compile
    a_log=jnp.log(jnp.tile(jnp.arange(1.0, 5.0), (8, 1))),
    dt_b=jnp.log(jnp.expm1(jnp.exp(rng.uniform(np.log(1e-3), np.log(1e-2), 8)))),
  )
  low = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
  xs = jnp.asarray(rng.normal(size=(2, 256, 4)), jnp.float32)
  cells = [factory(dtype=jnp.bfloat16, carry_dtype=c) for c in (jnp.bfloat16, None)]
  assert [dict(c.config)["carry_dtype"] for c in cells] == ["bfloat16", None]

  @jax.jit
  def errors(low):
    want = jaxrnn.scan(factory(), jax.tree.map(lambda a: a.astype(jnp.float32), low), xs)[0].h
    got = [jaxrnn.scan(cell, low, xs)[0].h for cell in cells]
    assert [h.dtype for h in got] == [jnp.bfloat16, jnp.float32]
    return [jnp.mean(jnp.abs(h.astype(jnp.float32) - want)) / jnp.mean(jnp.abs(want)) for h in got]

  bf16_carry, f32_carry = map(float, errors(low))
  assert bf16_carry > 3e-2 and f32_carry < 1e-2, (bf16_carry, f32_carry)
  assert f32_carry < 0.25 * bf16_carry, (bf16_carry, f32_carry)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(expand=0), "expand=0"),
    (dict(state_size=-1), "state_size=-1"),
    (dict(conv_width=1.5), "conv_width=1.5"),
    (dict(dt_rank=0), "dt_rank=0"),
    (dict(dt_min=0.2, dt_max=0.1), "dt_min=0.2"),
    (dict(dtype=jnp.int32), "dtype="),
    (dict(carry_dtype="int32"), "carry_dtype=.int32."),
  ],
)
def test_bad_config_is_a_value_error(kwargs, match):
  with pytest.raises(ValueError, match=match):
    jaxrnn.mamba(4, **kwargs)


def test_wrong_carry_and_input_widths_are_value_errors():
  cell = jaxrnn.mamba(4, state_size=3)
  params = random_params(cell, 4, np.random.default_rng(0))
  carry = cell.initial_carry(params, (2,))
  with pytest.raises(ValueError, match="carry.conv has shape"):
    cell.step(params, carry._replace(conv=carry.conv[:, :-1]), jnp.ones((2, 4)))
  with pytest.raises(ValueError, match="input_size=4"):
    cell.step(params, carry, jnp.ones((2, 3)))


def test_rnn_layers_takes_mamba_and_refuses_what_its_output_cannot_take():
  model = jaxrnn.rnn_layers("mamba", 4, num_layers=2, bidirectional=True, state_size=3)
  assert dict(model.config)["cell_config"] == jaxrnn.mamba(4, state_size=3).config
  with pytest.raises(ValueError, match="zoneout=0.1: the 'mamba' cell's output is a readout"):
    jaxrnn.rnn_layers("mamba", 4, zoneout=0.1)  # it would output the zoned SSM state
  with pytest.raises(ValueError, match="recurrent_dropout=0.1: the 'mamba' cell has no"):
    jaxrnn.rnn_layers("mamba", 4, recurrent_dropout=0.1)
