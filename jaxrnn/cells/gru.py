"""The GRU with PyTorch's equations (reset gate applied to the recurrent term and its bias)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn.cells import base, fused


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

  @property
  def input_size(self) -> int:
    return self.w_ih.shape[-2]

  @property
  def hidden_size(self) -> int:
    return self.w_hh.shape[-2]


def gru(
  hidden_size: int,
  *,
  use_bias: bool = True,
  recurrent_init: str = "uniform",
  dtype: Any = jnp.float32,
) -> base.Cell:
  """The GRU cell (Cho et al. 2014) exactly as ``torch.nn.GRUCell``::

      r  = sigmoid(x W_ir + h W_hr + b_r)
      z  = sigmoid(x W_iz + h W_hz + b_z)
      n  = tanh(x W_in + b_in + r * (h W_hn + b_hn))
      h' = (1 - z) * n + z * h

  Args:
    hidden_size: H.
    use_bias: whether ``b`` and ``b_hn`` exist; PyTorch's ``bias=False``.
    recurrent_init: ``"uniform"`` (PyTorch's), ``"orthogonal"`` or ``"identity"``
      (per gate; the non-uniform ones start the biases at zero).
    dtype: dtype of the parameters made by ``init``.

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
  base.check_positive("hidden_size", hidden_size)
  base.check_recurrent_init(recurrent_init)
  scale = base.hidden_scale(hidden_size)
  H = hidden_size

  def init(key, input_size):
    base.check_input_size(input_size)
    k_ih, k_hh, k_b, k_bhn = jax.random.split(key, 4)
    w_ih = base.uniform(k_ih, (input_size, 3 * H), scale, dtype)
    w_hh = base.recurrent_matrix(k_hh, recurrent_init, H, H, 3, scale, dtype)
    b = b_hn = None
    if use_bias:
      if recurrent_init == "uniform":
        b = base.uniform(k_b, (3 * H,), scale, dtype)
        b_hn = base.uniform(k_bhn, (H,), scale, dtype)
      else:
        b, b_hn = jnp.zeros((3 * H,), dtype), jnp.zeros((H,), dtype)
    return GRUParams(w_ih, w_hh, b, b_hn)

  def initial_carry(params, batch_shape=()):
    shape = base.as_batch_shape(batch_shape) + (params.w_hh.shape[-2],)
    return base.HiddenCarry(jnp.zeros(shape, params.w_hh.dtype))

  def step(params, carry, x):
    base.check_step_input("gru", x, params.w_ih.shape[0], carry.h, params.w_hh.shape[0])
    h = carry.h
    gi = base.add_bias(x @ params.w_ih, params.b)
    gh = h @ params.w_hh
    i_r, i_z, i_n = jnp.split(gi, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(gh, 3, axis=-1)
    r = jax.nn.sigmoid(i_r + h_r)
    z = jax.nn.sigmoid(i_z + h_z)
    n = jnp.tanh(i_n + r * base.add_bias(h_n, params.b_hn))
    h = (1.0 - z) * n + z * h
    return base.HiddenCarry(h), h

  config = dict(hidden_size=hidden_size, use_bias=use_bias, recurrent_init=recurrent_init)
  config = tuple(sorted(config.items()))
  return base.Cell(init, initial_carry, step, "gru", config, fused.gru_sequence)
