"""Layer normalization and its VJP, for the layer-normalized cells (Ba, Kiros and Hinton 2016).

``LN(a; gain, bias) = (a - mean(a)) / sqrt(var(a) + epsilon) * gain + bias``, over
``groups`` equal blocks of the columns: `normalize` then `affine`. The cells normalize
their input and recurrent projections separately (`normalized_projections`), and their
kernels differentiate them with `layer_norm_vjp` and `projection_grads`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxrnn.cells import base, kernel


def normalize(z: jax.Array, groups: int, epsilon: float) -> tuple[jax.Array, jax.Array]:
  """``z`` ``(..., F)`` standardized over ``groups`` equal blocks of its columns: ``(xhat, rstd)``.

  Each block of ``F / groups`` columns is shifted to mean 0 and scaled to (biased) variance 1:
  ``xhat = (z - mean) * rstd`` ``(..., F)`` with ``rstd = 1 / sqrt(var + epsilon)``
  ``(..., groups, 1)``, both in at least float32 (as flax's ``LayerNorm``).
  """
  stat_dtype = jnp.dtype(jnp.float32) if jnp.finfo(z.dtype).bits < 32 else z.dtype
  zs = z.astype(stat_dtype).reshape(z.shape[:-1] + (groups, z.shape[-1] // groups))
  mean = jnp.mean(zs, axis=-1, keepdims=True)
  centred = zs - mean
  var = jnp.mean(centred * centred, axis=-1, keepdims=True)
  rstd = jax.lax.rsqrt(var + jnp.asarray(epsilon, stat_dtype))
  return (centred * rstd).reshape(z.shape), rstd


def affine(xhat: jax.Array, gain: jax.Array, bias: jax.Array | None, dtype: Any) -> jax.Array:
  """``xhat * gain + bias`` in ``dtype`` (``gain``, ``bias`` ``(F,)``)."""
  return base.add_bias(xhat.astype(dtype) * base.rowwise(gain, xhat), bias)


def layer_norm_vjp(dy: jax.Array, gain: jax.Array, xhat: jax.Array, rstd: jax.Array) -> jax.Array:
  """The cotangent of ``LN``'s input ``z`` for its output's ``dy`` ``(..., F)``.

  With ``(xhat, rstd)`` from `normalize` and ``dyhat = dy * gain``, per block:
  ``dz = rstd * (dyhat - mean(dyhat) - xhat * mean(dyhat * xhat))``, in ``rstd``'s dtype
  (the statistics'); the result has ``dy``'s dtype.
  """
  groups = rstd.shape[-2]
  blocks = dy.shape[:-1] + (groups, dy.shape[-1] // groups)
  g = (dy * base.rowwise(gain, dy)).astype(rstd.dtype).reshape(blocks)
  xh = xhat.reshape(blocks)
  mean_g = jnp.mean(g, axis=-1, keepdims=True)
  mean_gx = jnp.mean(g * xh, axis=-1, keepdims=True)
  return (rstd * (g - mean_g - xh * mean_gx)).reshape(dy.shape).astype(dy.dtype)


def gain_grad(d: jax.Array, xhat: jax.Array) -> jax.Array:
  """A gain's gradient ``sum(d * xhat)`` over all rows ``(T, N)``, in ``d``'s dtype."""
  return jnp.sum(kernel.rows(d.astype(xhat.dtype) * xhat), axis=0).astype(d.dtype)


def normalized_projections(params, h_in: jax.Array, x: jax.Array, groups: int, epsilon: float):
  """``(gi, gh, n_x, n_h)``: ``gi = LN(x @ w_ih; ln_ih)``, ``gh = LN(h_in @ w_hh; ln_hh)``.

  ``n_x``, ``n_h`` are the two projections' ``(xhat, rstd)`` (`normalize`), what a
  kernel's backward needs; ``gi`` and ``gh`` have ``x``'s dtype.
  """
  p, dt = params, x.dtype
  n_x = normalize(x @ p.w_ih, groups, epsilon)
  n_h = normalize(h_in @ p.w_hh, groups, epsilon)
  gi = affine(n_x[0], p.ln_ih_gain, p.ln_ih_bias, dt)
  gh = affine(n_h[0], p.ln_hh_gain, p.ln_hh_bias, dt)
  return gi, gh, n_x, n_h


def projection_grads(params, xs, h_prev, h_mask, d_gi, d_gh, d_hh, n_x, n_h):
  """The projections' gradients over all rows, and ``d_xs``.

  Args:
    params: the cell's params (``w_ih``, ``w_hh`` and the ``ln_ih``, ``ln_hh`` gains).
    xs: the inputs ``(T, N, I)``; ``h_prev`` the previous hidden states ``(T, N, H)``;
      ``h_mask`` recurrent dropout's mask ``(N, H)`` or None.
    d_gi, d_gh: the cotangents of `normalized_projections`' ``gi`` and ``gh``.
    d_hh: the cotangent of ``h_in @ w_hh`` (``layer_norm_vjp`` of ``d_gh``).
    n_x, n_h: the projections' saved ``(xhat, rstd)``.

  Returns:
    ``(grads, d_xs)``: a dict of the ``w_ih``, ``w_hh``, ``ln_ih_*`` and ``ln_hh_*``
    gradients (matmuls and sums over all ``T * N`` rows), and the inputs' cotangent.
  """
  (xhat_x, rstd_x), (xhat_h, _) = n_x, n_h
  h_in = h_prev if h_mask is None else h_prev * h_mask[None]
  d_ih = kernel.rows(layer_norm_vjp(d_gi, params.ln_ih_gain, xhat_x, rstd_x))
  grads = dict(
    w_ih=kernel.rows(xs).T @ d_ih,
    w_hh=kernel.rows(h_in).T @ kernel.rows(d_hh),
    ln_ih_gain=gain_grad(d_gi, xhat_x),
    ln_ih_bias=jnp.sum(kernel.rows(d_gi), axis=0),
    ln_hh_gain=gain_grad(d_gh, xhat_h),
    ln_hh_bias=jnp.sum(kernel.rows(d_gh), axis=0),
  )
  return grads, (d_ih @ params.w_ih.T).reshape(xs.shape)


def init_projections(key: jax.Array, input_size: int, hidden_size: int, blocks: int, dtype):
  """The projections' params as a dict: ``w_ih`` ``(input_size, G * H)``, ``w_hh``
  ``(H, G * H)`` from PyTorch's U(-1/sqrt(H), 1/sqrt(H)), gains 1 and biases 0 ``(G * H,)``.
  """
  base.check_input_size(input_size)
  k_ih, k_hh = jax.random.split(key)
  scale, width = base.hidden_scale(hidden_size), blocks * hidden_size
  ones, zeros = jnp.ones((width,), dtype), jnp.zeros((width,), dtype)
  return dict(
    w_ih=base.uniform(k_ih, (input_size, width), scale, dtype),
    w_hh=base.uniform(k_hh, (hidden_size, width), scale, dtype),
    ln_ih_gain=ones,
    ln_ih_bias=zeros,
    ln_hh_gain=ones,
    ln_hh_bias=zeros,
  )


def check_flags(epsilon: Any, **flags: Any) -> None:
  """A `ValueError` for a non-positive ``epsilon`` or any flag that is not a bool."""
  for name, value in flags.items():
    if not isinstance(value, bool):
      raise ValueError(f"{name}={value!r}: expected True or False.")
  if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or not epsilon > 0:
    raise ValueError(f"epsilon={epsilon!r}: expected a positive float (e.g. 1e-5).")


@functools.cache
def step_and_kernel(update, backward, per_gate: bool, epsilon: float):
  """``(update, sequence)`` for one ``(per_gate, epsilon)``, made once: the step and its kernel."""
  step_math = functools.partial(update, per_gate=per_gate, epsilon=epsilon)
  return step_math, kernel.sequence_kernel(step_math, backward)
