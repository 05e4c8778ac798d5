"""The sLSTM of Beck et al. 2024 (xLSTM): exponential input gate, normalizer and stabilizer."""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn.cells import base, kernel
from jaxrnn.cells import builtin as factory
from jaxrnn.cells._backward import reverse_loop


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


class SLSTMSaved(NamedTuple):
  """What `update` saves for `backward` at each step, every leaf ``(*batch, H)``.

  Attributes:
    i, f: the stabilized gates ``exp(i~ - m')`` and ``exp(log sigmoid(f~) + m - m')``.
    z: ``tanh(z~)``.
    o: ``sigmoid(o~)``.
    to_i: the share of the stabilizer's cotangent that ``m' = max(i~, log f + m)`` sends to
      ``i~``: 1 where ``i~`` is the larger, 0 where smaller, 0.5 at a tie (what the VJP of
      `jax.numpy.maximum` gives, so that the kernel's gradients equal the step loop's).
    sig_neg_f: ``sigmoid(-f~)``, the slope of ``log sigmoid(f~)``.
  """

  i: jax.Array
  f: jax.Array
  z: jax.Array
  o: jax.Array
  to_i: jax.Array
  sig_neg_f: jax.Array


def update(params: SLSTMParams, carry: SLSTMCarry, x: jax.Array, h_mask=None):
  """One sLSTM step, the cell's math in one place: ``(carry, y, SLSTMSaved)``."""
  heads, d = params.w_hh.shape[0], params.w_hh.shape[1]
  batch = carry.h.shape[:-1]
  h_in = base.like(carry.h, x)  # the state enters the matmul in the compute dtype
  h_in = h_in if h_mask is None else h_in * h_mask  # recurrent dropout's mask
  h_heads = h_in.reshape(batch + (heads, d))
  rec = jnp.einsum("...kd,kdgj->...gkj", h_heads, params.w_hh).reshape(batch + (4 * heads * d,))
  raw = base.add_bias(x @ params.w_ih + rec, params.b)
  i_raw, f_raw, z_raw, o_raw = jnp.split(raw, 4, axis=-1)
  # The stabilizer m and the sums c, n accumulate in the carry's dtype (z, o: the compute one).
  i_raw, f_raw = base.like(i_raw, carry.m), base.like(f_raw, carry.m)
  # A fresh unit (n = 0) has no memory: log f + m is -inf there, so m' = i_raw, i = 1,
  # f = 0 (xlstm's first step), with no inf or nan in values or gradients.
  log_f = jnp.where(carry.n == 0, -jnp.inf, jax.nn.log_sigmoid(f_raw) + carry.m)
  m = jnp.maximum(i_raw, log_f)
  i = jnp.exp(i_raw - m)
  f = jnp.exp(log_f - m)
  z = jnp.tanh(z_raw)
  o = jax.nn.sigmoid(o_raw)
  c = f * carry.c + i * base.like(z, carry.c)
  n = f * carry.n + i
  h = o * base.like(c / n, o)
  to_i = jnp.where(i_raw == m, jnp.where(log_f == m, 0.5, 1.0), 0.0).astype(m.dtype)
  saved = SLSTMSaved(i, f, z, o, to_i, jax.nn.sigmoid(-f_raw))
  return SLSTMCarry(h, c, n, m), h, saved


def _step_vjp(ct: SLSTMCarry, prev: SLSTMCarry, s: SLSTMSaved):
  """The VJP of `update`'s gate algebra at one step: ``(dz, d_prev)``.

  ``ct`` is the cotangent of the step's new carry (its output's already added to ``ct.h``),
  ``prev`` the incoming carry; ``dz`` ``(N, 4H)`` is that of the pre-activations ``z``,
  ``d_prev`` that of ``prev`` except for ``h`` (which `backward` gets from ``dz``).
  """
  c = s.f * prev.c + s.i * s.z
  n = s.f * prev.n + s.i
  q = c / n
  a = ct.h * s.o / n
  dc = ct.c + a  # through h = o * c / n
  dn = ct.n - a * q
  gi = (dc * s.z + dn) * s.i  # d i~ through i = exp(i~ - m'), and -d m'
  gf = (dc * prev.c + dn * prev.n) * s.f  # d log f through f = exp(log f - m'), and -d m'
  dm = ct.m - gi - gf
  fresh = prev.n == 0
  d_log_f = jnp.where(fresh, 0.0, gf + (1.0 - s.to_i) * dm)
  d_i = gi + s.to_i * dm
  d_z = dc * s.i * (1.0 - s.z * s.z)
  d_o = ct.h * q * s.o * (1.0 - s.o)
  dz = jnp.concatenate([d_i, d_log_f * s.sig_neg_f, d_z, d_o], axis=-1)
  return dz, SLSTMCarry(None, dc * s.f, dn * s.f, d_log_f)


def _recurrent_transpose(dz: jax.Array, w_hh: jax.Array) -> jax.Array:
  """``dh`` ``(N, H)`` from ``dz`` ``(N, 4H)``: the block-diagonal product's transpose.

  A per-head contraction with ``w_hh`` as it is; measured against ``dz`` times the dense
  ``(4H, H)`` block-diagonal matrix laid out once (as `jaxrnn.cells.kernel.transposed`):
  0.88x its forward+backward time at B=32, T=128, H=256, 4 heads (median of 15
  interleaved rounds, 0.68-1.30), with a quarter of the flops.
  """
  n, (heads, d) = dz.shape[0], w_hh.shape[:2]
  return jnp.einsum("ngkj,kdgj->nkd", dz.reshape(n, 4, heads, d), w_hh).reshape(n, heads * d)


def _recurrent_grad(h_rows: jax.Array, dz_rows: jax.Array, heads: int) -> jax.Array:
  """``d w_hh`` ``(K, D, 4, D)`` from ``h_rows`` ``(R, H)`` and ``dz_rows`` ``(R, 4H)``."""
  r, hidden = h_rows.shape
  d = hidden // heads
  h = h_rows.reshape(r, heads, d)
  dz = dz_rows.reshape(r, 4, heads, d)
  return jnp.einsum("rkd,rgkj->kdgj", h, dz)


def backward(params, xs, mask, resets, saved, cotangents, reverse, unroll, noise):
  """The VJP of `update` looped over time (see `jaxrnn.cells.kernel`): `_step_vjp` and the
  block-diagonal product's transpose run by the shared `jaxrnn.cells._backward.reverse_loop`,
  then the weight gradients."""
  prev, gates = saved
  h_mask = noise.h_mask

  def step_vjp(ct, local):
    dz, d_prev = _step_vjp(ct, *local)
    return _recurrent_transpose(dz, params.w_hh), d_prev, dz

  local = (prev, gates)
  ct0, dz, d_reset = reverse_loop(step_vjp, local, mask, resets, cotangents, noise, reverse, unroll)
  dz_rows = kernel.rows(dz)
  h_in = prev.h if h_mask is None else prev.h * h_mask[None]
  grads = type(params)(
    w_ih=kernel.rows(xs).T @ dz_rows,
    w_hh=_recurrent_grad(kernel.rows(h_in), dz_rows, params.w_hh.shape[0]),
    b=None if params.b is None else jnp.sum(dz_rows, axis=0),
  )
  d_xs = (dz_rows @ params.w_ih.T).reshape(xs.shape)
  return grads, ct0, d_xs, d_reset


sequence = kernel.sequence_kernel(update, backward)


def slstm(
  hidden_size: int,
  *,
  num_heads: int,
  forget_bias: float = 1.0,
  use_bias: bool = True,
  dtype: Any = jnp.float32,
  carry_dtype: Any = None,
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

  `jaxrnn.scan` runs the cell through a whole-sequence kernel
  (`jaxrnn.cells.kernel.sequence_kernel`): its forward loop is the step's own `update`;
  its VJP (`backward`) is hand-written and keeps only the sequential part in the reverse
  loop (the block-diagonal product's transpose, per head, and the gate, normalizer and
  stabilizer algebra, the stabilizer's cotangent split at a tie as `jax.numpy.maximum`'s
  VJP splits it), while the input and weight gradients are one matmul each over all
  ``T * batch`` rows (per head for ``w_hh``). It takes recurrent dropout and zoneout
  (`jaxrnn.cells.kernel.Noise`), lengths and resets, and gives the step loop's values and
  gradients. Measured at B=32, T=128, I=128, H=256, 4 heads on XLA:CPU (median of 12
  interleaved rounds' ratios, the per-round range in brackets, a shared 2-core machine):
  forward+backward 0.71x (0.42-1.60) the time of autodiff of the step loop
  (``impl="step"``) and 0.90x (0.57-1.50) that of `jaxrnn.lstm`'s kernel; forward 0.66x
  (0.52-1.86) the LSTM's (the block-diagonal product has a quarter of the dense one's flops).

  Args:
    hidden_size: H, divisible by ``num_heads``.
    num_heads: the number of heads of the block-diagonal recurrent weights.
    forget_bias: added to ``b[H:2H]`` (the forget slice) by ``init`` only.
    use_bias: whether ``b`` exists.
    dtype, carry_dtype, compute_dtype: the params', the carry's (None: float32 for
      bfloat16 or float16 params) and the step's dtypes (`jaxrnn.cells.factory`).

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
  base.check_heads(hidden_size, num_heads)
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

  return factory.library_cell(KIND, init=init, update=update, sequence=sequence, config=config)


KIND = base.CellKind(
  "slstm",
  slstm,
  SLSTMParams,
  SLSTMCarry,
  None,
  base.Example((("hidden_size", 4), ("num_heads", 2))),
)
