"""A causal depthwise convolution over time whose window is carried: one step, or a whole
sequence at once with lengths and resets (Mamba's ``conv1d``, Gu and Dao 2023, section 3.4).

With width ``K``, weights ``w`` ``(K, C)`` (PyTorch's ``Conv1d(C, C, K, groups=C)`` weight
``(C, 1, K)``, transposed) and bias ``b`` ``(C,)``, the output at ``t`` is

    y_t = b + sum_{j < K} w[j] * x_{t - (K - 1) + j}

a cross-correlation over the last ``K`` inputs, ``w[K - 1]`` on the newest. The window is the
last ``K - 1`` inputs before ``t``, oldest first, ``(..., K - 1, C)``: PyTorch's zero left
padding is the zero window, and a carried window continues a sequence exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def _taps(w: jax.Array, like: jax.Array) -> jax.Array:
  """``w`` ``(K, C)`` reshaped to broadcast explicitly against ``like`` ``(..., K, C)``."""
  return jnp.reshape(w, (1,) * (like.ndim - 2) + w.shape)


def step(x: jax.Array, window: jax.Array, w: jax.Array, b: jax.Array | None):
  """One step: ``(y, new window)`` for ``x`` ``(..., C)`` and ``window`` ``(..., K - 1, C)``."""
  full = jnp.concatenate([window, x[..., None, :]], axis=-2)  # (..., K, C), oldest first
  y = jnp.sum(full * _taps(w, full), axis=-2)
  if b is not None:
    y = y + jnp.reshape(b, (1,) * (y.ndim - 1) + b.shape)
  return y, full[..., 1:, :]


def sequence(x, window, w, b, valid=None, resets=None, reset_window=None):
  """The convolution of a whole sequence, as `step` looped over it with lengths and resets.

  Args:
    x: ``(T, N, C)``, in the order the steps run.
    window: ``(N, K - 1, C)``, the window entering the sequence.
    w, b: ``(K, C)`` and ``(C,)`` or None.
    valid: boolean ``(T, N)`` or None: where False the step is skipped (the window is kept;
      its output is computed, for the caller to drop).
    resets: boolean ``(T, N)`` or None: where True the window is ``reset_window``
      ``(N, K - 1, C)`` before the step.

  Returns:
    ``(y (T, N, C), the window after the last step (N, K - 1, C))``.

  Each step's ``l``-th previous input (``l = 1 .. K - 1``) is the ``l``-th valid input
  before it in its segment, when the segment has that many, else the entry of the
  segment's starting window (the incoming one, or ``reset_window`` after a reset) that
  `step` would have shifted there. A virtual step after the last gives the final window.
  Gathers and one-hot products only: no loop over time.
  """
  T, N, C = x.shape
  K1 = window.shape[-2]
  y = x * jnp.reshape(w[K1], (1, 1, C))
  if K1 == 0:
    return y if b is None else y + jnp.reshape(b, (1, 1, C)), window
  v = jnp.ones((T, N), jnp.bool_) if valid is None else valid
  v = jnp.concatenate([v, jnp.zeros((1, N), jnp.bool_)]).astype(jnp.int32)  # + the virtual step
  count = jnp.cumsum(v, axis=0) - v  # valid steps before each step
  if valid is None:
    seq = x  # the valid inputs in order
  else:  # compacted: the n-th valid input at n, the invalid ones added to a dropped row T
    where = jnp.where(v[:T] > 0, count[:T], T)
    rows = jnp.zeros((T + 1, N, C), x.dtype).at[where, jnp.arange(N)[None]].add(x)
    seq = rows[:T]
  count_start = jnp.zeros_like(count)
  from_reset = jnp.zeros((T + 1, N), jnp.bool_)
  if resets is not None:
    r = jnp.concatenate([resets, jnp.zeros((1, N), jnp.bool_)])
    t = jnp.arange(T + 1, dtype=jnp.int32)[:, None]
    last = lax.cummax(jnp.where(r, t, -1), axis=0)  # the segment's first step, -1: none
    from_reset = last >= 0
    count_start = jnp.where(from_reset, jnp.take_along_axis(count, jnp.maximum(last, 0), 0), 0)
  k = count - count_start  # valid steps of the segment before each step
  lags = []
  for lag in range(1, K1 + 1):
    idx = jnp.clip(count - lag, 0, T - 1)[..., None]
    inside = jnp.take_along_axis(seq, idx, axis=0)  # (T + 1, N, C)
    slot = jax.nn.one_hot(K1 - lag + k, K1, dtype=x.dtype)  # out of range: zeros, unused
    start = jnp.einsum("tnk,nkc->tnc", slot, window)
    if resets is not None:
      start = jnp.where(
        from_reset[..., None], jnp.einsum("tnk,nkc->tnc", slot, reset_window), start
      )
    lags.append(jnp.where((lag <= k)[..., None], inside, start))
  for lag, value in enumerate(lags, start=1):
    y = y + value[:T] * jnp.reshape(w[K1 - lag], (1, 1, C))
  if b is not None:
    y = y + jnp.reshape(b, (1, 1, C))
  return y, jnp.stack([value[-1] for value in lags[::-1]], axis=1)
