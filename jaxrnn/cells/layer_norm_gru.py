"""The GRU with layer-normalized input and recurrent projections (Ba, Kiros and Hinton 2016)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn.cells import base
from jaxrnn.cells import builtin as factory
from jaxrnn.cells._backward import hidden_vjp, reverse_loop
from jaxrnn.cells._gates import gru_gates
from jaxrnn.cells._layer_norm import (
  affine,
  check_flags,
  init_projections,
  layer_norm_vjp,
  normalized_projections,
  projection_grads,
  step_and_kernel,
)
from jaxrnn.cells.base import HiddenCarry


class LayerNormGRUParams(NamedTuple):
  """Parameters of `jaxrnn.layer_norm_gru`, gates in PyTorch's order ``[r, z, n]``.

  The layer norms' biases are the GRU's biases: ``ln_ih_bias`` is PyTorch's
  ``b_ih`` and ``ln_hh_bias`` its ``b_hh`` (its n slice, like ``b_hn``, inside
  the reset product), so there is no separate ``b``.

  No ``gate_columns`` are declared, so `jaxrnn.sharding` keeps these params
  replicated: the normalization statistics span all 3H columns (or each gate's
  H columns with ``per_gate``, which a contiguous split of the columns over a
  model axis need not align with), so a split would need a cross-device
  reduction inside every time step.

  Attributes:
    w_ih: ``(input_size, 3H)``, input projection (``x @ w_ih``).
    w_hh: ``(H, 3H)``, recurrent projection (``h @ w_hh``).
    ln_ih_gain, ln_ih_bias: ``(3H,)``, the input projection's layer norm (init 1, 0).
    ln_hh_gain, ln_hh_bias: ``(3H,)``, the recurrent projection's layer norm (init 1, 0).
  """

  w_ih: jax.Array
  w_hh: jax.Array
  ln_ih_gain: jax.Array
  ln_ih_bias: jax.Array
  ln_hh_gain: jax.Array
  ln_hh_bias: jax.Array

  input_size = base.INPUT_SIZE
  hidden_size = base.HIDDEN_ROWS


def update(
  params: LayerNormGRUParams,
  carry: HiddenCarry,
  x: jax.Array,
  h_mask: jax.Array | None = None,
  *,
  per_gate: bool = False,
  epsilon: float = 1e-5,
):
  """One layer-normalized GRU step: ``(carry, y, saved)``.

  ``saved`` is ``([r, z, n], (xhat, rstd) of the input projection, of the recurrent
  projection)`` (`normalize`), what `backward` needs. ``h_mask`` (recurrent dropout)
  multiplies ``h`` in the recurrent product only.
  """
  h_in = base.like(carry.h, x)  # the state enters the matmul in the compute dtype
  h_in = h_in if h_mask is None else h_in * h_mask
  gi, gh, n_x, n_h = normalized_projections(params, h_in, x, 3 if per_gate else 1, epsilon)
  h, (r, z, n, _) = gru_gates(gi, gh, carry.h)
  return HiddenCarry(h), base.like(h, x), (jnp.concatenate([r, z, n], axis=-1), n_x, n_h)


def backward(params, xs, mask, resets, saved, cotangents, reverse, unroll, noise):
  """The VJP of `update` looped over time (see `jaxrnn.cells.kernel`).

  The gate algebra's coefficients depend on the forward values only (`_slopes`, for all
  ``T * N`` rows before the loop); the step's local VJP (`jaxrnn.cells._backward.hidden_vjp`,
  run by the shared `jaxrnn.cells._backward.reverse_loop`) holds the recurrent norm's VJP
  (`layer_norm_vjp`) and ``d_hh @ w_hh.T`` and stacks ``dh``. After the loop, over all rows:
  the gate gradients rebuilt from ``dh``, both norms' VJPs, the weight and input gradients
  as matmuls, every gain and bias gradient as one sum.
  """
  prev, (acts, n_x, n_h) = saved
  xhat_h, rstd_h = n_h
  p, h_mask = params, noise.h_mask
  d_in, d_rec, z = _slopes(p, prev.h, acts, xhat_h)
  step_vjp = hidden_vjp(p.w_hh, lambda d, xh, rh: layer_norm_vjp(d, p.ln_hh_gain, xh, rh))
  local = (d_rec, z, xhat_h, rstd_h)
  ct0, dh, d_reset = reverse_loop(step_vjp, local, mask, resets, cotangents, noise, reverse, unroll)
  dh3 = jnp.concatenate([dh, dh, dh], axis=-1)
  d_gi, d_gh = d_in * dh3, d_rec * dh3
  d_hh = layer_norm_vjp(d_gh, p.ln_hh_gain, xhat_h, rstd_h)
  dense, d_xs = projection_grads(p, xs, prev.h, h_mask, d_gi, d_gh, d_hh, n_x, n_h)
  grads = type(p)(**dense)
  return grads, ct0, d_xs, d_reset


def _slopes(params, h_prev: jax.Array, acts: jax.Array, xhat_h: jax.Array):
  """A step's local derivatives by ``dh`` from its forward values: ``(d_in, d_rec, z)``.

  ``d_in``, ``d_rec`` ``(T, N, 3H)``: the normalized input and recurrent projections'
  ``[r, z, n]`` columns (``d_rec``'s n slice times ``r``, the gate on the recurrent n
  slice); ``z`` ``(T, N, H)`` is ``dh_{t-1} / dh`` through ``z * h``.
  """
  r, z, n = jnp.split(acts, 3, axis=-1)
  gh = affine(xhat_h, params.ln_hh_gain, params.ln_hh_bias, acts.dtype)
  a_n = (1.0 - z) * (1.0 - n * n)
  a_r = a_n * jnp.split(gh, 3, axis=-1)[2] * r * (1.0 - r)
  a_z = (h_prev - n) * z * (1.0 - z)
  return jnp.concatenate([a_r, a_z, a_n], -1), jnp.concatenate([a_r, a_z, a_n * r], -1), z


def layer_norm_gru(
  hidden_size: int,
  *,
  per_gate: bool = False,
  epsilon: float = 1e-5,
  dtype: Any = jnp.float32,
  carry_dtype: Any = None,
  compute_dtype: Any = None,
) -> base.Cell:
  """The GRU of ``torch.nn.GRUCell`` with its two projections layer-normalized.

  With ``LN(a; gain, bias) = (a - mean(a)) / sqrt(var(a) + epsilon) * gain + bias``
  (mean and biased variance over all 3H columns; over each gate's H columns
  with ``per_gate``), ``gi = LN(x @ w_ih; ln_ih)`` and ``gh = LN(h @ w_hh; ln_hh)``,
  each split ``[r, z, n]``::

      r  = sigmoid(gi_r + gh_r)
      z  = sigmoid(gi_z + gh_z)
      n  = tanh(gi_n + r * gh_n)
      h' = (1 - z) * n + z * h

  These are PyTorch's GRU equations with ``x W_ih + b_ih`` replaced by ``gi`` and
  ``h W_hh + b_hh`` by ``gh``. The recurrent normalization is taken over the
  whole recurrent projection *before* the reset gate multiplies its n slice:
  ``r`` scales the normalized (and shifted, ``ln_hh_bias[2H:]`` playing
  PyTorch's ``b_hn``) n slice, and the statistics do not depend on ``r``. The
  layer norms' biases are the only biases. Weights start at PyTorch's
  U(-1/sqrt(H), 1/sqrt(H)), gains at 1, biases at 0.

  The params declare no ``gate_columns``: `jaxrnn.sharding` keeps them
  replicated (see `LayerNormGRUParams`). `jaxrnn.scan` runs a whole-sequence kernel with
  a hand-written VJP (`backward`, `jaxrnn.cells.kernel`), taking lengths, resets,
  recurrent dropout and zoneout: forward+backward at B=32, T=128, I=128, H=256 on XLA:CPU
  measured 0.83-0.90x the time of autodiff through the step loop (``impl="step"``; 0.77x
  and 0.94x in two runs with ``per_gate``) and 1.36-1.49x `jaxrnn.gru`'s kernel (medians
  of 11-15 interleaved rounds, two to five runs, on a shared 2-core machine): the two
  norms' saved statistics and their VJPs are what it adds to the GRU's work.

  Args:
    hidden_size: H.
    per_gate: normalize each gate's H columns separately (TensorFlow's variant).
    epsilon: added to the variance in every normalization.
    dtype, carry_dtype, compute_dtype: the params', the carry's (None: float32 for
      bfloat16 or float16 params) and the step's dtypes (`jaxrnn.cells.factory`).
      The normalization statistics are taken in at least float32.

  Returns:
    A `Cell` with carry `HiddenCarry(h)`, ``h`` ``(*batch, H)``; the output is ``h``.

  Raises:
    ValueError: for a non-positive size or epsilon, or a non-bool ``per_gate``.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> cell = jaxrnn.layer_norm_gru(hidden_size=4, per_gate=True)
    >>> params = cell.init(jax.random.key(0), input_size=3)
    >>> carry, y = cell.step(params, cell.initial_carry(params, (5,)), jnp.ones((5, 3)))
    >>> y.shape, params.ln_hh_gain.shape
    ((5, 4), (12,))
  """
  config = factory.config(locals())  # first: exactly the factory's arguments
  check_flags(epsilon, per_gate=per_gate)
  H = hidden_size

  def init(key, input_size):
    return LayerNormGRUParams(**init_projections(key, input_size, H, 3, dtype))

  step_math, sequence = step_and_kernel(update, backward, per_gate, float(epsilon))
  return factory.library_cell(
    KIND,
    init=init,
    update=step_math,
    sequence=sequence,
    masks_product=True,  # h also enters z * h
    config=config,  # every argument of the factory, as called
  )


KIND = base.CellKind("layer_norm_gru", layer_norm_gru, LayerNormGRUParams, HiddenCarry, None)
