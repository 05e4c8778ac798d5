"""The minimal gated unit (Zhou et al. 2016) in flax's form, equal to ``flax.linen.MGUCell``."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn.cells import base, factory
from jaxrnn.cells.base import HiddenCarry


class MGUParams(NamedTuple):
  """Parameters of `jaxrnn.mgu`: two gate blocks ``[f, n]``.

  flax's ``MGUCell`` params, concatenated (``x @ w_ih`` layout, as flax's ``Dense``)::

      w_ih = [if.kernel | in.kernel]    b = [if.bias | in.bias]
      w_hh = [hf.kernel | hn.kernel]    b_hn = hn.bias

  Attributes:
    w_ih: ``(input_size, 2H)``, columns ``[f, n]``.
    w_hh: ``(H, 2H)``, columns ``[f, n]``.
    b: ``(2H,)`` or None: the forget gate's bias and the candidate's input bias.
    b_hn: ``(H,)`` or None: the candidate's recurrent bias, inside the gated product.
  """

  w_ih: jax.Array
  w_hh: jax.Array
  b: jax.Array | None = None
  b_hn: jax.Array | None = None

  gate_columns = (("w_ih", 2), ("w_hh", 2), ("b", 2), ("b_hn", 1))  # sharding's model axis

  input_size = base.INPUT_SIZE
  hidden_size = base.HIDDEN_ROWS


def update(params: MGUParams, carry: HiddenCarry, x: jax.Array, h_mask=None):
  """One MGU step, the cell's math in one place: ``(carry, y, [f, n, hn])``.

  ``h_mask`` (recurrent dropout) multiplies ``h`` in the recurrent product only.
  """
  gi = base.add_bias(x @ params.w_ih, params.b)
  gh = (carry.h if h_mask is None else carry.h * h_mask) @ params.w_hh
  i_f, i_n = jnp.split(gi, 2, axis=-1)
  h_f, h_n = jnp.split(gh, 2, axis=-1)
  f = jax.nn.sigmoid(i_f + h_f)
  hn = base.add_bias(h_n, params.b_hn)
  n = jnp.tanh(i_n + f * hn)
  h = (1.0 - f) * n + f * carry.h
  return HiddenCarry(h), h, jnp.concatenate([f, n, hn], axis=-1)


def mgu(
  hidden_size: int,
  *,
  forget_bias: float = 1.0,
  use_bias: bool = True,
  dtype: Any = jnp.float32,
  compute_dtype: Any = None,
) -> base.Cell:
  """The minimal gated unit (Zhou et al. 2016) exactly as ``flax.linen.MGUCell``::

      f  = sigmoid(x W_if + b_if + h W_hf)
      n  = tanh(x W_in + b_in + f * (h W_hn + b_hn))
      h' = (1 - f) * n + f * h

  How this differs from the paper's equations, ``f = sigmoid(W_f [h, x] + b_f)``,
  ``n = tanh(W_h [f * h, x] + b_h)``, ``h' = (1 - f) * h + f * n``: (1) the gate
  multiplies the recurrent product ``h W_hn + b_hn`` rather than ``h`` before the
  product (as PyTorch's GRU applies its reset gate), so ``b_hn`` is a separate
  bias inside the gate; (2) the roles of ``f`` and ``1 - f`` in the interpolation
  are swapped: here ``f`` is the fraction of ``h`` kept (the GRU's update gate),
  so a positive forget bias makes the unit remember. Given the same weights this
  cell and flax's agree to rounding (a test checks it).

  Initialisation, flax's defaults: ``w_ih`` LeCun normal (truncated, fan-in),
  each ``(H, H)`` block of ``w_hh`` orthogonal, ``b`` zeros plus ``forget_bias``
  on the forget slice (flax's ``forget_bias_init`` is ones), ``b_hn`` zeros.
  There is no hand-written whole-sequence kernel: `jaxrnn.scan` loops over the step.

  Args:
    hidden_size: H.
    forget_bias: added to ``b[0:H]`` at init; 1.0 is flax's ``ones_init``.
    use_bias: whether ``b`` and ``b_hn`` exist (flax always has them).
    dtype, compute_dtype: the params' and the step's dtypes (`jaxrnn.cells.factory`).

  Returns:
    A `Cell` with carry `HiddenCarry(h)`, ``h`` ``(*batch, H)``; the output is ``h``.

  Raises:
    ValueError: for a non-positive size.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> cell = jaxrnn.mgu(hidden_size=4)
    >>> params = cell.init(jax.random.key(0), input_size=3)
    >>> params.w_ih.shape, params.w_hh.shape, params.b_hn.shape
    ((3, 8), (4, 8), (4,))
    >>> carry, y = cell.step(params, cell.initial_carry(params, (5,)), jnp.ones((5, 3)))
    >>> y.shape
    (5, 4)
  """
  config = factory.config(locals())  # first: exactly the factory's arguments
  H = hidden_size

  def init(key, input_size):
    base.check_input_size(input_size)
    k_ih, k_hh = jax.random.split(key)
    w_ih = jax.nn.initializers.lecun_normal()(k_ih, (input_size, 2 * H), dtype)
    w_hh = base.recurrent_matrix(k_hh, "orthogonal", H, H, 2, 1.0, dtype)
    b = b_hn = None
    if use_bias:
      b = jnp.zeros((2 * H,), dtype).at[:H].add(forget_bias)
      b_hn = jnp.zeros((H,), dtype)
    return MGUParams(w_ih, w_hh, b, b_hn)

  # masks_product: recurrent dropout masks h in the product only; h also enters f * h
  return factory.library_cell(KIND, init=init, update=update, masks_product=True, config=config)


KIND = base.CellKind("mgu", mgu, MGUParams, HiddenCarry, None)
