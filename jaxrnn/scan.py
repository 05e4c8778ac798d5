"""Unrolling a cell over time with `lax.scan`: masks for variable lengths, reverse, unroll."""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxrnn import params_check
from jaxrnn.cells import kernel, linear_scan
from jaxrnn.cells.base import Cell, PyTree

IMPLS = ("auto", "step", "fused")


ORDER = "scan(cell, params, xs, carry=None, ...)"


def _batch_and_time(
  xs: jax.Array, time_major: bool, features: int = 1
) -> tuple[tuple[int, ...], int]:
  """``(batch_shape, T)`` of ``xs``, whose last ``features`` axes are one step's input."""
  if xs.ndim < 1 + features:
    layout = "(T, *batch, input_size)" if time_major else "(*batch, T, input_size)"
    raise ValueError(
      f"xs has shape {xs.shape} (rank {xs.ndim}); expected rank >= {1 + features}, {layout}."
    )
  end = xs.ndim - features
  if time_major:
    return tuple(xs.shape[1:end]), xs.shape[0]
  return tuple(xs.shape[: end - 1]), xs.shape[end - 1]


def feature_ndim(cell: Cell, params: PyTree, xs: jax.Array, carry: PyTree, time_major: bool) -> int:
  """How many trailing axes of ``xs`` one step reads: 1 (features) for floating inputs.

  Integer (or boolean) inputs, such as token ids, may have none: ``(*batch, T)``. Then
  the carry, when given, says where the batch ends (its leaves' axes beyond the unbatched
  initial carry's); without one, the step is traced abstractly on 1 feature axis, then on
  none, and the first on which it returns a carry of its input's shapes is taken.
  """
  if jnp.issubdtype(xs.dtype, jnp.inexact) or xs.ndim < 2:
    return 1
  if carry is not None:
    try:
      unbatched = jax.eval_shape(lambda p: cell.initial_carry(p, ()), params)
      leaf, leaf0 = jax.tree.leaves(carry)[0], jax.tree.leaves(unbatched)[0]
    except Exception:  # noqa: BLE001 - the usual checks then say what is wrong
      return 1
    return max(0, xs.ndim - 1 - (jnp.ndim(leaf) - len(leaf0.shape)))
  for features in (1, 0):
    batch_shape, _ = _batch_and_time(xs, time_major, features)
    x = jax.ShapeDtypeStruct(batch_shape + xs.shape[xs.ndim - features :], xs.dtype)
    try:
      c = jax.eval_shape(lambda p: cell.initial_carry(p, batch_shape), params)  # noqa: B023
      new, _ = jax.eval_shape(cell.step, params, c, x)
    except Exception:  # noqa: BLE001 - this split does not fit the step
      continue
    if jax.tree.map(lambda a: a.shape, new) == jax.tree.map(lambda a: a.shape, c):
      return features
  return 1


def check_seq_lengths(seq_lengths: Any, batch_shape: tuple[int, ...], length: int) -> jax.Array:
  """Validates ``seq_lengths`` eagerly; returns it as an integer array.

  Static properties (dtype, shape) are always checked. Values are checked
  when they are concrete (not traced): ``0 <= seq_lengths <= T``. Under
  `jax.jit` values cannot be seen, and they are clamped to ``[0, T]`` instead.
  """
  if isinstance(seq_lengths, jax.core.Tracer):
    arr = seq_lengths
  else:
    arr = np.asarray(seq_lengths) if not isinstance(seq_lengths, jax.Array) else seq_lengths
  if not jnp.issubdtype(arr.dtype, jnp.integer):
    raise ValueError(
      f"seq_lengths has dtype {arr.dtype}; expected an integer dtype (lengths count time steps)."
    )
  if tuple(arr.shape) != batch_shape:
    raise ValueError(
      f"seq_lengths has shape {tuple(arr.shape)}; expected the batch shape of xs, {batch_shape}."
    )
  if not isinstance(arr, jax.core.Tracer):
    host = np.asarray(arr)
    if host.size and (host.min() < 0 or host.max() > length):
      raise ValueError(
        f"seq_lengths must lie in [0, T={length}]; got values from {host.min()} to {host.max()}."
      )
  return jnp.asarray(arr)


def check_carry(carry: PyTree, batch_shape: tuple[int, ...]) -> None:
  for path, leaf in jax.tree_util.tree_leaves_with_path(carry):
    shape = tuple(jnp.shape(leaf))
    if shape[:-1] != batch_shape:
      name = "carry" + jax.tree_util.keystr(path)
      raise ValueError(
        f"{name} has shape {shape}; expected (*batch, features) with the batch shape of xs, "
        f"{batch_shape}."
      )


def check_input_size(params: PyTree, xs: jax.Array) -> None:
  expected = getattr(params, "input_size", None)
  if isinstance(expected, int) and xs.shape[-1] != expected:
    raise ValueError(
      f"xs has {xs.shape[-1]} features (shape {xs.shape}), but the params expect "
      f"input_size={expected}."
    )


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
      ``time_major``); past a row's length, its frozen carry. Runs the step loop.

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
  batch_shape, length = _batch_and_time(xs, time_major, features)
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
  reset_carry = None if resets is None else cell.initial_carry(params, batch_shape)
  h_mask, keep = _check_noise(noise, carry, length, xs_t.shape[0])
  inputs = (xs_t, mask, resets, keep)
  args = (cell, params, carry, inputs, reset_carry, h_mask, reverse, unroll, chunk)
  carry, ys = run(*args) if not return_carries else _run_steps(*args, return_carries=True)
  ys = jax.tree.map(lambda y: y[:length], ys)
  if not time_major:
    ys = jax.tree.map(lambda y: jnp.moveaxis(y, 0, -2), ys)
  return (carry, *ys) if return_carries else (carry, ys)


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


def _check_noise(noise: Any, carry: PyTree, length: int, padded: int):
  """``(h_mask, keep)`` of ``noise`` checked against the carry; ``keep`` padded like ``xs``."""
  if noise is None:
    return None, None
  if not isinstance(noise, kernel.Noise):
    raise ValueError(f"noise is a {type(noise).__name__}; expected a jaxrnn.cells.kernel.Noise.")
  if noise.h_mask is not None:
    h = kernel.hidden(carry)
    if tuple(noise.h_mask.shape) != tuple(h.shape):
      raise ValueError(
        f"noise.h_mask has shape {tuple(noise.h_mask.shape)}; expected the hidden state's "
        f"{tuple(h.shape)}."
      )
  keep = noise.keep
  if keep is not None:

    def pad(k, c):
      if k is None:
        return None
      if tuple(k.shape) != (length,) + tuple(c.shape):
        raise ValueError(
          f"a noise.keep leaf has shape {tuple(k.shape)}; expected (T, *batch, F) = "
          f"{(length,) + tuple(c.shape)}."
        )
      return jnp.concatenate([k, jnp.zeros((padded - length,) + k.shape[1:], k.dtype)])

    keep = jax.tree.map(pad, keep, carry, is_leaf=lambda a: a is None)
  return noise.h_mask, keep


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


def check_resets(resets: Any, batch_shape: tuple[int, ...], length: int, time_major: bool):
  """Validates ``resets`` eagerly: a boolean ``(*batch, T)`` (``(T, *batch)`` if time-major)."""
  if not isinstance(resets, jax.Array | jax.core.Tracer):
    resets = np.asarray(resets)
  expected = (length, *batch_shape) if time_major else (*batch_shape, length)
  if resets.dtype != jnp.bool_:
    raise ValueError(
      f"resets has dtype {resets.dtype}; expected bool (True at t starts a new segment at t)."
    )
  if tuple(resets.shape) != expected:
    layout = "(T, *batch)" if time_major else "(*batch, T)"
    raise ValueError(
      f"resets has shape {tuple(resets.shape)}; expected {layout} = {expected}, like xs "
      "without its feature axis."
    )
  return jnp.asarray(resets)


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
