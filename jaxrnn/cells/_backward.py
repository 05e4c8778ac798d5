"""Backward pieces the hand-written kernels share (see `jaxrnn.cells.kernel`).

The loops of cells whose step's VJP is linear in the carry's cotangents, with the
coefficients (the "slopes") computed from the forward values for all ``T * N`` rows before
the loop: `slopes_loop` for the LSTM variants (``(dh, dc)``), `hidden_loop` for the GRU-like
cells (``dh``); and `dense_grads`, the weight and input gradients as one matmul each over
all rows after a loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxrnn.cells import kernel
from jaxrnn.cells.base import HiddenCarry, LSTMCarry


def slopes_loop(w_hh, local, mask, resets, cotangents, noise, reverse, unroll):
  """The backward loop of an LSTM variant whose step's VJP is linear in ``(dh, dc)``.

  ``local = (k_h, slopes, k_c)``, ``(T, N, F)`` leaves from the forward values, computed
  before the loop: at each step ``dc = dc' + dh * k_h``, ``dz = slopes * [dc, ..., dc, dh]``
  (every gate block but the last, the output gate's, takes ``dc``), ``dh_{t-1} = dz @
  w_hh.T`` (times recurrent dropout's mask) and ``dc_{t-1} = dc * k_c``; lengths, resets
  and zoneout as in `jaxrnn.cells.lstm.backward`.

  Returns:
    ``(d_carry0, dz, to_reset)``: the initial carry's cotangent, ``dz`` ``(T, N, G * H)``
    and the per-step cotangents of the reset carry (`kernel.reset_total` sums them).
  """
  h_mask = noise.h_mask
  ct_carry, ct_ys = cotangents
  w_hh_t = kernel.transposed(w_hh)

  def body(ct, inputs):
    dy, k_h, slopes, k_c, m, restart, keep = inputs
    dh = ct.h + kernel.zeros_where_invalid(m, dy)  # a padded step's output is a constant 0
    (dh, dc_out), straight = kernel.zone_split(keep, LSTMCarry(dh, ct.c))
    dc = dc_out + dh * k_h
    blocks = slopes.shape[-1] // dc.shape[-1]
    dz = kernel.zeros_where_invalid(m, slopes * jnp.concatenate([dc] * (blocks - 1) + [dh], -1))
    d_h_in = dz @ w_hh_t
    d_h_in = d_h_in if h_mask is None else d_h_in * h_mask
    d_prev = kernel.add_zoned(LSTMCarry(d_h_in, dc * k_c), straight)
    new = LSTMCarry(kernel.where_valid(m, d_prev.h, ct.h), kernel.where_valid(m, d_prev.c, ct.c))
    new, to_reset = kernel.reset_split(restart, new)
    return new, (dz, to_reset)

  inputs = (ct_ys, *local, mask, resets, noise.keep)
  ct0, (dz, to_reset) = lax.scan(body, ct_carry, inputs, reverse=not reverse, unroll=unroll)
  return ct0, dz, to_reset


def dense_grads(params, xs, h_prev, h_mask, dz, d_rec=None):
  """The gradients of ``z = x @ w_ih + b`` and ``(h_prev * h_mask) @ w_hh``, and ``d_xs``.

  Args:
    params: the cell's params (``w_ih``, ``w_hh``, ``b``).
    xs: the inputs ``(T, N, I)``; ``h_prev`` the previous hidden states ``(T, N, H)``;
      ``h_mask`` recurrent dropout's mask ``(N, H)`` or None.
    dz: the cotangent of the input projection ``(T, N, G * H)``.
    d_rec: the recurrent product's, where it differs from ``dz`` (the GRU's), else None.

  Returns:
    ``({w_ih, w_hh, b} gradients, d_xs)``: one matmul (or sum) each over all ``T * N`` rows.
  """
  dz_rows = kernel.rows(dz)
  rec_rows = dz_rows if d_rec is None else kernel.rows(d_rec)
  h_in = h_prev if h_mask is None else h_prev * h_mask[None]
  dense = dict(
    w_ih=kernel.rows(xs).T @ dz_rows,
    w_hh=kernel.rows(h_in).T @ rec_rows,
    b=None if params.b is None else jnp.sum(dz_rows, axis=0),
  )
  return dense, (dz_rows @ params.w_ih.T).reshape(xs.shape)


def b_hn_grad(params, d_rec: jax.Array) -> jax.Array | None:
  """The recurrent candidate bias ``b_hn``'s gradient: ``d_rec``'s last block summed over all
  rows (``d_rec`` ``(T, N, G * H)``, the recurrent product's cotangent), or None."""
  if params.b_hn is None:
    return None
  return jnp.sum(kernel.rows(d_rec)[:, -params.b_hn.shape[-1] :], axis=0)


def hidden_loop(w_hh, slopes, k_h, mask, resets, cotangents, noise, reverse, unroll, norm=None):
  """The backward loop of a GRU-like cell whose step's VJP is linear in ``dh``.

  With ``slopes`` ``(T, N, G * H)`` the recurrent projection's derivatives by ``dh`` and
  ``k_h`` ``(T, N, H)`` the direct path ``dh_{t-1} / dh`` (the kept fraction of ``h``), each
  step: ``d_rec = slopes * [dh, ..., dh]`` (through ``norm(d_rec, *norm_inputs)``, a
  normalization's VJP, when given as ``(norm, norm_inputs)``), ``dh_{t-1} = (d_rec @
  w_hh.T) * h_mask + dh * k_h``; lengths, resets and zoneout as in
  `jaxrnn.cells.lstm.backward`.

  Returns:
    ``(d_carry0, dh, to_reset)``: the initial carry's cotangent, every step's ``dh``
    ``(T, N, H)`` (zero where invalid) and the per-step cotangents of the reset carry.
  """
  h_mask = noise.h_mask
  ct_carry, ct_ys = cotangents
  w_hh_t = kernel.transposed(w_hh)
  vjp, norm_inputs = (None, ()) if norm is None else norm
  blocks = w_hh.shape[-1] // w_hh.shape[0]

  def body(ct, inputs):
    dy, slopes, k_h, m, restart, keep, *extra = inputs
    dh = ct.h + kernel.zeros_where_invalid(m, dy)  # a padded step's output is a constant 0
    (dh,), straight = kernel.zone_split(keep, HiddenCarry(dh))
    dh = kernel.zeros_where_invalid(m, dh)
    d_rec = slopes * jnp.concatenate([dh] * blocks, axis=-1)
    d_rec = d_rec if vjp is None else vjp(d_rec, *extra)
    d_h_in = d_rec @ w_hh_t
    d_prev = (d_h_in if h_mask is None else d_h_in * h_mask) + dh * k_h
    d_prev = kernel.add_zoned(HiddenCarry(d_prev), straight)
    new = HiddenCarry(kernel.where_valid(m, d_prev.h, ct.h))
    new, to_reset = kernel.reset_split(restart, new)
    return new, (dh, to_reset)

  inputs = (ct_ys, slopes, k_h, mask, resets, noise.keep, *norm_inputs)
  ct0, (dh, to_reset) = lax.scan(body, ct_carry, inputs, reverse=not reverse, unroll=unroll)
  return ct0, dh, to_reset


def slopes_backward(params, xs, h_prev, local, mask, resets, cotangents, noise, reverse, unroll):
  """`slopes_loop` over ``local``, then `dense_grads`: an LSTM variant's backward but its own
  params' gradients.

  Returns:
    ``(dense, d_carry0, d_xs, d_reset_carry, dz)``: the ``{w_ih, w_hh, b}`` gradients, the
    initial carry's, the inputs' and the reset carry's cotangents, and ``dz`` ``(T, N, G * H)``.
  """
  ct0, dz, to_reset = slopes_loop(
    params.w_hh, local, mask, resets, cotangents, noise, reverse, unroll
  )
  dense, d_xs = dense_grads(params, xs, h_prev, noise.h_mask, dz)
  return dense, ct0, d_xs, kernel.reset_total(to_reset), dz
