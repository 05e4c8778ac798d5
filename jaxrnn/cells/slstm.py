"""The sLSTM of Beck et al. 2024 (xLSTM): exponential input gate, normalizer and stabilizer."""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn.cells import base, factory


class SLSTMCarry(NamedTuple):
  """Carry of the sLSTM, every leaf ``(*batch, H)``.

  Attributes:
    h: the hidden state (the output).
    c: the cell state, scaled by ``exp(-m)``.
    n: the normalizer state, scaled by ``exp(-m)``; ``n = 0`` marks a fresh unit.
    m: the stabilizer state (a running log-scale of ``c`` and ``n``).
  """

  h: jax.Array
  c: jax.Array
  n: jax.Array
  m: jax.Array


class SLSTMParams(NamedTuple):
  """Parameters of `jaxrnn.slstm`, gates in xlstm's order ``[i, f, z, o]``.

  ``H = num_heads * D``; gate ``g``'s columns are ``[g*H:(g+1)*H]``, within which
  head ``k`` holds ``[k*D:(k+1)*D]`` (xlstm's ``SBGNH`` internal layout).

  Attributes:
    w_ih: ``(input_size, 4H)``, the input projections (``x @ w_ih``).
    w_hh: ``(num_heads, D, 4, D)``, block-diagonal recurrent weights: ``w_hh[k, d, g, j]``
      takes unit ``d`` of head ``k``'s previous ``h`` to unit ``j`` of head ``k``'s gate
      ``g``. This is xlstm's external ``recurrent_kernel`` layout.
    b: ``(4H,)`` or None, xlstm's internal ``_bias_`` (gate-major, then head, then unit).
  """

  w_ih: jax.Array
  w_hh: jax.Array
  b: jax.Array | None = None

  # None: the model axis would split heads (w_hh's leading axis), which the last-axis
  # gate-column rule of `jaxrnn.sharding` cannot express, so the params stay replicated.
  gate_columns = ()

  input_size = base.INPUT_SIZE

  @property
  def num_heads(self) -> int:
    return self.w_hh.shape[-4]

  @property
  def hidden_size(self) -> int:
    return self.w_hh.shape[-4] * self.w_hh.shape[-3]


def update(params: SLSTMParams, carry: SLSTMCarry, x: jax.Array):
  """One sLSTM step, the cell's math in one place: ``(carry, y, None)``."""
  heads, d = params.w_hh.shape[0], params.w_hh.shape[1]
  batch = carry.h.shape[:-1]
  h_heads = carry.h.reshape(batch + (heads, d))
  rec = jnp.einsum("...kd,kdgj->...gkj", h_heads, params.w_hh).reshape(batch + (4 * heads * d,))
  raw = base.add_bias(x @ params.w_ih + rec, params.b)
  i_raw, f_raw, z_raw, o_raw = jnp.split(raw, 4, axis=-1)
  # A fresh unit (n = 0) has no memory: log f + m is -inf there, so m' = i_raw, i = 1,
  # f = 0 (xlstm's first step), with no inf or nan in values or gradients.
  log_f = jnp.where(carry.n == 0, -jnp.inf, jax.nn.log_sigmoid(f_raw) + carry.m)
  m = jnp.maximum(i_raw, log_f)
  i = jnp.exp(i_raw - m)
  f = jnp.exp(log_f - m)
  c = f * carry.c + i * jnp.tanh(z_raw)
  n = f * carry.n + i
  h = jax.nn.sigmoid(o_raw) * (c / n)
  return SLSTMCarry(h, c, n, m), h, None


def slstm(
  hidden_size: int,
  *,
  num_heads: int,
  forget_bias: float = 1.0,
  use_bias: bool = True,
  dtype: Any = jnp.float32,
  compute_dtype: Any = None,
) -> base.Cell:
  """The sLSTM cell (Beck et al. 2024, "xLSTM", section 2.2), as xlstm's sLSTM cell.

  With ``z = x @ w_ih + R(h) + b`` split into ``[i~, f~, z~, o~]``, where ``R(h)`` is
  the block-diagonal recurrent product (head ``k``'s gates see only head ``k``'s
  ``D = H / num_heads`` units of ``h``)::

      m' = max(i~, log sigmoid(f~) + m)
      i  = exp(i~ - m'),   f = exp(log sigmoid(f~) + m - m')
      (where n = 0, a fresh unit: m' = i~, i = 1, f = 0)
      c' = f * c + i * tanh(z~)
      n' = f * n + i
      h' = sigmoid(o~) * c' / n'

  The forget gate is the sigmoid one (``log f = log sigmoid(f~)``), the input gate
  exponential; ``m`` keeps ``i, f <= 1``, and ``h`` does not depend on it. This is
  xlstm's vanilla ``slstm`` pointwise function (which precedes it by the layer's
  input projections, here ``w_ih``), with one difference: xlstm picks
  ``m' = i~`` on the first step for the whole batch (when every ``n`` is 0), this cell
  per unit (wherever ``n`` is 0: the zero initial carry, or a reset), and drops the
  memory there (``f = 0``; xlstm clamps ``f`` to 1, which multiplies ``c = n = 0``).
  Both give the same ``h``. Gradients flow through ``m`` (xlstm does not stop them
  either).

  Args:
    hidden_size: H, divisible by ``num_heads``.
    num_heads: the number of heads of the block-diagonal recurrent weights.
    forget_bias: added to ``b[H:2H]`` (the forget slice) by ``init`` only.
    use_bias: whether ``b`` exists.
    dtype, compute_dtype: the params' and the step's dtypes (`jaxrnn.cells.factory`).

  Returns:
    A `Cell` with carry `SLSTMCarry(h, c, n, m)`, each ``(*batch, H)``, zeros
    initially; the output is ``h``. ``init`` draws every weight and bias from
    U(-1/sqrt(H), 1/sqrt(H)) (xlstm's ``"standard"`` inits), plus ``forget_bias``.

  Raises:
    ValueError: for a non-positive size or head count, ``hidden_size`` not divisible
      by ``num_heads``, or a non-real ``forget_bias``.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> cell = jaxrnn.slstm(8, num_heads=2)
    >>> params = cell.init(jax.random.key(0), input_size=3)
    >>> params.w_ih.shape, params.w_hh.shape, params.b.shape
    ((3, 32), (2, 4, 4, 4), (32,))
    >>> carry = cell.initial_carry(params, (5,))
    >>> carry, y = cell.step(params, carry, jnp.ones((5, 3)))
    >>> y.shape, carry.n.shape
    ((5, 8), (5, 8))
  """
  config = factory.config(locals())  # first: exactly the factory's arguments
  base.check_positive("num_heads", num_heads)
  if hidden_size % num_heads:
    raise ValueError(
      f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}; expected a "
      "multiple of num_heads."
    )
  if isinstance(forget_bias, bool) or not isinstance(forget_bias, numbers.Real):
    raise ValueError(f"forget_bias={forget_bias!r}: expected a real number.")
  scale = base.hidden_scale(hidden_size)
  H, K, D = hidden_size, num_heads, hidden_size // num_heads

  def init(key, input_size):
    base.check_input_size(input_size)
    k_ih, k_hh, k_b = jax.random.split(key, 3)
    w_ih = base.uniform(k_ih, (input_size, 4 * H), scale, dtype)
    w_hh = base.uniform(k_hh, (K, D, 4, D), scale, dtype)
    b = None
    if use_bias:
      b = base.uniform(k_b, (4 * H,), scale, dtype).at[H : 2 * H].add(forget_bias)
    return SLSTMParams(w_ih, w_hh, b)

  return factory.library_cell(KIND, init=init, update=update, config=config)


KIND = base.CellKind("slstm", slstm, SLSTMParams, SLSTMCarry, None)
