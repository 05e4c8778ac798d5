"""Gate blocks the cells share: one-tanh-pass activations, their slopes, the GRU's gates.

A cell's pre-activations are ``G`` blocks of ``H`` columns, one per gate. These are the
blocks' math written once, for the cell modules (which never import one another).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxrnn.cells import base


def _tanh_columns(z: jax.Array, blocks: int, tanh_block: int) -> jax.Array:
  """True on the columns of block ``tanh_block`` of ``z`` ``(..., blocks * H)``."""
  h = z.shape[-1] // blocks
  col = lax.broadcasted_iota(jnp.int32, z.shape, z.ndim - 1)
  return (col >= tanh_block * h) & (col < (tanh_block + 1) * h)


def block_gates(z: jax.Array, blocks: int, tanh_block: int) -> jax.Array:
  """Sigmoid on every ``H``-column block of ``z`` ``(..., blocks * H)`` but ``tanh_block``.

  ``sigmoid(x) = (1 + tanh(x / 2)) / 2``, so one tanh over all columns (the sigmoid
  ones scaled by 1/2, an exact scaling) serves every gate: a single elementwise loop
  instead of one slice and kernel per gate and a concatenation, which on XLA:CPU is
  what costs most inside the time loop.
  """
  is_tanh = _tanh_columns(z, blocks, tanh_block)
  t = jnp.tanh(jnp.where(is_tanh, z, 0.5 * z))
  return jnp.where(is_tanh, t, 0.5 * t + 0.5)


def gates(z: jax.Array) -> jax.Array:
  """The LSTM's ``[sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)]`` over ``z`` ``(..., 4H)``.

  `block_gates` with the candidate ``g`` (the third block) the one tanh block.
  """
  return block_gates(z, 4, 2)


def gates_slope(acts: jax.Array) -> jax.Array:
  """d act / d z for `gates`: ``1 - a^2`` on the g columns, ``a (1 - a)`` elsewhere."""
  return jnp.where(_tanh_columns(acts, 4, 2), 1.0 - acts * acts, acts * (1.0 - acts))


def projections(params, h: jax.Array, x: jax.Array, h_mask: jax.Array | None):
  """``(x @ w_ih + b, (h * h_mask) @ w_hh)``: the GRU-like cells' two projections.

  The recurrent product keeps its own bias (``b_hn``) apart, for the gate that multiplies
  it; ``h_mask`` (recurrent dropout) masks ``h`` there only. ``h`` (in the carry's dtype)
  enters the product in ``x``'s (the compute) dtype.
  """
  gi = base.add_bias(x @ params.w_ih, params.b)
  h = base.like(h, x)
  return gi, (h if h_mask is None else h * h_mask) @ params.w_hh


def gru_gates(gi: jax.Array, gh: jax.Array, h: jax.Array, b_hn: jax.Array | None = None):
  """PyTorch's GRU from its input and recurrent projections, each ``(..., 3H)``, ``[r, z, n]``.

  Args:
    gi: the input projection, its bias added.
    gh: the recurrent projection.
    h: the hidden state ``(..., H)`` the step interpolates from, in the carry's dtype.
    b_hn: ``(H,)`` or None, added to ``gh``'s n slice inside the reset product.

  Returns:
    ``(h', (r, z, n, hn))``: the new state, interpolated in ``h``'s dtype (the gates cast
    up to it), and the gates in the projections' dtype, ``hn`` the n slice plus ``b_hn``.
  """
  i_r, i_z, i_n = jnp.split(gi, 3, axis=-1)
  h_r, h_z, h_n = jnp.split(gh, 3, axis=-1)
  r = jax.nn.sigmoid(i_r + h_r)
  z = jax.nn.sigmoid(i_z + h_z)
  hn = base.add_bias(h_n, b_hn)
  n = jnp.tanh(i_n + r * hn)
  return base.like(1.0 - z, h) * base.like(n, h) + base.like(z, h) * h, (r, z, n, hn)
