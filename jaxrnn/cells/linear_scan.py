"""Cells whose recurrence is linear in the carry, ``h_t = a_t h_{t-1} + b_t``, and their scan.

`linear_recurrence` is the public primitive (`jaxrnn.linear_recurrence`: any state shape,
real or complex, lengths, resets and reverse as `jaxrnn.scan` has them); `sequence` is the
whole-sequence kernel of minGRU, minLSTM and of any `Cell` that declares ``coefficients``;
both fold masks and resets into the coefficients (`fold`) and run `recurrence`.

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

  ``coefficients(params, x, log_space)`` is the cell's math, with the config's
  ``log_space``: the step is `step` of it, the sequence `sequence` of it.

  ``init`` draws ``w_ih`` and ``b`` from U(-1/sqrt(input_size), 1/sqrt(input_size)),
  ``torch.nn.Linear``'s default; ``config`` holds every factory argument (``hidden_size``,
  ``use_bias``, ``log_space``, ``dtype``...), checked here.

  Raises:
    ValueError: for a non-positive ``hidden_size`` or a non-bool flag.
  """
  base.check_positive("hidden_size", config["hidden_size"])
  check_flags(log_space=config["log_space"], use_bias=config["use_bias"])
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
    a, b = coefficients(params, xs)
    if xs.shape[0] == 0:
      return carry, b if readout is None else readout(params, b, xs)
    if log_space:
      a, b = jnp.exp(a), jnp.exp(b)
    valid = None if mask is None else mask[..., None]
    r = None if resets is None else resets[..., None]
    reset_h = None if resets is None else jax.tree.leaves(reset_carry)[0][None]
    a, b = fold(a, b, valid, r, reset_h)
    h, last = recurrence(a, b, h0.astype(b.dtype), reverse, method(a))
    ys = h if readout is None else readout(params, h, xs)
    ys = ys if valid is None else jnp.where(valid, ys, jnp.zeros_like(ys))
    return jax.tree.unflatten(treedef, [last]), ys

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


METHODS_ARG = ("auto", *METHOD_NAMES)


def linear_recurrence(
  a: jax.Array,
  b: jax.Array,
  h0: jax.Array | None = None,
  *,
  resets: jax.Array | None = None,
  reset_value: jax.Array | None = None,
  seq_lengths: jax.Array | None = None,
  reverse: bool = False,
  time_major: bool = False,
  method: str = "auto",
) -> tuple[jax.Array, jax.Array]:
  """``h_t = a_t * h_{t-1} + b_t`` elementwise over time, with resets, lengths and reverse.

  ``a`` and ``b`` broadcast to one shape ``(B, T, *state)`` (``(T, B, *state)`` if
  ``time_major``), real or complex, any ``state`` shape; ``B`` is one batch axis, or as
  many as ``seq_lengths`` (or ``resets``) has (``(*batch, T, *state)``). Semantics are
  `jaxrnn.scan`'s: past ``seq_lengths[b]`` the carry is frozen and ``hs`` is zero, the
  returned carry is the one after a row's last valid step (``h0`` for length 0); with
  ``reverse`` each row's valid part is read from its end and padding stays at the end;
  ``resets[b, t]`` True starts a segment at ``t``, computed as if alone: the carry is
  ``reset_value`` before step ``t`` (the segment's last step, reading backwards), while
  ``h0`` enters the sequence only.

  Its VJP is hand-written (`recurrence`): the transposed recurrence by the same method,
  saving only ``a`` and ``hs``; it is itself differentiable. Forward-mode autodiff
  (`jax.jvp`) is not supported (a `jax.custom_vjp`).

  Methods, measured (jit of this function, XLA:CPU on 2 shared cores, float32 ``(32, T, 256)``,
  median of 5; temporaries from ``jax.jit(f).lower(a, b).compile().memory_analysis()``,
  the 128 MiB per ``(32, 4096, 256)`` array of arguments and outputs on top):

  ============  =====================  =====================  ============================
  method        fwd+bwd T=1024         fwd+bwd T=4096         temporaries at T=4096
  ============  =====================  =====================  ============================
  sequential    61 ms                  245 ms                 256 MiB fwd, 256 MiB fwd+bwd
  associative   107 ms                 1015 ms                446 MiB fwd, 573 MiB fwd+bwd
  ============  =====================  =====================  ============================

  ``"sequential"`` is `jax.lax.scan`; ``"associative"`` is `jax.lax.associative_scan`
  (depth ``log2 T``, about twice the sequential temporaries). ``"auto"`` is the measured
  best for the backend, `METHODS`: sequential on CPU, associative elsewhere (unmeasured
  here; the reason parallel scans exist) unless its temporaries, about 4.5 times ``a``'s
  bytes, exceed the device's free memory: then sequential (`method`).

  Args:
    a, b: the coefficients, broadcastable to one shape as above.
    h0: ``(*batch, *state)``, the carry entering the sequence; zeros if None.
    resets: boolean ``(*batch, T)`` (``(T, *batch)`` if ``time_major``) or None.
    reset_value: broadcastable to ``(*batch, *state)``: the carry a segment restarts from;
      zeros if None.
    seq_lengths: integer ``(*batch,)`` in ``[0, T]`` or None (every row has length T).
    reverse: read each row's valid part from its end.
    time_major: the layout of ``a``, ``b``, ``resets`` and ``hs``.
    method: ``"auto"``, ``"sequential"`` or ``"associative"``.

  Returns:
    ``(h_final, hs)``: the final carry ``(*batch, *state)`` and every step's ``h_t`` in the
    layout of ``a``, in the dtype ``a``, ``b`` and ``h0`` promote to.

  Raises:
    ValueError: an unknown ``method``; ``a`` and ``b`` that do not broadcast; a rank below 2
      (below 1 with ``time_major``); ``h0``, ``resets`` or ``seq_lengths`` of the wrong shape
      or dtype; ``seq_lengths`` outside ``[0, T]``.

  Example:
    >>> import jax.numpy as jnp, jaxrnn
    >>> a, b = jnp.full((2, 5, 3), 0.5), jnp.ones((2, 5, 3))          # (batch, T, state)
    >>> h, hs = jaxrnn.linear_recurrence(a, b, seq_lengths=jnp.array([5, 2]))
    >>> h.shape, hs.shape, [round(float(v), 3) for v in hs[1, :, 0]]
    ((2, 3), (2, 5, 3), [1.0, 1.5, 0.0, 0.0, 0.0])
  """
  a, b, h0, batch, T = _check_recurrence(a, b, h0, resets, seq_lengths, time_major)
  how = _check_method(method, a)
  move = (lambda v: v) if time_major else (lambda v: jnp.moveaxis(v, len(batch), 0))
  a, b = move(a), move(b)
  pad = (1,) * (a.ndim - 1 - len(batch))  # the state axes, for broadcasting
  valid, r = _time_masks(resets, seq_lengths, batch, T, time_major, reverse)
  valid = None if valid is None else valid.reshape(valid.shape + pad)
  r = None if r is None else r.reshape(r.shape + pad)
  if r is not None:
    rv = jnp.zeros((), a.dtype) if reset_value is None else jnp.asarray(reset_value)
    reset_h = jnp.broadcast_to(rv.astype(a.dtype), h0.shape)[None]
  a, b = fold(a, b, valid, r, None if r is None else reset_h)
  if T == 0:
    return h0, jnp.moveaxis(b, 0, len(batch)) if not time_major else b
  hs, last = recurrence(a, b, h0, reverse, how)
  hs = hs if valid is None else jnp.where(valid, hs, jnp.zeros_like(hs))
  return last, hs if time_major else jnp.moveaxis(hs, 0, len(batch))


def _check_method(name: Any, a: jax.Array) -> str:
  """The method to run: `method` () for ``"auto"``; a `ValueError` for an unknown one."""
  if name not in METHODS_ARG:
    raise ValueError(f"method={name!r}: expected one of {METHODS_ARG}.")
  return method(a) if name == "auto" else name


def _check_recurrence(a, b, h0, resets, seq_lengths, time_major):
  """``(a, b, h0, batch_shape, T)``: the coefficients broadcast and cast, ``h0`` checked."""
  a, b = jnp.asarray(a), jnp.asarray(b)
  try:
    shape = jnp.broadcast_shapes(a.shape, b.shape)
  except ValueError:
    raise ValueError(
      f"a has shape {a.shape}, b {b.shape}; expected shapes that broadcast."
    ) from None
  if seq_lengths is not None:
    n_batch = jnp.ndim(seq_lengths)
  elif resets is not None:
    n_batch = jnp.ndim(resets) - 1
  else:
    n_batch = 0 if time_major and len(shape) == 1 else 1
  t_axis = 0 if time_major else n_batch
  if len(shape) < t_axis + 1 or (not time_major and len(shape) < 2):
    layout = "(T, *batch, *state)" if time_major else "(*batch, T, *state)"
    raise ValueError(f"a and b have shape {shape}; expected {layout} with {n_batch} batch axes.")
  T = shape[t_axis]
  batch = shape[1 : 1 + n_batch] if time_major else shape[:n_batch]
  carry_shape = shape[:t_axis] + shape[t_axis + 1 :]
  dtype = jnp.result_type(*(v.dtype for v in (a, b) + (() if h0 is None else (jnp.asarray(h0),))))
  if h0 is None:
    h0 = jnp.zeros(carry_shape, dtype)
  elif tuple(jnp.shape(h0)) != carry_shape:
    raise ValueError(
      f"h0 has shape {tuple(jnp.shape(h0))}; expected (*batch, *state) = {carry_shape}."
    )
  cast = lambda v: jnp.broadcast_to(v.astype(dtype), shape)  # noqa: E731
  return cast(a), cast(b), jnp.asarray(h0).astype(dtype), batch, T


def _time_masks(resets, seq_lengths, batch, T, time_major, reverse):
  """``(valid, resets)`` as the recurrence reads them, ``(T, *batch)`` each, or None.

  As `jaxrnn.scan` does: resets past a row's length are dropped, and in reverse a segment
  ``[s, e]`` restarts before ``e``, where the next segment starts at ``e + 1``.
  """
  from jaxrnn.scan import check_resets, check_seq_lengths  # jaxrnn.scan imports this module

  valid = None
  if seq_lengths is not None:
    lengths = check_seq_lengths(seq_lengths, batch, T).astype(jnp.int32)
    valid = jnp.arange(T, dtype=jnp.int32).reshape((T,) + (1,) * len(batch)) < lengths[None]
  if resets is None:
    return valid, None
  r = check_resets(resets, batch, T, time_major)
  r = r if time_major else jnp.moveaxis(r, -1, 0)
  r = r if valid is None else r & valid
  if reverse:
    r = jnp.concatenate([r[1:], jnp.zeros((1,) + r.shape[1:], jnp.bool_)])
  return valid, r
