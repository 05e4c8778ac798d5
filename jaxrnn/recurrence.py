"""`jaxrnn.linear_recurrence`: the public linear recurrence, with `jaxrnn.scan`'s semantics.

``h_t = a_t * h_{t-1} + b_t`` elementwise, over any state shape, real or complex, with
lengths, resets and reverse as `jaxrnn.scan` has them. This module checks the arguments
and folds lengths and resets into the coefficients; the recurrence itself and its
hand-written VJP are `jaxrnn.cells.linear_scan.recurrence` (the whole-sequence kernel of
every linear cell runs the same one).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxrnn.cells import linear_scan
from jaxrnn.scan import check_resets, check_seq_lengths

METHODS_ARG = ("auto", *linear_scan.METHOD_NAMES)


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

  Its VJP is hand-written (`jaxrnn.cells.linear_scan.recurrence`): the transposed
  recurrence by the same method, saving only ``a`` and ``hs``; it is itself
  differentiable. Forward-mode autodiff (`jax.jvp`) is not supported (a `jax.custom_vjp`).

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
  best for the backend, `jaxrnn.cells.linear_scan.METHODS`: sequential on CPU, associative
  elsewhere (unmeasured here; the reason parallel scans exist) unless its temporaries,
  about 4.5 times ``a``'s bytes, exceed the device's free memory: then sequential
  (`jaxrnn.cells.linear_scan.method`).

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
  a, b = linear_scan.fold(a, b, valid, r, None if r is None else reset_h)
  if T == 0:
    return h0, jnp.moveaxis(b, 0, len(batch)) if not time_major else b
  hs, last = linear_scan.recurrence(a, b, h0, reverse, how)
  hs = hs if valid is None else jnp.where(valid, hs, jnp.zeros_like(hs))
  return last, hs if time_major else jnp.moveaxis(hs, 0, len(batch))


def _check_method(name: Any, a: jax.Array) -> str:
  """The method to run (`jaxrnn.cells.linear_scan.method` for ``"auto"``); else a `ValueError`."""
  if name not in METHODS_ARG:
    raise ValueError(f"method={name!r}: expected one of {METHODS_ARG}.")
  return linear_scan.method(a) if name == "auto" else name


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
