"""The backward loop every whole-sequence kernel shares (see `jaxrnn.cells.kernel`).

`reverse_loop` runs the reverse recurrence once for every cell: lengths, resets, recurrent
dropout's and zoneout's masks, and the split of the carry's cotangent; a cell supplies its
step's local VJP (and stacks what its weight gradients need). Two families share a local VJP
too: `slopes_vjp` for the LSTM variants whose step's VJP is linear in ``(dh, dc)`` with
coefficients (the "slopes") computed from the forward values for all ``T * N`` rows before
the loop, `hidden_vjp` for the GRU-like cells (linear in ``dh``); and `dense_grads` gives the
weight and input gradients as one matmul each over all rows after the loop.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxrnn.cells import kernel
from jaxrnn.cells.base import HiddenCarry, LSTMCarry


def reverse_loop(step_vjp, local, mask, resets, cotangents, noise, reverse, unroll):
  """The backward loop of every whole-sequence kernel: the reverse recurrence over time.

  It applies, once for every cell, what `jaxrnn.cells.kernel.forward` applied: a padded
  step's output is a constant 0 and its carry passes through (``mask``), a reset sends its
  carry's cotangent to the reset carry (``resets``), zoneout sends part of it straight to
  the previous carry (``noise.keep``) and recurrent dropout's mask multiplies the
  cotangent of the ``h`` that entered the recurrent product (``noise.h_mask``).

  Args:
    step_vjp: ``step_vjp(ct, local_t) -> (d_h_in, d_prev, out)``, the cell's local VJP of
      one step: ``ct`` the cotangent of the step's new carry (before zoneout's blend, the
      output's cotangent already in ``ct.h``), ``local_t`` one step of ``local``;
      ``d_h_in`` that of the ``h`` that entered the recurrent product (after recurrent
      dropout's mask), ``d_prev`` that of the incoming carry by every other path (its
      ``h`` leaf None where ``h`` enters only the recurrent product) and ``out`` what the
      cell stacks over time for its gradients after the loop (zeroed here where invalid).
    local: a tree of ``(T, N, F)`` leaves, the forward values ``step_vjp`` reads.
    mask, resets: boolean ``(T, N)`` or None, as the forward's.
    cotangents: ``(d_carry, d_ys)``, the cotangents of the kernel's outputs.
    noise: a `jaxrnn.cells.kernel.Noise`.
    reverse, unroll: the forward's (the loop runs the other way).

  Returns:
    ``(d_carry0, outs, d_reset_carry)``: the initial carry's cotangent, ``out`` stacked
    ``(T, ...)`` and the reset carry's cotangent (None without resets).
  """
  h_mask = noise.h_mask
  ct_carry, ct_ys = cotangents

  def body(ct, inputs):
    dy, local_t, m, restart, keep = inputs
    dh = kernel.hidden(ct) + kernel.zeros_where_invalid(m, dy)  # a padded output is 0
    ct_new, straight = kernel.zone_split(keep, kernel.with_hidden(ct, dh))
    d_h_in, d_prev, out = step_vjp(ct_new, local_t)
    d_h = d_h_in if h_mask is None else d_h_in * h_mask
    d_direct = kernel.hidden(d_prev)
    d_prev = kernel.with_hidden(d_prev, d_h if d_direct is None else d_h + d_direct)
    d_prev = kernel.add_zoned(d_prev, straight)
    new = jax.tree.map(functools.partial(kernel.where_valid, m), d_prev, ct)
    new, to_reset = kernel.reset_split(restart, new)
    return new, (jax.tree.map(functools.partial(kernel.zeros_where_invalid, m), out), to_reset)

  inputs = (ct_ys, local, mask, resets, noise.keep)
  ct0, (outs, to_reset) = lax.scan(body, ct_carry, inputs, reverse=not reverse, unroll=unroll)
  return ct0, outs, kernel.reset_total(to_reset)


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


def slopes_vjp(w_hh):
  """The local VJP (for `reverse_loop`) of an LSTM variant whose step is linear in ``(dh, dc)``.

  ``local = (k_h, slopes, k_c)``, ``(T, N, F)`` leaves from the forward values: ``dc = dc' +
  dh * k_h``, ``dz = slopes * [dc, ..., dc, dh]`` (every gate block but the last, the output
  gate's, takes ``dc``), ``d_h_in = dz @ w_hh.T`` and ``dc_{t-1} = dc * k_c``; ``out`` is ``dz``.
  """
  w_hh_t = kernel.transposed(w_hh)
  blocks = w_hh.shape[-1] // w_hh.shape[0]

  def step_vjp(ct, local):
    k_h, slopes, k_c = local
    dc = ct.c + ct.h * k_h
    dz = slopes * jnp.concatenate([dc] * (blocks - 1) + [ct.h], -1)
    return dz @ w_hh_t, LSTMCarry(None, dc * k_c), dz

  return step_vjp


def slopes_backward(params, xs, h_prev, local, mask, resets, cotangents, noise, reverse, unroll):
  """`reverse_loop` of `slopes_vjp` over ``local``, then `dense_grads`: an LSTM variant's
  backward but its own params' gradients.

  Returns:
    ``(dense, d_carry0, d_xs, d_reset_carry, dz)``: the ``{w_ih, w_hh, b}`` gradients, the
    initial carry's, the inputs' and the reset carry's cotangents, and ``dz`` ``(T, N, G * H)``.
  """
  step_vjp = slopes_vjp(params.w_hh)
  ct0, dz, d_reset = reverse_loop(step_vjp, local, mask, resets, cotangents, noise, reverse, unroll)
  dense, d_xs = dense_grads(params, xs, h_prev, noise.h_mask, dz)
  return dense, ct0, d_xs, d_reset, dz


def hidden_vjp(w_hh, norm=None):
  """The local VJP (for `reverse_loop`) of a GRU-like cell whose step is linear in ``dh``.

  ``local = (slopes, k_h, *norm_inputs)``: ``slopes`` ``(T, N, G * H)`` the recurrent
  projection's derivatives by ``dh``, ``k_h`` ``(T, N, H)`` the direct path ``dh_{t-1} / dh``
  (the kept fraction of ``h``): ``d_rec = slopes * [dh, ..., dh]`` (through ``norm(d_rec,
  *norm_inputs)``, a normalization's VJP, when given), ``d_h_in = d_rec @ w_hh.T`` and the
  direct ``dh * k_h``; ``out`` is ``dh``.
  """
  w_hh_t = kernel.transposed(w_hh)
  blocks = w_hh.shape[-1] // w_hh.shape[0]

  def step_vjp(ct, local):
    slopes, k_h, *extra = local
    dh = ct.h
    d_rec = slopes * jnp.concatenate([dh] * blocks, axis=-1)
    d_rec = d_rec if norm is None else norm(d_rec, *extra)
    return d_rec @ w_hh_t, HiddenCarry(dh * k_h), dh

  return step_vjp
