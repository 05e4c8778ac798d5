"""Cells whose recurrence is linear in the carry, ``h_t = a_t h_{t-1} + b_t``, and their scan.

When a cell's gates read only the input (minGRU and minLSTM, Feng et al. 2024), its
coefficients ``a_t`` and ``b_t`` for the whole sequence are one matmul over all
``T * N`` rows, and the recurrence is an associative scan over ``(a, b)`` pairs under
``(a1, b1) then (a2, b2) = (a1 a2, a2 b1 + b2)`` (`jax.lax.associative_scan`, depth
``log2 T`` instead of T sequential steps). Autodiff of the scan gives the gradient.

The plain scan multiplies and adds only, never divides, so it is stable in linear
space. ``log_space=True`` is the paper's log-space form: the coefficients are given
as ``(log a, log b)`` (``b > 0``) and the scan runs over log pairs under
``(la1 + la2, logaddexp(lb1 + la2, lb2))``. That is the sum the paper's parallel
scan computes as ``a* + logcumsumexp(log b - a*)`` (Heinsen 2023), ``a*`` the
cumulative sum of ``log a``; the pairwise form also takes resets (``log a = log 0``
there), which the cumulative form could only take segmented. The carries that enter
(the initial carry and a reset's carry) are added linearly, ``exp(sum log a) * h0``,
so they may have any sign and a zero initial carry has a finite gradient.

On XLA:CPU the sequence instead loops over the precomputed coefficients with
`jax.lax.scan` (``METHODS``, measured below): the same values, elementwise steps only.

`jaxrnn.scan`'s masking and resets map onto the pairs: a masked step is ``(1, 0)``
(the carry is frozen; its output is zeroed afterwards); a reset at ``t`` sets
``a_t`` to zero and adds the reset carry's contribution, ``b_t + a_t * reset_carry``;
the incoming carry enters through the first element processed (t = 0, or T - 1 with
``reverse``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxrnn.cells import base, factory
from jaxrnn.cells.base import HiddenCarry

# coefficients(params, x) -> (a, b), or (log a, log b) in log space, each (..., H).
Coefficients = Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]
"""``coefficients(params, x, log_space=False) -> (a, b)``, the cell's math: ``a`` and ``b``
of ``h' = a h + b`` for every row of ``x`` ``(..., I)``; ``(log a, log b)`` in log space."""

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

  ``coefficients(params, x, log_space)`` is the cell's math, with the config's
  ``log_space``: the step is `step` of it, the sequence `sequence` of it.

  ``init`` draws ``w_ih`` and ``b`` from U(-1/sqrt(input_size), 1/sqrt(input_size)),
  ``torch.nn.Linear``'s default; ``config`` holds every factory argument (``hidden_size``,
  ``use_bias``, ``log_space``, ``dtype``...).
  """
  H, dtype, log_space = config["hidden_size"], config["dtype"], config["log_space"]
  blocks = dict(kind.params.gate_columns)["w_ih"]
  coefficients = functools.partial(coefficients, log_space=log_space)

  def update(params, carry, x):
    return step(coefficients(params, x), carry, log_space)

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
    sequence=sequence(coefficients, log_space),
    config=config,  # every argument of the factory, as called
  )


def check_flags(**flags: Any) -> None:
  """A `ValueError` for any flag that is not a bool."""
  for name, value in flags.items():
    if not isinstance(value, bool):
      raise ValueError(f"{name}={value!r}: expected a bool.")


def step(coefficients: tuple[jax.Array, jax.Array], carry: HiddenCarry, log_space: bool):
  """One step from the step's coefficients: ``(carry, y, None)`` with ``h' = a h + b``."""
  a, b = coefficients
  if log_space:
    a, b = jnp.exp(a), jnp.exp(b)
  h = a * carry.h + b
  return HiddenCarry(h), h, None


def sequence(coefficients: Coefficients, log_space: bool):
  """The whole-sequence function of a linear cell (`jaxrnn.scan`'s contract).

  Args:
    coefficients: ``coefficients(params, xs) -> (a, b)`` on ``xs`` ``(T, N, I)``; in
      log space ``(log a, log b)``. The same function the cell's step calls.
    log_space: whether the coefficients and the scan are in log space.

  Returns:
    ``sequence(params, carry, xs, mask, reverse, unroll, resets=None, reset_carry=None)
    -> (carry, ys)`` with ``carry`` a `HiddenCarry` of leaves ``(N, H)``, ``mask`` and
    ``resets`` boolean ``(T, N)`` or None, ``reset_carry`` a `HiddenCarry` ``(N, H)``
    (needed with ``resets``); ``unroll`` is ignored (the scan has no loop to unroll).
  """

  def run(params, carry, xs, mask, reverse, unroll, resets=None, reset_carry=None):
    del unroll
    a, b = coefficients(params, xs)
    if xs.shape[0] == 0:
      return carry, b
    valid = None if mask is None else mask[..., None]
    reset = None if resets is None else resets[..., None]
    rc = None if resets is None else reset_carry.h
    h0 = carry.h.astype(b.dtype)
    if method() == "sequential":
      if log_space:
        a, b = jnp.exp(a), jnp.exp(b)
      return _sequential(a, b, h0, valid, reset, rc, reverse)
    scan = _log_scan if log_space else _plain_scan
    h = scan(a, b, h0, valid, reset, rc, reverse)
    ys = h if valid is None else jnp.where(valid, h, jnp.zeros_like(h))
    return HiddenCarry(h[0] if reverse else h[-1]), ys

  return run


# Measured (experiments/min_cells_timing.py, B=32, H=256, T=1024, 5 interleaved rounds,
# median per-round ratio to the step loop, idle 2-core XLA:CPU): the associative scan
# took 1.11-1.44x (plain) and 2.2-3.2x (log space) the step loop's time, forward and
# forward+backward; a sequential loop over the precomputed coefficients 0.77-1.44x
# forward, 0.85-1.01x forward+backward. So CPU runs sequentially; other backends are
# unmeasured here and keep the associative scan (the reason for these cells).
METHODS = {"cpu": "sequential"}
METHOD_NAMES = ("associative", "sequential")


def method() -> str:
  """``"associative"`` or ``"sequential"``, per backend (`METHODS`; default associative)."""
  return METHODS.get(jax.default_backend(), "associative")


def _sequential(a, b, h0, valid, reset, rc, reverse):
  """The recurrence as a `lax.scan` over precomputed coefficients (no matmul inside)."""

  def body(h, inputs):
    a_t, b_t, m, r = inputs
    if r is not None:
      h = jnp.where(r, rc, h)
    new = a_t * h + b_t
    if m is None:
      return new, new
    return jnp.where(m, new, h), jnp.where(m, new, jnp.zeros_like(new))

  h, ys = lax.scan(body, h0, (a, b, valid, reset), reverse=reverse)
  return HiddenCarry(h), ys


def _compose(first, second):
  a1, b1 = first
  a2, b2 = second
  return a1 * a2, a2 * b1 + b2


def _plain_scan(a, b, h0, valid, reset, rc, reverse):
  if reset is not None:
    b = jnp.where(reset, b + a * rc[None].astype(b.dtype), b)
    a = jnp.where(reset, jnp.zeros_like(a), a)
  if valid is not None:
    a = jnp.where(valid, a, jnp.ones_like(a))
    b = jnp.where(valid, b, jnp.zeros_like(b))
  first = -1 if reverse else 0
  b = b.at[first].add(a[first] * h0)
  return lax.associative_scan(_compose, (a, b), reverse=reverse)[1]


def _compose_log(first, second):
  la2 = second[0]
  rest = tuple(_logaddexp(l1 + la2, l2) for l1, l2 in zip(first[1:], second[1:], strict=True))
  return (first[0] + la2,) + rest


def _logaddexp(x, y):
  """``log(exp(x) + exp(y))`` for finite inputs: a smaller graph than `jnp.logaddexp`
  (whose infinity handling the finite `log_zero` makes unnecessary)."""
  return jnp.maximum(x, y) + jnp.log1p(jnp.exp(-jnp.abs(x - y)))


def log_zero(dtype: Any, length: int) -> jax.Array:
  """The scan's ``log 0``: finite (``-inf`` would make logaddexp's gradient NaN), and so
  negative that ``exp`` of it is 0, yet ``length + 1`` of them still sum without overflow."""
  return jnp.asarray(jnp.finfo(dtype).min / (4 * (length + 1)), dtype)


def _log_scan(la, lb, h0, valid, reset, rc, reverse):
  zero = jnp.full_like(la, log_zero(la.dtype, la.shape[0]))
  elems = [la, lb]
  if reset is not None:  # a third pair component: log of the reset carry's coefficient
    elems = [jnp.where(reset, zero, la), lb, jnp.where(reset, la, zero)]
  if valid is not None:
    elems = [jnp.where(valid, elems[0], jnp.zeros_like(la))] + [
      jnp.where(valid, e, zero) for e in elems[1:]
    ]
  out = lax.associative_scan(_compose_log, tuple(elems), reverse=reverse)
  h = jnp.exp(out[0]) * h0[None] + jnp.exp(out[1])
  if reset is not None:
    h = h + jnp.exp(out[2]) * rc[None].astype(h.dtype)
  return h
