"""The layer-normalized LSTM of Ba, Kiros and Hinton 2016 (section 3.1)."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn.cells import base, factory
from jaxrnn.cells.lstm import LSTMCarry, gates


class LayerNormLSTMParams(NamedTuple):
  """Parameters of `jaxrnn.layer_norm_lstm`, gates in PyTorch's order ``[i, f, g, o]``.

  Columns ``[0:H]`` are the input gate, ``[H:2H]`` the forget gate, ``[2H:3H]``
  the candidate ``g``, ``[3H:4H]`` the output gate, as in `jaxrnn.LSTMParams`.

  No ``gate_columns`` are declared, so `jaxrnn.sharding` keeps these params
  replicated: the normalization statistics are taken over all 4H columns (or,
  with ``per_gate``, over each gate's H columns, while the model axis splits
  the 4H columns into contiguous blocks that need not align with gates), so a
  split over a model axis would need a cross-device reduction inside every time
  step.

  Attributes:
    w_ih: ``(input_size, 4H)``, input projection (``x @ w_ih``).
    w_hh: ``(H, 4H)``, recurrent projection (``h @ w_hh``).
    b: ``(4H,)`` or None, added after the two normalizations; holds ``forget_bias``.
    ln_ih_gain, ln_ih_bias: ``(4H,)``, the input projection's layer norm (init 1, 0).
    ln_hh_gain, ln_hh_bias: ``(4H,)``, the recurrent projection's layer norm (init 1, 0).
    ln_c_gain, ln_c_bias: ``(H,)``, the cell state's layer norm (init 1, 0).
  """

  w_ih: jax.Array
  w_hh: jax.Array
  b: jax.Array | None
  ln_ih_gain: jax.Array
  ln_ih_bias: jax.Array
  ln_hh_gain: jax.Array
  ln_hh_bias: jax.Array
  ln_c_gain: jax.Array
  ln_c_bias: jax.Array

  input_size = base.INPUT_SIZE
  hidden_size = base.HIDDEN_ROWS


def layer_norm(
  z: jax.Array, gain: jax.Array, bias: jax.Array, groups: int, epsilon: float
) -> jax.Array:
  """Layer normalization of ``z`` ``(..., F)`` over ``groups`` equal blocks of its columns.

  Each block of ``F / groups`` columns is shifted to mean 0 and scaled to (biased)
  variance 1, ``(z - mean) / sqrt(var + epsilon)``, then ``* gain + bias`` (both
  ``(F,)``). The statistics are computed in at least float32 (as flax's
  ``LayerNorm``); the result has ``z``'s dtype.
  """
  stat_dtype = jnp.dtype(jnp.float32) if jnp.finfo(z.dtype).bits < 32 else z.dtype
  zs = z.astype(stat_dtype).reshape(z.shape[:-1] + (groups, z.shape[-1] // groups))
  mean = jnp.mean(zs, axis=-1, keepdims=True)
  centred = zs - mean
  var = jnp.mean(centred * centred, axis=-1, keepdims=True)
  normed = (centred * jax.lax.rsqrt(var + jnp.asarray(epsilon, stat_dtype))).reshape(z.shape)
  return base.add_bias(normed.astype(z.dtype) * _row(gain, z), bias)


def _row(v: jax.Array, z: jax.Array) -> jax.Array:
  return jnp.reshape(v, (1,) * (z.ndim - 1) + v.shape)


def update(
  params: LayerNormLSTMParams,
  carry: LSTMCarry,
  x: jax.Array,
  *,
  per_gate: bool = False,
  epsilon: float = 1e-5,
):
  """One layer-normalized LSTM step: ``(carry, y, gate activations)``."""
  groups = 4 if per_gate else 1
  p = params
  z_x = layer_norm(x @ p.w_ih, p.ln_ih_gain, p.ln_ih_bias, groups, epsilon)
  z_h = layer_norm(carry.h @ p.w_hh, p.ln_hh_gain, p.ln_hh_bias, groups, epsilon)
  acts = gates(base.add_bias(z_x + z_h, p.b))
  i, f, g, o = jnp.split(acts, 4, axis=-1)
  c = f * carry.c + i * g
  h = o * jnp.tanh(layer_norm(c, p.ln_c_gain, p.ln_c_bias, 1, epsilon))
  return LSTMCarry(h, c), h, acts


def check_epsilon(epsilon: Any) -> None:
  if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or not epsilon > 0:
    raise ValueError(f"epsilon={epsilon!r}: expected a positive float (e.g. 1e-5).")


def check_bool(name: str, value: Any) -> None:
  if not isinstance(value, bool):
    raise ValueError(f"{name}={value!r}: expected True or False.")


def layer_norm_lstm(
  hidden_size: int,
  *,
  forget_bias: float = 1.0,
  per_gate: bool = False,
  use_bias: bool = True,
  epsilon: float = 1e-5,
  dtype: Any = jnp.float32,
  compute_dtype: Any = None,
) -> base.Cell:
  """The layer-normalized LSTM (Ba, Kiros and Hinton 2016, section 3.1).

  With ``LN(a; gain, bias) = (a - mean(a)) / sqrt(var(a) + epsilon) * gain + bias``
  (mean and biased variance over the whole 4H columns; over each gate's H
  columns with ``per_gate``; always over the H columns of ``c``)::

      z  = LN(x @ w_ih; ln_ih) + LN(h @ w_hh; ln_hh) + b      split [i, f, g, o]
      c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
      h' = sigmoid(o) * tanh(LN(c'; ln_c))

  The input and recurrent projections are normalized separately, as in the
  paper; the carried ``c'`` is the unnormalized cell state (only the output
  path sees ``LN(c')``). ``per_gate=True`` is TensorFlow's
  ``LayerNormBasicLSTMCell`` normalization (each gate on its own), kept on the
  two separate projections (TensorFlow normalizes one projection of
  ``[x, h]``). The forward pass adds no constant: ``forget_bias`` is added by
  ``init`` to ``b[H:2H]``, the bias added after both normalizations, where it
  can be seen and trained. ``b``, ``ln_ih_bias`` and ``ln_hh_bias`` enter only
  as their sum (the paper's form keeps all three); ``b`` starts at zero (plus
  ``forget_bias``), the weights at PyTorch's U(-1/sqrt(H), 1/sqrt(H)).

  The params declare no ``gate_columns``: `jaxrnn.sharding` keeps them
  replicated (the statistics span all gate columns, see `LayerNormLSTMParams`).
  There is no whole-sequence kernel: `jaxrnn.scan` loops over the step.

  Args:
    hidden_size: H, the cell state size.
    forget_bias: added to ``b[H:2H]`` at init (ignored when ``use_bias=False``:
      there is then no ``b``, and the forget slice starts at ``ln_hh_bias +
      ln_ih_bias = 0``).
    per_gate: normalize each gate's H columns separately.
    use_bias: whether ``b`` exists (the layer norms keep their own biases).
    epsilon: added to the variance in every normalization.
    dtype, compute_dtype: the params' and the step's dtypes (`jaxrnn.cells.factory`).
      The normalization statistics are taken in at least float32.

  Returns:
    A `Cell` with carry `LSTMCarry(h, c)`, both ``(*batch, H)``; the output is ``h``.

  Raises:
    ValueError: for a non-positive size or epsilon, or a non-bool flag.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> cell = jaxrnn.layer_norm_lstm(hidden_size=4)
    >>> params = cell.init(jax.random.key(0), input_size=3)
    >>> params.b[4:8]  # the forget slice
    Array([1., 1., 1., 1.], dtype=float32)
    >>> carry = cell.initial_carry(params, batch_shape=(5,))
    >>> carry, y = cell.step(params, carry, jnp.ones((5, 3)))
    >>> carry.h.shape, carry.c.shape, y.shape
    ((5, 4), (5, 4), (5, 4))
  """
  config = factory.config(locals())  # first: exactly the factory's arguments
  check_bool("per_gate", per_gate)
  check_bool("use_bias", use_bias)
  check_epsilon(epsilon)
  if isinstance(forget_bias, bool) or not isinstance(forget_bias, int | float):
    raise ValueError(f"forget_bias={forget_bias!r}: expected a float.")
  scale = base.hidden_scale(hidden_size)
  H = hidden_size

  def init(key, input_size):
    base.check_input_size(input_size)
    k_ih, k_hh = jax.random.split(key)
    b = None
    if use_bias:
      b = jnp.zeros((4 * H,), dtype).at[H : 2 * H].add(forget_bias)  # in init, nowhere else
    ones, zeros = jnp.ones((4 * H,), dtype), jnp.zeros((4 * H,), dtype)
    return LayerNormLSTMParams(
      w_ih=base.uniform(k_ih, (input_size, 4 * H), scale, dtype),
      w_hh=base.uniform(k_hh, (H, 4 * H), scale, dtype),
      b=b,
      ln_ih_gain=ones,
      ln_ih_bias=zeros,
      ln_hh_gain=ones,
      ln_hh_bias=zeros,
      ln_c_gain=jnp.ones((H,), dtype),
      ln_c_bias=jnp.zeros((H,), dtype),
    )

  step_math = functools.partial(update, per_gate=per_gate, epsilon=epsilon)
  return factory.library_cell(KIND, init=init, update=step_math, config=config)


KIND = base.CellKind("layer_norm_lstm", layer_norm_lstm, LayerNormLSTMParams, LSTMCarry, None)
