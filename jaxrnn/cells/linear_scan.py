"""Cells whose recurrence is linear in the carry, ``h_t = a_t h_{t-1} + b_t``, and their scan.

`jaxrnn.linear_recurrence` (`jaxrnn.recurrence`) is the public primitive built on this
module's `recurrence` (any state shape, real or complex, lengths, resets and reverse as
`jaxrnn.scan` has them); `sequence` is the whole-sequence kernel of minGRU, minLSTM and
of any `Cell` that declares ``coefficients``; both fold masks and resets into the
coefficients (`fold`) and run `recurrence`.

When a cell's gates read only the input (minGRU and minLSTM, Feng et al. 2024), its
coefficients ``a_t`` and ``b_t`` for the whole sequence are one matmul over all
``T * N`` rows, and the recurrence is an associative scan over ``(a, b)`` pairs under
``(a1, b1) then (a2, b2) = (a1 a2, a2 b1 + b2)`` (`jax.lax.associative_scan`, depth
``log2 T`` instead of T sequential steps); on XLA:CPU a `jax.lax.scan` over the
precomputed coefficients instead (``METHODS``, measured below): the same values,
elementwise steps only.

The gradient: `recurrence` has a hand-written VJP, the transposed recurrence run the
other way by the same method (no per-step residuals, no generic transposed loop, and
for the associative scan one more scan instead of autodiff through its levels); the
coefficients' own gradient is JAX's autodiff of the cell's vectorized math.

The scan multiplies and adds only, never divides, so it is stable in linear space.
``log_space=True`` is the paper's log-space form: the cell gives its coefficients as
``(log a, log b)`` (``b > 0``, from the paper's ``g`` and softplus); they are
exponentiated and run through the same recurrence. The paper's log-space parallel scan,
``a* + logcumsumexp(log b - a*)`` (Heinsen 2023, ``a*`` the cumulative sum of ``log a``),
is log space because its cumulative form divides by the cumulative product of ``a``;
the pairwise scan never forms that quotient, so exp of the log coefficients loses
nothing (a vanishing ``a_1 ... a_t`` underflows to the 0 it is), keeps ``h`` positive
from a non-negative carry, and takes resets and any carry's sign without a finite
stand-in for ``log 0``.

`jaxrnn.scan`'s masking and resets fold into the coefficients: a masked step is
``(1, 0)`` (the carry passes through; its output is zeroed afterwards); a reset at ``t``
sets ``a_t`` to zero and adds the reset carry's contribution, ``b_t + a_t * reset_carry``;
the incoming carry enters through the first element processed (t = 0, or T - 1 with
``reverse``). Autodiff of the fold gives the reset carry's cotangent, the sum of
``a_t g_t`` over the reset steps.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxrnn.cells import base
from jaxrnn.cells import builtin as factory
from jaxrnn.cells.base import HiddenCarry

# coefficients(params, x) -> (a, b), or (log a, log b) in log space, each (..., H).
Coefficients = Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]
"""``coefficients(params, x, log_space=False) -> (a, b)``, the cell's math: ``a`` and ``b``
of ``h' = a h + b`` for every row of ``x`` ``(..., I)``; ``(log a, log b)`` in log space."""

Readout = Callable[[Any, jax.Array, jax.Array], jax.Array]
"""``readout(params, h, x) -> y``: a linear cell's output from its new state and its input."""

HIDDEN_SIZE = property(
  lambda params: params.w_ih.shape[-1] // dict(params.gate_columns)["w_ih"],
  doc="H: the columns of ``w_ih`` over its gate blocks (its ``gate_columns``).",
)
"""For a linear cell's params NamedTuple: ``hidden_size = linear_scan.HIDDEN_SIZE``."""


def g(x: jax.Array) -> jax.Array:
  """The paper's positive activation for log space: ``x + 0.5`` for ``x >= 0``, else sigmoid."""
  return jnp.where(x >= 0, x + 0.5, jax.nn.sigmoid(x))


def log_g(x: jax.Array) -> jax.Array:
  """``log(g(x))``, computed without a logarithm of a non-positive number in either branch."""
  return jnp.where(x >= 0, jnp.log(jnp.maximum(x, 0) + 0.5), -jax.nn.softplus(-x))


def initial_carry(params: Any, batch: tuple[int, ...]) -> HiddenCarry:
  """Zeros ``(*batch, H)`` in the params' dtype, ``H`` the params' ``hidden_size``."""
  return HiddenCarry(jnp.zeros(batch + (params.hidden_size,), params.w_ih.dtype))


def library_cell(kind, coefficients, config) -> base.Cell:
  """A minGRU-style cell: params ``(w_ih (I, blocks * H), b)``, the step and this sequence.

  ``blocks`` is what the params type declares for ``w_ih`` in its ``gate_columns``.

  ``coefficients(params, x, log_space, acc)`` is the cell's math, with the config's
  ``log_space`` and ``acc`` the carry's dtype (its gates and ``a`` in it, ``b`` in ``x``'s
  dtype): the step is `step` of it, the sequence `sequence` of it.

  ``init`` draws ``w_ih`` and ``b`` from U(-1/sqrt(input_size), 1/sqrt(input_size)),
  ``torch.nn.Linear``'s default; ``config`` holds every factory argument (``hidden_size``,
  ``use_bias``, ``log_space``, ``dtype``...), checked here.

  Raises:
    ValueError: for a non-positive ``hidden_size`` or a non-bool flag.
  """
  base.check_positive("hidden_size", config["hidden_size"])
  base.check_carry_dtype(config["carry_dtype"])
  check_flags(log_space=config["log_space"], use_bias=config["use_bias"])
  H, dtype, log_space = config["hidden_size"], config["dtype"], config["log_space"]
  carry_dtype = config["carry_dtype"]
  blocks = dict(kind.params.gate_columns)["w_ih"]
  coefficients = functools.partial(coefficients, log_space=log_space)

  def update(params, carry, x):
    return step(coefficients(params, x, acc=carry.h.dtype), carry, log_space)

  def sequence_coefficients(params, xs):  # ``a`` in the carry's dtype, as the step's
    return coefficients(params, xs, acc=factory.resolved_carry_dtype(params, carry_dtype))

  def init(key, input_size):
    base.check_input_size(input_size)
    k_w, k_b = jax.random.split(key)
    scale = base.hidden_scale(input_size)
    b = base.uniform(k_b, (blocks * H,), scale, dtype) if config["use_bias"] else None
    return kind.params(base.uniform(k_w, (input_size, blocks * H), scale, dtype), b)

  return factory.library_cell(
    kind,
    init=init,
    initial_carry=initial_carry,
    update=update,
    sequence=sequence(sequence_coefficients, log_space),
    config=config,  # every argument of the factory, as called
  )


def check_flags(**flags: Any) -> None:
  """A `ValueError` for any flag that is not a bool."""
  for name, value in flags.items():
    if not isinstance(value, bool):
      raise ValueError(f"{name}={value!r}: expected a bool.")


def step(coefficients: tuple[jax.Array, jax.Array], carry: HiddenCarry, log_space: bool):
  """One step from the step's coefficients: ``(carry, y, None)`` with ``h' = a h + b``.

  The coefficients (in the compute dtype) are cast up to the carry's dtype first, so the
  recurrence accumulates in it; ``y`` is the new ``h`` in the coefficients' dtype.
  """
  a, b = (base.like(v, carry.h) for v in coefficients)
  if log_space:
    a, b = jnp.exp(a), jnp.exp(b)
  h = a * carry.h + b
  return HiddenCarry(h), base.like(h, coefficients[1]), None


def sequence(coefficients: Coefficients, log_space: bool = False, readout: Readout | None = None):
  """The whole-sequence function of a linear cell (`jaxrnn.scan`'s contract).

  Args:
    coefficients: ``coefficients(params, xs) -> (a, b)`` on ``xs`` ``(T, N, I)``; in
      log space ``(log a, log b)``. The same function the cell's step calls.
    log_space: whether the coefficients are given in log space.
    readout: ``readout(params, h, xs) -> ys``, the outputs from the states ``h``
      ``(T, N, H)``; None outputs ``h`` itself.

  Returns:
    ``sequence(params, carry, xs, mask, reverse, unroll, resets=None, reset_carry=None)
    -> (carry, ys)`` with ``carry`` a pytree of one leaf ``(N, H)`` (a `HiddenCarry`, or a
    user's array), ``mask`` and ``resets`` boolean ``(T, N)`` or None, ``reset_carry``
    of the carry's structure (needed with ``resets``); ``unroll`` is ignored (the scan has
    no loop to unroll).
  """

  def run(params, carry, xs, mask, reverse, unroll, resets=None, reset_carry=None):
    del unroll
    leaves, treedef = jax.tree.flatten(carry)
    if len(leaves) != 1:
      raise ValueError(
        f"the carry has {len(leaves)} leaves ({treedef}); expected one, the state h of "
        "h' = a h + b, for a cell that declares coefficients."
      )
    h0 = leaves[0]
    a, out = coefficients(params, xs)
    if xs.shape[0] == 0:
      return carry, out if readout is None else readout(params, out, xs)
    same_kind = jnp.iscomplexobj(out) == jnp.iscomplexobj(h0)
    acc = h0.dtype if same_kind else out.dtype  # the carry's dtype (complex if b is)
    a, b = a.astype(acc), out.astype(acc)
    if log_space:
      a, b = jnp.exp(a), jnp.exp(b)
    valid = None if mask is None else mask[..., None]
    r = None if resets is None else resets[..., None]
    reset_h = None if resets is None else jax.tree.leaves(reset_carry)[0][None]
    a, b = fold(a, b, valid, r, reset_h)
    h, last = recurrence(a, b, h0.astype(acc), reverse, method(a))
    ys = base.like(h, out) if readout is None else readout(params, h, xs)
    ys = ys if valid is None else jnp.where(valid, ys, jnp.zeros_like(ys))
    return jax.tree.unflatten(treedef, [base.like(last, h0)]), ys

  run.mixed_precision = True  # the coefficients go up to the carry's dtype (`kernel.with_policy`)
  return run


def fold(a, b, valid=None, resets=None, reset_h=None):
  """Masks and resets folded into the coefficients, all broadcast against ``a`` and ``b``.

  A reset step starts from ``reset_h``: ``(0, b + a reset_h)``; then a step where ``valid``
  is False is ``(1, 0)``: the carry passes through unchanged.
  """
  if resets is not None:  # h_{t-1} := reset_h, folded into the step's coefficients
    b = jnp.where(resets, b + a * reset_h.astype(b.dtype), b)
    a = jnp.where(resets, jnp.zeros_like(a), a)
  if valid is not None:  # a masked step is (1, 0): the carry passes through unchanged
    a = jnp.where(valid, a, jnp.ones_like(a))
    b = jnp.where(valid, b, jnp.zeros_like(b))
  return a, b


# Measured (experiments/min_cells_timing.py, B=32, I=H=256, T=1024, 5 interleaved rounds
# on a shared 2-core XLA:CPU, load 1-9; both methods through `recurrence`'s VJP): the
# sequential loop over associative, median per-round ratio (range), forward+backward
# 0.82 (0.60-1.04) minGRU, 0.73 (0.56-0.97) minLSTM, 0.90 (0.83-1.37) and 0.81
# (0.77-0.99) in log space; forward 0.69 (0.59-0.99), 1.00 (0.84-1.17), 1.04 (0.88-1.41),
# 1.38 (0.78-1.88). So CPU runs sequentially; other backends are unmeasured here and keep
# the associative scan (the reason for these cells).
METHODS = {"cpu": "sequential"}
METHOD_NAMES = ("associative", "sequential")


# The associative scan's temporaries over one coefficient array's bytes, measured with
# `linear_recurrence` at (32, 4096, 256) float32 (XLA:CPU memory_analysis): 446 MiB forward,
# 573 MiB forward+backward, over 128 MiB; the sequential scan's: 256 MiB, 2x, both ways.
ASSOCIATIVE_TEMPORARIES = 4.5


def method(a: jax.Array | None = None) -> str:
  """``"associative"`` or ``"sequential"``, per backend (`METHODS`; default associative).

  With the coefficients ``a``, the associative scan is kept only where its temporaries
  (`ASSOCIATIVE_TEMPORARIES` times ``a``'s bytes) fit the device's free memory
  (`free_device_bytes`); otherwise the sequential scan, which needs about half.
  """
  how = METHODS.get(jax.default_backend(), "associative")
  if how == "associative" and a is not None:
    free = free_device_bytes()
    if free is not None and ASSOCIATIVE_TEMPORARIES * a.size * a.dtype.itemsize > free:
      return "sequential"
  return how


def free_device_bytes() -> int | None:
  """The default device's free memory (``memory_stats``), None where it reports none (CPU)."""
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # noqa: BLE001 - a backend without memory stats
    return None
  if not stats or "bytes_limit" not in stats:
    return None
  return stats["bytes_limit"] - stats.get("bytes_in_use", 0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def recurrence(a, b, h0, reverse: bool, how: str):
  """``h_t = a_t h_{t-1} + b_t`` over axis 0 (from the end with ``reverse``), from ``h0``.

  Args:
    a, b: ``(T, N, H)``, the steps' coefficients (masks and resets already folded in).
    h0: ``(N, H)``, the carry before the first step processed.
    reverse: process ``t = T - 1`` first.
    how: ``"sequential"`` (`jax.lax.scan`) or ``"associative"``
      (`jax.lax.associative_scan`).

  Returns:
    ``(h, last)``: every step's ``h_t`` ``(T, N, H)`` and the last one processed ``(N, H)``.

  Its VJP is the transposed recurrence, run the other way by the same method: with
  ``g_t`` the cotangent of ``h_t`` (``dh_t`` plus what flows back from step ``t + 1``),
  ``g_t = dh_t + a_{t+1} g_{t+1}`` from ``g = d_last`` past the end, then
  ``da_t = g_t h_{t-1}``, ``db_t = g_t`` and ``dh0 = a_first g_first``. It saves ``a`` and
  ``h`` (which is also the output), and is itself differentiable (second order).
  """
  h = _SCANS[how](a, b, h0, reverse, False)[0]
  return h, h[0] if reverse else h[-1]


def _recurrence_fwd(a, b, h0, reverse, how):
  h, last = recurrence(a, b, h0, reverse, how)
  return (h, last), (a, h, h0)


def _recurrence_bwd(reverse, how, saved, cotangents):
  a, h, h0 = saved
  dh, d_last = cotangents
  g, dh0 = _SCANS[how](a, dh, d_last.astype(dh.dtype), not reverse, True)
  before = (h[1:], h0[None]) if reverse else (h0[None], h[:-1])
  return g * jnp.concatenate(before), g, dh0


recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def _sequential(a, b, h0, reverse, transposed):
  """`recurrence` by `jax.lax.scan`: ``(h, last carry)``.

  ``transposed`` runs its VJP's recurrence instead: ``g_t = b_t + c``, ``c = a_t g_t``
  (``c`` the cotangent passed on to the step before, ``h0`` the one entering), which
  returns ``(g, a_first g_first)`` and needs no shifted copy of ``a``.
  """

  def body(c, ab):
    a_t, b_t = ab
    if transposed:
      g_t = b_t + c
      return a_t * g_t, g_t
    new = a_t * c + b_t
    return new, new

  c, h = lax.scan(body, h0, (a, b), reverse=reverse)
  return h, c


def _compose(first, second):
  a1, b1 = first
  a2, b2 = second
  return a1 * a2, a2 * b1 + b2


def _associative(a, b, h0, reverse, transposed):
  """`recurrence` by `jax.lax.associative_scan`; ``transposed`` as in `_sequential`.

  Transposed, ``u = a g`` is the plain recurrence over ``(a, a b)`` from ``h0``, and
  ``g_t`` is ``b_t`` plus the ``u`` of the step processed before (``h0`` for the first).
  """
  first = -1 if reverse else 0
  if not transposed:
    b = b.at[first].add(a[first] * h0)
    return lax.associative_scan(_compose, (a, b), reverse=reverse)[1], None
  u = _associative(a, a * b, h0, reverse, False)[0]
  before = (u[1:], h0[None]) if reverse else (h0[None], u[:-1])
  return b + jnp.concatenate(before), u[0] if reverse else u[-1]


_SCANS = {"sequential": _sequential, "associative": _associative}
