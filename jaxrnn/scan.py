"""Unrolling a cell over time with `lax.scan`: masks for variable lengths, reverse, unroll."""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxrnn import params_check
from jaxrnn.cells import kernel, linear_scan
from jaxrnn.cells.base import Cell, PyTree
from jaxrnn.scan_inputs import (
  batch_and_time,
  check_carry,
  check_input_size,
  check_noise,
  check_resets,
  check_seq_lengths,
  feature_ndim,
)

IMPLS = ("auto", "step", "fused")


ORDER = "scan(cell, params, xs, carry=None, ...)"


# Measured by `make bench` (results/unroll.json): on XLA:CPU unrolling 4 steps per loop
# iteration cuts the per-iteration overhead (about 45 us on the benchmark machine) and
# made the LSTM forward 10-25% faster; elsewhere lax.scan's own default (1) is kept.
CPU_UNROLL = 4


def default_unroll() -> int:
  """The ``unroll`` used when `scan` gets ``unroll=None``: per backend, measured."""
  return CPU_UNROLL if jax.default_backend() == "cpu" else 1


def remat_chunk(remat: int | bool | None, length: int) -> int | None:
  """The chunk length for ``remat``: None (off), near ``sqrt(T)`` for True, or the int.

  For True: the divisor of T closest to ``sqrt(T)`` among ``[ceil(sqrt(T)/2),
  2 sqrt(T)]``, which needs no padding; if T has none there, ``ceil(sqrt(T))``.

  Example:
    >>> remat_chunk(True, 100), remat_chunk(True, 97), remat_chunk(8, 100)
    (10, 10, 8)
  """
  if remat is None or remat is False:
    return None
  if remat is True:
    # A divisor of T near sqrt(T) needs no padding (padding costs a copy of the sequence);
    # otherwise ceil(sqrt(T)) steps, the last chunk padded with masked steps.
    root = math.sqrt(max(length, 1))
    divisors = [k for k in range(math.ceil(root / 2), int(2 * root) + 1) if length % k == 0]
    if divisors:
      return min(divisors, key=lambda k: abs(k - root))
    return max(1, math.isqrt(max(length - 1, 0)) + 1)
  if isinstance(remat, int) and remat >= 1:
    return remat
  raise ValueError(f"remat={remat!r}: expected None, a bool or a positive int (steps per chunk).")


def scan(
  cell: Cell,
  params: PyTree,
  xs: jax.Array,
  carry: PyTree | None = None,
  *,
  seq_lengths: jax.Array | None = None,
  reverse: bool = False,
  time_major: bool = False,
  unroll: int | bool | None = None,
  remat: int | bool | None = None,
  impl: str = "auto",
  resets: jax.Array | None = None,
  noise: kernel.Noise | None = None,
  return_carries: bool = False,
  reset_carry: PyTree | None = None,
) -> tuple[PyTree, jax.Array] | tuple[PyTree, jax.Array, PyTree]:
  """Runs ``cell.step`` over the time axis of ``xs`` with `jax.lax.scan`.

  Variable lengths: at time ``t`` row ``b`` is updated only if
  ``t < seq_lengths[b]``. Past its length a row's carry is frozen and its
  outputs are zero, so the returned carry is the one after the row's last valid
  step, and a length of 0 returns the initial carry. With ``reverse=True`` each
  row's valid part is read backwards (from ``seq_lengths[b] - 1`` down to 0)
  and padding stays at the end; outputs stay aligned with the inputs in time.
  This is what `torch.nn.utils.rnn.pack_padded_sequence` computes.

  Args:
    cell: a `Cell`.
    params: the cell's parameters.
    xs: ``(*batch, T, input_size)``, or ``(T, *batch, input_size)`` if
      ``time_major``. ``batch`` may be empty. Integer inputs for a user's step (token
      ids it embeds) may have no feature axis, ``(*batch, T)`` (see `feature_ndim`).
    carry: the initial carry, leaves ``(*batch, ...)``; zeros if None.
    seq_lengths: integer ``(*batch,)`` of any integer dtype, or None (all rows
      have length T).
      Values are checked to lie in ``[0, T]`` when concrete; under `jax.jit`
      they cannot be checked and are effectively clamped to ``[0, T]``.
    reverse: run from the end of each (valid part of the) sequence.
    time_major: layout of ``xs`` and of the returned ``ys``.
    unroll: steps per loop iteration, passed to `jax.lax.scan`; None picks the
      measured best for the backend (`default_unroll`: 4 on CPU, else 1).
    remat: gradient checkpointing for long sequences. With ``remat=k`` the
      sequence is cut into chunks of ``k`` steps and only the carries at chunk
      edges are stored for the backward pass; each chunk's steps are recomputed
      when its gradient is needed. ``remat=True`` picks ``k`` near ``sqrt(T)``: the
      divisor of T closest to ``sqrt(T)`` within ``[sqrt(T)/2, 2 sqrt(T)]`` (no
      padding), else ``ceil(sqrt(T))`` with the last chunk padded by masked steps
      (`remat_chunk`). The gradient then stores O(sqrt(T)) carries instead of
      O(T), for about one extra forward pass of compute. Values and gradients are
      unchanged.
    resets: boolean ``(*batch, T)`` (``(T, *batch)`` if ``time_major``) or None:
      True at ``t`` starts a new segment at ``t``: the carry is the cell's initial
      carry before step ``t`` reads its input (at ``t = 0`` this overrides a
      ``carry`` passed in). Each segment is computed exactly as if it were alone,
      with ``reverse`` too (each segment is read backwards on its own), and so are
      gradients. Resets past a row's length are ignored.
    reset_carry: the carry a reset restarts from, leaves ``(*batch, F)``, or None (the
      cell's initial carry). Differentiable: `jaxrnn.learned_initial_carry` passes its
      learned carry here, so that resets restart to it and send it their gradient.
    impl: ``"auto"`` uses the cell's whole-sequence kernel with a hand-written
      VJP when it has one (the built-in cells do; `jaxrnn.cells.kernel`), which
      makes the gradient faster; a cell that declares ``coefficients`` runs as one
      `jaxrnn.linear_recurrence` (`whole_sequence`); ``"step"`` always runs `jax.lax.scan` over
      ``cell.step`` (needed for forward-mode autodiff, `jax.jvp` / `jax.jacfwd`);
      ``"fused"`` insists on the kernel. All three compute the same values.
    noise: a `jaxrnn.cells.kernel.Noise` of recurrent-dropout and zoneout masks, or
      None. `jaxrnn.recurrent`'s regularizer options draw it (`jaxrnn.regularizers`);
      pass your own for other schedules: ``h_mask`` ``(*batch, H)``, ``keep`` leaves
      ``(T, *batch, F)`` (time first in both layouts). With ``impl="auto"`` a cell
      whose kernel does not take noise runs its step loop; ``"fused"`` then raises.
    return_carries: also return the carry after every step (for replay buffers that
      store recurrent states): leaves ``(*batch, T, F)`` (``(T, *batch, F)`` if
      ``time_major``); past a row's length, its frozen carry. With ``reverse``,
      ``carries[t]`` is the carry after reading step t in reverse order (after steps
      ``T_b - 1`` down to t; past a row's length, where the reverse pass has not yet
      started, the initial carry). Runs the step loop (the cell's kernel, linear
      recurrence or chunkwise form computes the same values but keeps no carries).

  Returns:
    ``(carry, ys)``: the final carry and the outputs, ``(*batch, T, output_size)``
    (or ``(T, *batch, output_size)`` if ``time_major``); with ``return_carries``,
    ``(carry, ys, carries)``.

  Raises:
    ValueError: wrong rank of ``xs``; input size not matching ``params``;
      batch shape of ``carry`` or ``seq_lengths`` not matching ``xs``;
      non-integer or out-of-range ``seq_lengths``; a bad ``unroll``, ``remat`` or
      ``impl``; params that are not what ``cell.init`` gives (a leaf of another shape or
      dtype, `jaxrnn.params_check`), swapped arguments, or a carry of another kind.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> cell = jaxrnn.lstm(hidden_size=8)
    >>> params = cell.init(jax.random.key(0), input_size=3)
    >>> xs = jnp.ones((2, 5, 3))                     # (batch, time, features)
    >>> carry, ys = jaxrnn.scan(cell, params, xs, seq_lengths=jnp.array([5, 2]))
    >>> ys.shape, carry.h.shape
    ((2, 5, 8), (2, 8))
    >>> bool((ys[1, 2:] == 0).all())                  # padding gives zeros
    True
  """
  run = _runner(cell, impl, noise, return_carries)
  unroll = _check_unroll(unroll)
  params_check.check_arrays("scan", ORDER, xs=xs)
  params_check.check(cell, params, "scan", ORDER, (xs, carry))
  params_check.check_carry(cell, params, carry, "scan")
  xs = jnp.asarray(xs) if not isinstance(xs, jax.Array | jax.core.Tracer) else xs
  features = feature_ndim(cell, params, xs, carry, time_major)
  batch_shape, length = batch_and_time(xs, time_major, features)
  if jax.export.is_symbolic_dim(length):  # jax.export: lax.scan unrolls concrete lengths only
    unroll, remat = 1, None
  if features != 1:  # token ids: a user's step, looped
    run = _run_steps
  else:
    check_input_size(params, xs)
  if carry is None:
    carry = cell.initial_carry(params, batch_shape)
  else:
    check_carry(carry, batch_shape)
  if seq_lengths is not None:
    seq_lengths = check_seq_lengths(seq_lengths, batch_shape, length)

  xs_t = xs if time_major else jnp.moveaxis(xs, len(batch_shape), 0)
  chunk = remat_chunk(remat, length)
  xs_t, mask = _time_mask(xs_t, seq_lengths, length, chunk, batch_shape)
  if mask is not None:  # padding never reaches a value or a gradient, NaN or inf included
    valid = mask.reshape(mask.shape + (1,) * (xs_t.ndim - mask.ndim))  # over the features
    xs_t = jnp.where(valid, xs_t, jnp.zeros_like(xs_t))
  resets = _time_resets(resets, mask, batch_shape, length, xs_t.shape[0], time_major, reverse)
  reset_carry = _reset_carry(cell, params, resets, reset_carry, batch_shape)
  h_mask, keep = check_noise(noise, carry, length, xs_t.shape[0])
  inputs = (xs_t, mask, resets, keep)
  args = (cell, params, carry, inputs, reset_carry, h_mask, reverse, unroll, chunk)
  carry, ys = run(*args) if not return_carries else _run_steps(*args, return_carries=True)
  ys = jax.tree.map(lambda y: y[:length], ys)
  if not time_major:
    ys = jax.tree.map(lambda y: jnp.moveaxis(y, 0, -2), ys)
  return (carry, *ys) if return_carries else (carry, ys)


def _reset_carry(cell, params, resets, reset_carry, batch_shape):
  """What a reset restarts from: ``reset_carry`` (checked), else the cell's initial carry."""
  if resets is None:
    return None
  if reset_carry is None:
    return cell.initial_carry(params, batch_shape)
  params_check.check_carry(cell, params, reset_carry, "scan", "reset_carry")
  check_carry(reset_carry, batch_shape)
  return reset_carry


def _runner(cell: Cell, impl: str, noise: Any, return_carries: bool):
  """The loop `scan` runs: the cell's kernel on one flat batch axis, or its step."""
  if not isinstance(cell, Cell):
    raise ValueError(
      f"cell must be a jaxrnn.Cell, got {type(cell).__name__}; the arguments go {ORDER}."
    )
  if impl not in IMPLS:
    raise ValueError(f"impl={impl!r} is not one of {IMPLS}.")
  sequence = whole_sequence(cell)
  if impl == "fused" and sequence is None:
    raise ValueError(f"impl='fused', but the {cell.name!r} cell has no whole-sequence kernel.")
  noisy = noise is not None and not getattr(sequence, "takes_noise", False)
  if impl == "fused" and (noisy or return_carries):
    what = "return_carries=True" if return_carries else "recurrent dropout or zoneout"
    raise ValueError(f"impl='fused', but the {cell.name!r} cell's kernel cannot take {what}.")
  if impl == "step" or sequence is None or noisy:
    return _run_steps
  return functools.partial(_run_kernel, sequence=sequence)


def whole_sequence(cell: Cell):
  """The cell's whole-sequence kernel: its ``sequence``, else one built on its
  ``coefficients`` (`jaxrnn.linear_recurrence`'s method), else None (the step loop)."""
  if cell.sequence is not None or cell.coefficients is None:
    return cell.sequence
  return linear_scan.sequence(cell.coefficients, readout=cell.readout)


def _check_unroll(unroll: Any) -> int | bool:
  if unroll is None:
    return default_unroll()
  if not isinstance(unroll, bool) and (not isinstance(unroll, int) or unroll < 1):
    raise ValueError(f"unroll={unroll!r}: expected a positive int, a bool or None.")
  return unroll


def _time_mask(xs_t, seq_lengths, length, chunk, batch_shape):
  """``xs_t`` padded to whole remat chunks, and the ``(T, *batch)`` validity mask or None.

  The time index and the lengths are compared as int32 whatever the lengths' dtype,
  so narrow lengths (int8, uint8) cannot overflow the index.
  """
  padded = length if chunk is None else -(-length // chunk) * chunk
  if padded != length:  # remat's last chunk is padded with masked steps
    xs_t = jnp.concatenate([xs_t, jnp.zeros((padded - length,) + xs_t.shape[1:], xs_t.dtype)])
    if seq_lengths is None:
      seq_lengths = jnp.full(batch_shape, length, jnp.int32)
  if seq_lengths is None:
    return xs_t, None
  times = jnp.arange(padded, dtype=jnp.int32).reshape((padded,) + (1,) * len(batch_shape))
  return xs_t, times < seq_lengths.astype(jnp.int32)[None]


def _time_resets(resets, mask, batch_shape, length, padded, time_major, reverse):
  """``resets`` as the loop reads them: ``(padded T, *batch)``, valid steps only.

  In the loop, True at t means "replace the carry by the initial carry before step t".
  Forward that is ``resets`` itself. In reverse a segment ``[s, e]`` is read from ``e``
  down, so the carry restarts before ``e``: at each t where a segment starts at ``t + 1``.
  """
  if resets is None:
    return None
  r = check_resets(resets, batch_shape, length, time_major)
  r = r if time_major else jnp.moveaxis(r, -1, 0)
  if padded != length:
    r = jnp.concatenate([r, jnp.zeros((padded - length,) + r.shape[1:], jnp.bool_)])
  if mask is not None:
    r = r & mask  # past a row's length nothing restarts: its carry is frozen
  if reverse:
    r = jnp.concatenate([r[1:], jnp.zeros((1,) + r.shape[1:], jnp.bool_)])
  return r


def _chunked(loop, carry, inputs, reverse, chunk):
  """``loop(carry, inputs)`` over time, or, with remat chunks, a checkpointed scan of chunks."""
  if chunk is None:
    return loop(carry, inputs)
  # Outer scan over chunks stores one carry per chunk; each chunk is rematerialised.
  length = jax.tree.leaves(inputs)[0].shape[0]
  split = lambda a: a.reshape((length // chunk, chunk) + a.shape[1:])  # noqa: E731
  carry, ys = lax.scan(jax.checkpoint(loop), carry, jax.tree.map(split, inputs), reverse=reverse)
  return carry, jax.tree.map(lambda y: y.reshape((length,) + y.shape[2:]), ys)


def _run_steps(
  cell, params, carry, inputs, reset_carry, h_mask, reverse, unroll, chunk, return_carries=False
):
  def loop(c, chunk_inputs):
    xs, mask, resets, keep = chunk_inputs
    noise = kernel.Noise(h_mask, keep)
    args = (params, c, xs, mask, reverse, unroll, resets, reset_carry, noise, cell.masked_step)
    return kernel.step_loop(cell.step, *args, return_carries=return_carries)

  return _chunked(loop, carry, inputs, reverse, chunk)


def _run_kernel(
  cell, params, carry, inputs, reset_carry, h_mask, reverse, unroll, chunk, *, sequence
):
  xs_t = inputs[0]
  # The kernel works on one flat batch axis; check shapes with the cell's own step first.
  jax.eval_shape(cell.step, params, carry, jax.ShapeDtypeStruct(xs_t.shape[1:], xs_t.dtype))
  padded, batch_shape = xs_t.shape[0], xs_t.shape[1:-1]
  n = math.prod(batch_shape)
  flat = lambda a: a.reshape(a.shape[: -len(batch_shape) - 1] + (n, a.shape[-1]))  # noqa: E731
  carry, reset_carry, h_mask = jax.tree.map(flat, (carry, reset_carry, h_mask))
  inputs = jax.tree.map(lambda a: a.reshape((padded, n) + a.shape[1 + len(batch_shape) :]), inputs)

  def loop(c, chunk_inputs):
    xs, mask, resets, keep = chunk_inputs
    args = (params, c, xs, mask, reverse, unroll, resets, reset_carry)
    if h_mask is None and keep is None:
      return sequence(*args)
    return sequence(*args, kernel.Noise(h_mask, keep))

  carry, ys = _chunked(loop, carry, inputs, reverse, chunk)
  carry = jax.tree.map(lambda a: a.reshape(batch_shape + a.shape[1:]), carry)
  ys = jax.tree.map(lambda y: y.reshape((padded,) + batch_shape + y.shape[2:]), ys)
  return carry, ys
