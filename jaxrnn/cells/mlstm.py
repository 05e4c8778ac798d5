"""The mLSTM of Beck et al. 2024 (xLSTM, section 2.3): a matrix memory with exponential gating."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn.cells import _chunkwise, base
from jaxrnn.cells import builtin as factory
from jaxrnn.cells._chunkwise import Chunk, Memory

EPS = 1e-6
"""Added to the denominator ``max(|n^T q|, exp(-m))``, as xlstm's backends add it."""
NORM_EPS = 1e-5
"""The output norm's epsilon (xlstm's ``MultiHeadLayerNorm``)."""
CHUNK_SIZE = 32
"""The default ``chunk_size``, measured (see `mlstm`): forward+backward at B=8, T=1024,
H=256, 4 heads on XLA:CPU (2 shared cores, load about 7), median of 5 interleaved rounds:
chunks of 16 / 32 / 64 / 128 / 256 took 513 / 494 / 528 / 623 / 855 ms (forward 130 / 157 /
153 / 195 / 259 ms); 16 to 64 are within the rounds' noise, longer chunks are slower."""


class MLSTMParams(NamedTuple):
  """Parameters of `jaxrnn.mlstm`; ``H = K * D`` with ``K`` heads of ``D`` units.

  Within each ``H``-wide block, head ``k`` holds the columns ``[k*D:(k+1)*D]`` (xlstm's
  ``view(B, S, NH, DH)``).

  Attributes:
    w_qkv: ``(input_size, 3H)``, the query, key and value projections ``[q | k | v]``
      (``x @ w_qkv``).
    w_if: ``(input_size, 2K)``, the input and forget gates' projections ``[i | f]``, one
      column per head (xlstm's ``igate.weight.T``, ``fgate.weight.T``).
    b_if: ``(2K,)``, their biases (xlstm's ``igate.bias``, ``fgate.bias``).
    norm: ``(H,)``, the scale of the per-head output norm (xlstm's ``outnorm.weight + 1``:
      its ``weight_proxy``).
    b_qkv: ``(3H,)`` or None, the projections' biases.
  """

  w_qkv: jax.Array
  w_if: jax.Array
  b_if: jax.Array
  norm: jax.Array
  b_qkv: jax.Array | None = None

  # None: the model axis would split heads across the q/k/v blocks, and the gate columns
  # are per head, which the last-axis gate-column rule of `jaxrnn.sharding` cannot express.
  gate_columns = ()

  @property
  def input_size(self) -> int:
    return self.w_qkv.shape[-2]

  @property
  def hidden_size(self) -> int:
    return self.norm.shape[-1]

  @property
  def num_heads(self) -> int:
    return self.w_if.shape[-1] // 2


class MLSTMCarry(NamedTuple):
  """Carry of the mLSTM, the memory of every head flattened head-major.

  Attributes:
    C: ``(*batch, K * D * D)``, the matrix memories ``(K, D, D)``, key index first
      (xlstm's ``c_state`` ``(B, NH, DH, DH)``), scaled by ``exp(-m)``.
    n: ``(*batch, K * D)``, the normalisers ``(K, D)``, scaled by ``exp(-m)``.
    m: ``(*batch, K)``, the stabilisers (a running log-scale of ``C`` and ``n``).
  """

  C: jax.Array
  n: jax.Array
  m: jax.Array


def project(params: MLSTMParams, x: jax.Array):
  """``(q, k / sqrt(D), v)`` each ``(..., K, D)`` and ``(i~, f~)`` each ``(..., K)``."""
  K = params.num_heads
  D = params.hidden_size // K
  heads = lambda a: a.reshape(a.shape[:-1] + (K, D))  # noqa: E731
  q, k, v = jnp.split(base.add_bias(x @ params.w_qkv, params.b_qkv), 3, axis=-1)
  i, f = jnp.split(base.add_bias(x @ params.w_if, params.b_if), 2, axis=-1)
  return heads(q), heads(k) / math.sqrt(D), heads(v), i, f


def output_norm(params: MLSTMParams, h: jax.Array) -> jax.Array:
  """``h`` ``(..., K, D)`` normalised per head (mean 0, variance 1 over ``D``), scaled by
  ``norm``, as ``(..., H)``: xlstm's ``MultiHeadLayerNorm`` (a group norm, no bias)."""
  mean = jnp.mean(h, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(h - mean), axis=-1, keepdims=True)
  y = ((h - mean) / jnp.sqrt(var + NORM_EPS)).reshape(h.shape[:-2] + (-1,))
  return y * base.rowwise(params.norm, y)


def _memory(carry: MLSTMCarry, K: int) -> Memory:
  batch, D = carry.m.shape[:-1], carry.n.shape[-1] // K
  return Memory(carry.C.reshape(batch + (K, D, D)), carry.n.reshape(batch + (K, D)), carry.m)


def _carry(memory: Memory) -> MLSTMCarry:
  batch = memory.m.shape[:-1]
  return MLSTMCarry(memory.C.reshape(batch + (-1,)), memory.n.reshape(batch + (-1,)), memory.m)


def memory_step(memory: Memory, q, k, v, i, f) -> tuple[Memory, jax.Array]:
  """xlstm's ``recurrent_step_stabilized_simple`` (``k`` already scaled): ``(memory, h~)``."""
  log_f = jax.nn.log_sigmoid(f)
  m = jnp.maximum(log_f + memory.m, i)
  fg, ig = jnp.exp(log_f + memory.m - m)[..., None], jnp.exp(i - m)[..., None]
  C = fg[..., None] * memory.C + (ig * k)[..., :, None] * v[..., None, :]
  n = fg * memory.n + ig * k
  num = jnp.einsum("...a,...ab->...b", q, C)
  qn = jnp.sum(q * n, axis=-1, keepdims=True)
  return Memory(C, n, m), num / (jnp.maximum(jnp.abs(qn), jnp.exp(-m)[..., None]) + EPS)


def update(params: MLSTMParams, carry: MLSTMCarry, x: jax.Array):
  """One mLSTM step, the cell's math: ``(carry, y, None)``."""
  qkvif = project(params, x)
  qkvif = (base.like(a, carry.n) for a in qkvif)  # the memory's dtype (``carry_dtype``)
  memory, h = memory_step(_memory(carry, params.num_heads), *qkvif)
  return _carry(memory), output_norm(params, base.like(h, x)), None


def _chunks(a: jax.Array, L: int, fill: float) -> jax.Array:
  """``(T, N, ...)`` padded with ``fill`` to whole chunks, as ``(S, N, L, ...)``; a symbolic
  ``T`` (`jax.export`) is always padded, by a symbolic count that may be 0."""
  T = a.shape[0]
  S = -(-T // L)
  if jax.export.is_symbolic_dim(T) or S * L != T:
    a = jnp.concatenate([a, jnp.full((S * L - T,) + a.shape[1:], fill, a.dtype)])
  return jnp.moveaxis(a.reshape((S, L) + a.shape[1:]), 1, 2)


def chunkwise_h(params, memory, xs, mask, resets, initial, chunk_size):
  """``(memory, h~ (T, N, K, D))`` of the chunkwise form, in the order ``xs`` is given."""
  T = xs.shape[0]
  L = chunk_size if jax.export.is_symbolic_dim(T) else min(chunk_size, T)
  q, k, v, i, f = project(params, xs)
  log_f = jax.nn.log_sigmoid(f)
  if mask is not None:  # a masked step leaves the memory as it is: f = 1, i = 0
    i = jnp.where(mask[..., None], i, -jnp.inf)
    log_f = jnp.where(mask[..., None], log_f, jnp.zeros_like(log_f))
  r = None if resets is None else _chunks(resets, L, False)
  chunk = Chunk(
    *(_chunks(a, L, 0.0) for a in (q, k, v)), _chunks(i, L, -jnp.inf), _chunks(log_f, L, 0.0), r
  )
  memory, h = _chunkwise.chunkwise(chunk, memory, initial, EPS)
  h = jnp.moveaxis(h, 2, 1)
  return memory, h.reshape((-1,) + h.shape[2:])[:T]


def _sequence(chunk_size: int):
  """The whole-sequence form (`jaxrnn.cells.kernel`'s contract): the chunkwise memory."""

  def run(params, carry, xs, mask, reverse, unroll, resets=None, reset_carry=None):
    del unroll  # the loop over chunks is short; nothing to unroll
    T, K = xs.shape[0], params.num_heads
    if not jax.export.is_symbolic_dim(T) and T == 0:
      return carry, jnp.zeros(xs.shape[:-1] + (params.hidden_size,), xs.dtype)
    flip = (lambda a: None if a is None else a[::-1]) if reverse else (lambda a: a)  # noqa: E731
    initial = None if reset_carry is None else _memory(reset_carry, K)
    xs_, mask_, resets_ = flip(xs), flip(mask), flip(resets)
    memory, h = chunkwise_h(params, _memory(carry, K), xs_, mask_, resets_, initial, chunk_size)
    ys = output_norm(params, h)
    if mask_ is not None:
      ys = jnp.where(mask_[..., None], ys, jnp.zeros_like(ys))
    return _carry(memory), flip(ys)

  return run


def _initial_carry(params: MLSTMParams, batch: tuple[int, ...]) -> MLSTMCarry:
  H, K, dtype = params.hidden_size, params.num_heads, params.norm.dtype
  zeros = lambda width: jnp.zeros(batch + (width,), dtype)  # noqa: E731
  return MLSTMCarry(zeros(H * H // K), zeros(H), zeros(K))


def _check_shapes(params: MLSTMParams, carry: MLSTMCarry, x: jax.Array) -> None:
  H, K = params.hidden_size, params.num_heads
  base.check_step_input("mlstm", x, params.input_size, carry.n, H)
  batch = carry.n.shape[:-1]
  for field, width in (("C", H * H // K), ("m", K)):
    want = batch + (width,)
    if getattr(carry, field).shape != want:
      raise ValueError(
        f"mlstm.step: carry.{field} has shape {getattr(carry, field).shape}; expected {want}."
      )


def mlstm(
  hidden_size: int,
  *,
  num_heads: int,
  chunk_size: int = CHUNK_SIZE,
  use_bias: bool = False,
  dtype: Any = jnp.float32,
  carry_dtype: Any = None,
  compute_dtype: Any = None,
) -> base.Cell:
  """The mLSTM cell (Beck et al. 2024, "xLSTM", section 2.3), as xlstm's ``mLSTMCell``.

  Per head (``K`` heads of ``D = H / K`` units), from the input ``x``::

      q = x W_q,  k = x W_k / sqrt(D),  v = x W_v          (w_qkv; + b_qkv)
      i~ = x w_i + b_i,  f~ = x w_f + b_f,  log f = log sigmoid(f~)      (w_if, b_if)
      m' = max(log f + m, i~)
      C' = exp(log f + m - m') C + exp(i~ - m') k v^T      (D, D): key rows, value columns
      n' = exp(log f + m - m') n + exp(i~ - m') k
      h~ = C'^T q / (max(|n'^T q|, exp(-m')) + 1e-6)
      y  = norm * groupnorm_per_head(h~)                   (mean 0, variance 1 per head)

  ``C`` and ``n`` are kept scaled by ``exp(-m)`` (the stabiliser), which keeps every
  exponent <= 0; ``h~`` does not depend on ``m`` but through the 1e-6. This is xlstm's
  ``recurrent_step_stabilized_simple`` followed by its ``MultiHeadLayerNorm`` (eps 1e-5),
  what its ``mLSTMCell.step`` computes; the zero initial carry is its initial state.

  What the cell is: the memory with its own projections of the cell's input. The gates
  read ``x`` (the paper's equations; xlstm's cell reads the concatenated ``[q, k, v]``,
  which is this cell with ``x = [q, k, v]`` and selection matrices in ``w_qkv``); the
  xLSTM block around it (the up- and down-projections, the causal convolution, the
  learnable skip and the SiLU output branch, which plays the paper's output gate) is not
  part of the cell. A carry has no ``h``, so recurrent dropout and zoneout do not apply.

  Over a whole sequence `jaxrnn.scan` runs the chunkwise-parallel form
  (`jaxrnn.cells._chunkwise`, Beck et al. 2025's TFLA with one level of chunks): a scan
  over chunks of ``chunk_size`` steps carries ``(C, n, m)``, and inside each chunk the
  stabilised quadratic form gives every step's ``h~``; resets cut the chunk's decay
  matrix and read the reset carry, lengths leave the memory as it is. It computes the
  step's values, stabiliser included; its gradients are JAX's autodiff of that form
  (``impl="step"`` runs the recurrent step instead). The default ``chunk_size`` was
  measured on XLA:CPU (2 shared cores), forward+backward at B=8, T=1024, H=256, 4 heads
  (median of 5 interleaved rounds): see ``CHUNK_SIZE``.

  Args:
    hidden_size: H, divisible by ``num_heads``.
    num_heads: K, the heads (xlstm's default is 4).
    chunk_size: steps per chunk of the whole-sequence form (a sequence shorter than it
      is one chunk).
    use_bias: whether ``b_qkv`` exists (xlstm's ``bias=False`` default); the gates always
      have biases.
    dtype, carry_dtype, compute_dtype: the params', the memory's (None: float32 for 16-bit
      params) and the step's dtypes (`jaxrnn.cells.builtin`).

  Returns:
    A `Cell` with carry `MLSTMCarry(C, n, m)`, zeros initially; the output is ``y``
    ``(*batch, H)``. ``init`` draws as xlstm's mLSTM layer: ``w_qkv`` normal with std
    ``sqrt(2 / (5 input_size))`` (its ``small_init``), ``w_if`` zeros, ``b_i`` normal with
    std 0.1, ``b_f`` evenly spaced from 3 to 6 over the heads, ``norm`` ones, ``b_qkv``
    zeros.

  Raises:
    ValueError: for a non-positive size, head count or ``chunk_size``, or ``hidden_size``
      not divisible by ``num_heads``.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> cell = jaxrnn.mlstm(8, num_heads=2, chunk_size=4)
    >>> params = cell.init(jax.random.key(0), input_size=3)
    >>> params.w_qkv.shape, params.w_if.shape, params.b_if[2:].tolist()
    ((3, 24), (3, 4), [3.0, 6.0])
    >>> carry, ys = jaxrnn.scan(cell, params, jnp.ones((5, 10, 3)))
    >>> ys.shape, carry.C.shape, carry.n.shape, carry.m.shape
    ((5, 10, 8), (5, 32), (5, 8), (5, 2))
  """
  config = factory.config(locals())  # first: exactly the factory's arguments
  base.check_heads(hidden_size, num_heads)
  base.check_positive("chunk_size", chunk_size)
  H, K = hidden_size, num_heads

  def init(key, input_size):
    base.check_input_size(input_size)
    k_qkv, k_i = jax.random.split(key)
    std = math.sqrt(2 / (5 * input_size))
    w_qkv = (jax.random.normal(k_qkv, (input_size, 3 * H)) * std).astype(dtype)
    b_i = jax.random.normal(k_i, (K,)) * 0.1
    b_if = jnp.concatenate([b_i, jnp.linspace(3.0, 6.0, K)]).astype(dtype)
    b_qkv = jnp.zeros((3 * H,), dtype) if use_bias else None
    w_if = jnp.zeros((input_size, 2 * K), dtype)
    return MLSTMParams(w_qkv, w_if, b_if, jnp.ones(H, dtype), b_qkv)

  return factory.library_cell(
    KIND,
    init=init,
    initial_carry=_initial_carry,
    update=update,
    check=_check_shapes,
    sequence=_sequence(chunk_size),
    config=config,
  )


KIND = base.CellKind(
  "mlstm",
  mlstm,
  MLSTMParams,
  MLSTMCarry,
  None,
  # Heads of 4 units: with 2, the per-head norm of two values is nearly a sign function
  # (its slope up to 1/sqrt(1e-5)), and float32 gradients of the two paths differ by 1e-4.
  base.Example((("hidden_size", 8), ("num_heads", 2), ("chunk_size", 4))),
)
