"""The chunkwise-parallel form of a stabilised matrix memory (xLSTM's mLSTM), with resets.

Over ``T`` steps cut into chunks of ``L``, a `jax.lax.scan` over the chunks carries the
memory ``(C, n, m)``; inside a chunk every step's output is the stabilised quadratic
(attention-like) form over the chunk's own inputs plus the carried memory read by the
step's query, so the sequential depth is ``T / L`` and the work ``O(T L d + T d^2)``. It
computes what the recurrent step computes, the stabiliser included: the step's ``m_t =
max(log f_t + m_{t-1}, i_t)`` unrolled is ``max(m_0 + F_t, max_j (i_j + F_t - F_j))``
with ``F`` the cumulative ``log f``, which each chunk evaluates row by row (the
``stab`` of xlstm's ``chunkwise_simple``). Resets cut the chunk: a step after a reset
sees only the inputs from the reset on, and the reset carry in place of the chunk's
incoming one; masked steps (lengths, padding) are ``log f = 0`` and ``i = -inf``, which
leave the memory as it is. Gradients are JAX's autodiff of this form.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


class Memory(NamedTuple):
  """The memory per head: ``C`` ``(N, K, D, D)`` (key rows, value columns), ``n``
  ``(N, K, D)``, ``m`` ``(N, K)``."""

  C: jax.Array
  n: jax.Array
  m: jax.Array


class Chunk(NamedTuple):
  """One chunk's inputs, time on axis 1: ``q``, ``k`` (scaled by ``1/sqrt(D)``), ``v``
  ``(N, L, K, D)``; ``i``, ``log_f`` ``(N, L, K)`` (masked: ``-inf`` and 0); ``resets``
  ``(N, L)`` bool or None."""

  q: jax.Array
  k: jax.Array
  v: jax.Array
  i: jax.Array
  log_f: jax.Array
  resets: jax.Array


def _reset_bookkeeping(chunk: Chunk):
  """``(start (N, L), restarted (N, L), decay (N, L, K))``: per step, the position of the
  latest reset at or before it (0 without one), whether there was one, and the summed
  ``log f`` from that position (or the chunk's start) up to the step, inclusive. Without
  resets: ``(None, None, decay)``."""
  F = jnp.cumsum(chunk.log_f, axis=1)
  if chunk.resets is None:
    return None, None, F
  pos = jnp.arange(F.shape[1], dtype=jnp.int32)[None, :]
  start = lax.cummax(jnp.where(chunk.resets, pos, jnp.zeros_like(pos)), axis=1)
  restarted = lax.cummax(chunk.resets.astype(jnp.int32), axis=1) > 0
  before = F - chunk.log_f  # the sum up to the step, exclusive
  decay = F - jnp.take_along_axis(before, start[..., None], axis=1)
  return start, restarted, decay


def _chunk_step(state: Memory, chunk: Chunk, initial: Memory, eps: float):
  """One chunk: ``(state after it, h (N, L, K, D))`` from the state before it."""
  L = chunk.q.shape[1]
  start, restarted, decay = _reset_bookkeeping(chunk)
  pos = jnp.arange(L, dtype=jnp.int32)
  causal = pos[:, None] >= pos[None, :]  # (t, j): j <= t
  valid = causal[None]  # (N or 1, t, j): j <= t, and j >= the latest reset at or before t
  if start is not None:
    valid = valid & (pos[None, None, :] >= start[:, :, None])
  F = jnp.cumsum(chunk.log_f, axis=1)  # (N, L, K)
  Ft, Fj = jnp.moveaxis(F, 1, 2)[..., :, None], jnp.moveaxis(F, 1, 2)[..., None, :]
  ij = jnp.moveaxis(chunk.i, 1, 2)[..., None, :]
  log_d = jnp.where(valid[:, None], Ft - Fj + ij, -jnp.inf)  # (N, K, t, j)
  base_m = state.m[:, None, :] + decay  # (N, L, K): the incoming memory's log-scale
  if restarted is not None:
    r = restarted[..., None]  # (N, L, 1)
    base_m = jnp.where(r, initial.m[:, None, :] + decay, base_m)
  stab = jnp.maximum(jnp.max(log_d, axis=-1), jnp.moveaxis(base_m, 1, 2))  # (N, K, L)
  d = jnp.exp(log_d - stab[..., None])
  scores = jnp.einsum("ntkd,njkd->nktj", chunk.q, chunk.k) * d
  w_base = jnp.exp(base_m - jnp.moveaxis(stab, 1, 2))[..., None]  # (N, L, K, 1)
  num = jnp.einsum("nktj,njkd->ntkd", scores, chunk.v)
  den = jnp.moveaxis(jnp.sum(scores, axis=-1), 1, 2)[..., None]  # (N, L, K, 1)
  read_C = jnp.einsum("ntka,nkab->ntkb", chunk.q, state.C)
  read_n = jnp.einsum("ntka,nka->ntk", chunk.q, state.n)[..., None]
  if restarted is not None:  # the reset carry, read where a reset came before the step
    r4 = r[..., None]
    read_C = jnp.where(r4, jnp.einsum("ntka,nkab->ntkb", chunk.q, initial.C), read_C)
    read_n = jnp.where(r4, jnp.einsum("ntka,nka->ntk", chunk.q, initial.n)[..., None], read_n)
  num = num + w_base * read_C
  den = jnp.abs(den + w_base * read_n)
  floor = jnp.exp(-jnp.moveaxis(stab, 1, 2))[..., None]
  h = num / (jnp.maximum(den, floor) + eps)
  return _next_state(state, chunk, initial, (log_d, stab, base_m, restarted)), h


def _next_state(state: Memory, chunk: Chunk, initial: Memory, parts) -> Memory:
  """The memory after the chunk's last step, from that step's row of the decay matrix."""
  log_d, stab, base_m, restarted = parts
  m = stab[:, :, -1]  # (N, K)
  w = jnp.exp(log_d[:, :, -1, :] - m[..., None])  # (N, K, j)
  kw = chunk.k * jnp.moveaxis(w, 1, 2)[..., None]  # (N, L, K, D)
  w_base = jnp.exp(base_m[:, -1, :] - m)  # (N, K)
  base = state
  if restarted is not None:
    r = restarted[:, -1]  # (N,)
    base = Memory(*(jnp.where(_expand(r, a), a0, a) for a, a0 in zip(state, initial, strict=True)))
  C = base.C * w_base[..., None, None] + jnp.einsum("njka,njkb->nkab", kw, chunk.v)
  n = base.n * w_base[..., None] + jnp.sum(kw, axis=1)
  return Memory(C, n, m)


def _expand(r: jax.Array, a: jax.Array) -> jax.Array:
  return r.reshape(r.shape + (1,) * (a.ndim - r.ndim))


def chunkwise(chunks: Chunk, state: Memory, initial: Memory, eps: float):
  """The memory over every chunk: ``(final state, h (S, N, L, K, D))``.

  Args:
    chunks: a `Chunk` whose leaves have a leading chunk axis ``S``.
    state: the `Memory` before the first chunk.
    initial: the `Memory` a reset restarts from.
    eps: added to the denominator ``max(|n^T q|, exp(-m))`` (xlstm's 1e-6).
  """

  def body(s, c):
    return _chunk_step(s, c, initial, eps)

  return lax.scan(body, state, chunks)
