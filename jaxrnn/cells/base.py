"""The `Cell` contract and the pieces every cell family shares."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any
Array = jax.Array


class Cell(NamedTuple):
  """One recurrent time step as a bundle of pure functions.

  A cell factory (`jaxrnn.elman`, `jaxrnn.lstm`, `jaxrnn.gru`) closes its
  configuration over these functions, the way `optax.adam(...)` returns a
  `GradientTransformation`.

  Attributes:
    init: ``init(key, input_size) -> params``, a NamedTuple of arrays.
    initial_carry: ``initial_carry(params, batch_shape=()) -> carry``, zeros.
    step: ``step(params, carry, x) -> (carry, y)`` with ``x`` of shape
      ``(*batch, input_size)``.
    name: the cell family, ``"elman"``, ``"lstm"`` or ``"gru"``.
    config: the factory's keyword arguments as sorted ``(name, value)`` pairs,
      so that ``cell.config`` is hashable and ``dict(cell.config)`` rebuilds it.
    sequence: optional, the same cell over a whole sequence with a hand-written
      VJP, ``sequence(params, carry, xs, mask, reverse, unroll) -> (carry, ys)``
      on ``xs`` ``(T, N, I)`` and ``mask`` ``(T, N)`` or None (see
      `jaxrnn.cells.fused`); `jaxrnn.scan` uses it when present. A custom cell
      may leave it None: `scan` then loops over ``step``.
  """

  init: Callable[..., PyTree]
  initial_carry: Callable[..., PyTree]
  step: Callable[..., tuple[PyTree, Array]]
  name: str = "custom"
  config: tuple[tuple[str, Any], ...] = ()
  sequence: Callable[..., tuple[PyTree, Array]] | None = None


class HiddenCarry(NamedTuple):
  """Carry of the Elman RNN and the GRU: the hidden state ``h`` ``(*batch, H)``."""

  h: Array


class LSTMCarry(NamedTuple):
  """Carry of the LSTM: hidden state ``h`` ``(*batch, P or H)``, cell ``c`` ``(*batch, H)``."""

  h: Array
  c: Array


RECURRENT_INITS = ("uniform", "orthogonal", "identity")


def check_recurrent_init(recurrent_init: str) -> None:
  if recurrent_init not in RECURRENT_INITS:
    raise ValueError(f"recurrent_init={recurrent_init!r} is not one of {RECURRENT_INITS}.")


def check_positive(name: str, value: Any, *, allow_none: bool = False) -> None:
  if value is None and allow_none:
    return
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ValueError(f"{name}={value!r}: expected a positive int.")


def check_input_size(input_size: Any) -> None:
  check_positive("input_size", input_size)


def uniform(key: Array, shape: Sequence[int], scale: float, dtype: Any) -> Array:
  """PyTorch's default: U(-scale, scale) with scale = 1/sqrt(hidden_size)."""
  return jax.random.uniform(key, tuple(shape), dtype, -scale, scale)


def recurrent_matrix(
  key: Array, kind: str, rows: int, hidden: int, gates: int, scale: float, dtype: Any
) -> Array:
  """A ``(rows, gates * hidden)`` recurrent matrix, one ``(rows, hidden)`` block per gate.

  ``uniform``: PyTorch's U(-1/sqrt(H), 1/sqrt(H)). ``orthogonal``: each gate block
  an orthogonal matrix (Saxe et al. 2014). ``identity``: each gate block the
  identity (Le, Jaitly and Hinton 2015, IRNN); needs ``rows == hidden``.
  """
  if kind == "uniform":
    return uniform(key, (rows, gates * hidden), scale, dtype)
  if kind == "orthogonal":
    init = jax.nn.initializers.orthogonal()
    keys = jax.random.split(key, gates)
    return jnp.concatenate([init(k, (rows, hidden), dtype) for k in keys], axis=1)
  if kind == "identity":
    if rows != hidden:
      raise ValueError(
        f"recurrent_init='identity' needs a square recurrent block, got {rows}x{hidden}."
      )
    return jnp.tile(jnp.eye(hidden, dtype=dtype), (1, gates))
  check_recurrent_init(kind)
  raise AssertionError  # unreachable


def hidden_scale(hidden_size: int) -> float:
  return 1.0 / math.sqrt(hidden_size)


def add_bias(z: Array, b: Array | None) -> Array:
  """``z + b`` with ``b`` of shape ``(F,)`` broadcast explicitly over the batch."""
  if b is None:
    return z
  return z + jnp.reshape(b, (1,) * (z.ndim - 1) + b.shape)


def check_step_input(
  cell_name: str, x: Array, input_size: int, carry_leaf: Array, width: int
) -> None:
  """Eager, static checks shared by every cell's ``step``."""
  if x.ndim < 1:
    raise ValueError(f"{cell_name}.step: x has shape {x.shape}; expected (*batch, {input_size}).")
  if x.shape[-1] != input_size:
    raise ValueError(
      f"{cell_name}.step: x has {x.shape[-1]} features (shape {x.shape}), but the params "
      f"expect input_size={input_size}."
    )
  if carry_leaf.shape[-1] != width:
    raise ValueError(
      f"{cell_name}.step: carry has width {carry_leaf.shape[-1]} (shape {carry_leaf.shape}), "
      f"but the params expect {width}."
    )
  if carry_leaf.shape[:-1] != x.shape[:-1]:
    raise ValueError(
      f"{cell_name}.step: carry batch shape {carry_leaf.shape[:-1]} does not match x batch "
      f"shape {x.shape[:-1]}."
    )


def as_batch_shape(batch_shape: Any) -> tuple[int, ...]:
  if isinstance(batch_shape, int):
    batch_shape = (batch_shape,)
  try:
    shape = tuple(int(d) for d in batch_shape)
  except TypeError:
    raise ValueError(f"batch_shape={batch_shape!r}: expected a tuple of ints.") from None
  if any(d < 0 for d in shape):
    raise ValueError(f"batch_shape={batch_shape!r}: dimensions must be non-negative.")
  return shape
