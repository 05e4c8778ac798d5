"""The GRU with PyTorch's equations (reset gate applied to the recurrent term and its bias)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.cells import base, kernel, torch_layout
from jaxrnn.cells import builtin as factory
from jaxrnn.cells._backward import b_hn_grad, dense_grads, reverse_loop
from jaxrnn.cells._gates import gru_gates, projections
from jaxrnn.cells.base import HiddenCarry


class GRUParams(NamedTuple):
  """Parameters of `jaxrnn.gru`, gates in PyTorch's order ``[r, z, n]``.

  Attributes:
    w_ih: ``(input_size, 3H)``, PyTorch's ``weight_ih`` transposed.
    w_hh: ``(H, 3H)``, PyTorch's ``weight_hh`` transposed.
    b: ``(3H,)`` or None: ``b_ih + b_hh`` on the r and z slices, ``b_in`` on n.
    b_hn: ``(H,)`` or None: PyTorch's ``b_hn``, inside the reset product.
  """

  w_ih: jax.Array
  w_hh: jax.Array
  b: jax.Array | None = None
  b_hn: jax.Array | None = None

  gate_columns = (("w_ih", 3), ("w_hh", 3), ("b", 3), ("b_hn", 1))  # sharding's model axis

  input_size = base.INPUT_SIZE
  hidden_size = base.HIDDEN_ROWS


def update(params: GRUParams, carry: HiddenCarry, x: jax.Array, h_mask=None):
  """One GRU step, the cell's math in one place: ``(carry, y, [r, z, n, hn])``.

  ``h_mask`` (recurrent dropout) multiplies ``h`` in the recurrent product only, as
  Keras's ``recurrent_dropout``; the interpolation ``z * h`` reads ``h`` itself, in the
  carry's dtype.
  """
  gi, gh = projections(params, carry.h, x, h_mask)
  h, gates = gru_gates(gi, gh, carry.h, params.b_hn)
  return HiddenCarry(h), base.like(h, x), jnp.concatenate(gates, axis=-1)


def backward(params, xs, mask, resets, saved, cotangents, reverse, unroll, noise):
  """The VJP of `update` looped over time (see `jaxrnn.cells.kernel`): the step's local VJP
  run by the shared `jaxrnn.cells._backward.reverse_loop`, then the weight gradients."""
  prev, acts = saved
  w_hh_t = kernel.transposed(params.w_hh)

  def step_vjp(ct, local):
    hp, a = local
    r, z, n, hn = jnp.split(a, 4, axis=-1)
    dh = ct.h
    dn = dh * (1.0 - z) * (1.0 - n * n)
    dr = dn * hn * r * (1.0 - r)
    dzg = dh * (hp - n) * z * (1.0 - z)
    d_gi = jnp.concatenate([dr, dzg, dn], axis=-1)
    d_gh = jnp.concatenate([dr, dzg, dn * r], axis=-1)
    return d_gh @ w_hh_t, HiddenCarry(dh * z), (d_gi, d_gh)

  local = (prev.h, acts)
  ct0, (d_gi, d_gh), d_reset = reverse_loop(
    step_vjp, local, mask, resets, cotangents, noise, reverse, unroll
  )
  dense, d_xs = dense_grads(params, xs, prev.h, noise.h_mask, d_gi, d_gh)
  grads = type(params)(**dense, b_hn=b_hn_grad(params, d_gh))
  return grads, ct0, d_xs, d_reset


sequence = kernel.sequence_kernel(update, backward)


def gru(
  hidden_size: int,
  *,
  use_bias: bool = True,
  recurrent_init: str = "uniform",
  dtype: Any = jnp.float32,
  carry_dtype: Any = None,
  compute_dtype: Any = None,
) -> base.Cell:
  """The GRU cell (Cho et al. 2014) exactly as ``torch.nn.GRUCell``::

      r  = sigmoid(x W_ir + h W_hr + b_r)
      z  = sigmoid(x W_iz + h W_hz + b_z)
      n  = tanh(x W_in + b_in + r * (h W_hn + b_hn))
      h' = (1 - z) * n + z * h

  Args:
    hidden_size, recurrent_init: as every cell's (`jaxrnn.cells.factory`).
    use_bias: whether ``b`` and ``b_hn`` exist; PyTorch's ``bias=False``.
    dtype, carry_dtype, compute_dtype: the params', the carry's (None: float32 for
      bfloat16 or float16 params) and the step's dtypes (`jaxrnn.cells.factory`).

  Returns:
    A `Cell` with carry `HiddenCarry(h)`, ``h`` ``(*batch, H)``; the output is ``h``.

  Raises:
    ValueError: for a non-positive size or an unknown initialiser.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> cell = jaxrnn.gru(hidden_size=4)
    >>> params = cell.init(jax.random.key(0), input_size=3)
    >>> carry, y = cell.step(params, cell.initial_carry(params, (5,)), jnp.ones((5, 3)))
    >>> y.shape
    (5, 4)
  """
  config = factory.config(locals())  # first: exactly the factory's arguments
  H = hidden_size

  def init(key, input_size):
    k_ih, k_hh, k_b, k_bhn = jax.random.split(key, 4)
    w_ih, w_hh, b = factory.gate_weights(config, 3, (k_ih, k_hh, k_b), input_size)
    b_hn = factory.uniform_or_zeros(config, k_bhn, (H,)) if use_bias else None
    return GRUParams(w_ih, w_hh, b, b_hn)

  return factory.library_cell(
    KIND,
    init=init,
    update=update,
    sequence=sequence,
    masks_product=True,  # h also enters z * h
    config=config,  # every argument of the factory, as called
  )


# ------------------------------------------------------------------ PyTorch's layout


def _from_torch(sd: Any, suffix: str) -> GRUParams:
  """r and z biases add up; the n gate keeps ``b_in`` and ``b_hn`` apart."""
  w = torch_layout.weights(sd, suffix)
  if w.b_ih is None:
    return GRUParams(w.w_ih, w.w_hh, None, None)
  h = w.w_hh.shape[0]
  b = w.b_ih.copy()
  b[: 2 * h] += w.b_hh[: 2 * h]
  return GRUParams(w.w_ih, w.w_hh, jnp.asarray(b), jnp.asarray(w.b_hh[2 * h :]))


def _to_torch(p: GRUParams, suffix: str) -> dict[str, np.ndarray]:
  b_hh = None
  if p.b is not None:
    b = np.asarray(p.b)
    b_hh = np.concatenate([np.zeros_like(b[: 2 * len(p.b_hn)]), p.b_hn])
  return torch_layout.state(p.w_ih, p.w_hh, p.b, b_hh, suffix)


KIND = base.CellKind(
  "gru",
  gru,
  GRUParams,
  HiddenCarry,
  torch_layout.TorchLayout("GRU", lambda m: dict(use_bias=bool(m.bias)), _from_torch, _to_torch),
)
