"""The selective scan of Mamba's S6 (Gu and Dao 2023, section 3.2, algorithm 2) over a whole
sequence, in time chunks, as the authors' ``selective_scan_ref`` without a fused kernel.

With ``Delta`` ``(..., E D)``, ``B`` and ``C`` ``(..., N)`` per step and ``A = -exp(a_log)``
``(E D, N)``, the state ``h`` ``(..., E D, N)`` follows

    h_t = exp(Delta_t A) * h_{t-1} + (Delta_t B_t) * x_t,   y_t = sum_n h_t[:, n] C_t[n]

(`discretize`, `contract`). Its states are ``N`` times the input's width, so `chunked` never
holds them for the whole sequence: a `jax.lax.scan` over chunks of ``L`` steps carries ``h``,
each chunk's ``(L, ..., E D * N)`` coefficients run through one
`jaxrnn.cells.linear_scan.recurrence` and are contracted with ``C`` at once, under
`jax.checkpoint` (the backward pass keeps only the chunk boundaries' states).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxrnn.cells import linear_scan


def discretize(a_log: jax.Array, delta: jax.Array, b: jax.Array, x: jax.Array):
  """``(exp(Delta A), Delta B x)``, each ``(..., E D, N)`` in ``delta``'s dtype, from ``Delta``
  ``(..., E D)``, ``B`` ``(..., N)``, the input ``x`` ``(..., E D)`` and ``a_log`` ``(E D, N)``
  (``A = -exp(a_log)``)."""
  acc = delta.dtype
  a = -jnp.exp(a_log.astype(acc))
  delta = delta[..., None]
  d_a = jnp.exp(delta * jnp.reshape(a, (1,) * (delta.ndim - 2) + a.shape))
  d_bx = delta * b.astype(acc)[..., None, :] * x.astype(acc)[..., None]
  return d_a, d_bx


def contract(h: jax.Array, c: jax.Array, like: jax.Array) -> jax.Array:
  """``C h``: the states ``h`` ``(..., E D, N)`` summed against ``c`` ``(..., N)`` over N,
  ``(..., E D)`` in ``like``'s dtype."""
  return jnp.sum(h * c.astype(h.dtype)[..., None, :], axis=-1).astype(like.dtype)


def _chunks(v: jax.Array | None, L: int) -> jax.Array | None:
  """``v`` ``(T, ...)`` padded with zeros (False) to whole chunks, as ``(S, L, ...)``; a
  symbolic ``T`` (`jax.export`) is always padded, by a symbolic count that may be 0."""
  if v is None:
    return None
  T = v.shape[0]
  S = -(-T // L)
  if jax.export.is_symbolic_dim(T) or S * L != T:
    v = jnp.concatenate([v, jnp.zeros((S * L - T,) + v.shape[1:], v.dtype)])
  return v.reshape((S, L) + v.shape[1:])


def chunked(a_log, h0, x, delta, b, c, valid, resets, reset_h, chunk_size: int):
  """``(C h_t (T, N, E D), the last state (N, E D * N))``: the selective scan from ``h0``.

  Args:
    a_log: ``(E D, N_state)``, ``A = -exp(a_log)``.
    h0: ``(N, E D * N_state)``, the state before the first step, in the recurrence's dtype.
    x, delta: ``(T, N, E D)``: the input and ``Delta`` (in the recurrence's dtype).
    b, c: ``(T, N, N_state)``: ``B`` and ``C``.
    valid, resets: boolean ``(T, N, 1)`` or None, as `jaxrnn.cells.linear_scan.fold`'s.
    reset_h: ``(1, N, E D * N_state)`` with ``resets``, else None.
    chunk_size: L, the steps per chunk (a sequence shorter than it is one chunk).

  The last chunk is padded with masked steps (``(1, 0)``: the state passes through).

  Example:
    >>> import jax.numpy as jnp
    >>> T, N, ED, NS = 5, 2, 3, 4
    >>> ch, last = chunked(jnp.zeros((ED, NS)), jnp.zeros((N, ED * NS)), jnp.ones((T, N, ED)),
    ...   jnp.ones((T, N, ED)), jnp.ones((T, N, NS)), jnp.ones((T, N, NS)), None, None, None, 2)
    >>> ch.shape, last.shape
    ((5, 2, 3), (2, 12))
  """
  T = x.shape[0]
  L = chunk_size if jax.export.is_symbolic_dim(T) else min(chunk_size, T)
  if valid is None and (jax.export.is_symbolic_dim(T) or T % L):
    valid = jnp.ones(x.shape[:2] + (1,), jnp.bool_)  # the padding is masked
  chunks = tuple(_chunks(v, L) for v in (x, delta, b, c, valid, resets))

  @jax.checkpoint
  def chunk(h, inputs):
    x_k, delta_k, b_k, c_k, valid_k, resets_k = inputs
    d_a, d_bx = discretize(a_log, delta_k, b_k, x_k)
    a_k, b_k = (v.reshape(d_a.shape[:2] + (-1,)) for v in (d_a, d_bx))
    a_k, b_k = linear_scan.fold(a_k, b_k, valid_k, resets_k, reset_h)
    hs, last = linear_scan.recurrence(a_k, b_k, h, False, linear_scan.method(a_k))
    return last, contract(hs.reshape(d_a.shape), c_k, x_k)

  last, ch = lax.scan(chunk, h0, chunks)
  return ch.reshape((-1,) + ch.shape[2:])[:T], last
