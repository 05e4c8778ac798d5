"""The independently recurrent neural network, IndRNN (Li et al. 2018)."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn.cells import base
from jaxrnn.cells import builtin as factory
from jaxrnn.cells.base import HiddenCarry

ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh}


class IndRNNParams(NamedTuple):
  """Parameters of `jaxrnn.indrnn`.

  Attributes:
    w_ih: ``(input_size, H)`` (``x @ w_ih``; the paper's ``W``).
    w_hh: ``(H,)``, the elementwise recurrent weights (the paper's ``u``; the
      reference code's ``weight_hh``).
    b: ``(H,)`` or None.
  """

  w_ih: jax.Array
  w_hh: jax.Array
  b: jax.Array | None = None

  gate_columns = (("w_ih", 1), ("w_hh", 1), ("b", 1))  # split by sharding's model axis

  input_size = base.INPUT_SIZE

  @property
  def hidden_size(self) -> int:
    return self.w_hh.shape[-1]


def clip(u: jax.Array, bound: float) -> jax.Array:
  """``u`` clipped to ``[-bound, bound]``; the gradient is 1 inside and on the bound, 0 outside."""
  return jnp.where(u > bound, bound, jnp.where(u < -bound, -bound, u)).astype(u.dtype)


def update(
  params: IndRNNParams, carry: HiddenCarry, x: jax.Array, *, activation: str, recurrent_max
):
  """One IndRNN step, the cell's math in one place: ``(carry, y, h)``.

  The input product in ``x``'s (the compute) dtype; the recurrence ``u * h``, the bias and
  the activation in the carry's, ``y`` the new ``h`` in the compute dtype.
  """
  h_prev = carry.h
  u = params.w_hh if recurrent_max is None else clip(params.w_hh, recurrent_max)
  u = base.like(jnp.reshape(u, (1,) * (h_prev.ndim - 1) + u.shape), h_prev)
  z = base.like(x @ params.w_ih, h_prev) + u * h_prev
  b = None if params.b is None else base.like(params.b, h_prev)
  h = ACTIVATIONS[activation](base.add_bias(z, b))
  return HiddenCarry(h), base.like(h, x), h


def indrnn_constrain(params: Any, recurrent_max: float) -> Any:
  """The reference code's constraint: every IndRNN's ``w_hh`` in ``params`` clipped to the bound.

  ``params`` is any pytree (one cell's params, a `stack`'s tuple, a train
  state...); the ``w_hh`` of each `IndRNNParams` in it is clipped to
  ``[-recurrent_max, recurrent_max]``, everything else is returned as is.
  Applied after every optimizer update, it is what Li et al.'s code does
  (``clip_weight``, a ``clamp_`` of ``weight_hh`` before each training step).

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> p = jaxrnn.IndRNNParams(jnp.zeros((2, 3)), jnp.array([-3.0, 0.5, 3.0]))
    >>> indrnn_constrain((p, {"lr": jnp.array(2.0)}), 1.5)[0].w_hh
    Array([-1.5,  0.5,  1.5], dtype=float32)
  """

  def one(node):
    if isinstance(node, IndRNNParams):
      return node._replace(w_hh=clip(node.w_hh, recurrent_max))
    return node

  return jax.tree.map(one, params, is_leaf=lambda n: isinstance(n, IndRNNParams))


def indrnn(
  hidden_size: int,
  *,
  activation: str = "relu",
  recurrent_max: float | None = None,
  use_bias: bool = True,
  dtype: Any = jnp.float32,
  carry_dtype: Any = None,
  compute_dtype: Any = None,
) -> base.Cell:
  """The IndRNN cell (Li, Li, Cook, Zhu and Gao 2018)::

      h' = act(x @ w_ih + u * h + b)          (u = w_hh, elementwise, (H,))

  Each unit has one recurrent weight and sees only its own past: the gradient
  through T steps of a ReLU unit is a product of ``u`` (where the unit is active),
  so ``|u| <= recurrent_max`` bounds its growth. The paper's bound for ReLU, so
  that the gradient does not explode over ``T`` steps, is ``2 ** (1 / T)`` (its
  code's ``U_bound = MAG ** (1 / seq_len)`` with ``MAG = 2``); it depends on the
  sequence length, so it is the user's to set.

  Enforcing the bound. Li et al.'s code clamps the stored ``weight_hh`` to
  ``[-U_bound, U_bound]`` before every training step (a projection after each
  update). A pure-functional cell cannot change its params, so this cell does
  two things: (1) the forward pass uses ``u`` clipped to the bound (gradient 1
  inside and on the bound, 0 beyond it), so the step never runs with a larger
  weight; (2) `jaxrnn.indrnn_constrain` ``(params, recurrent_max)`` is the
  projection itself, to apply to the params after each optimizer update: with it
  the stored weights never leave the bound, the forward clip is the identity,
  and training follows the reference code exactly. Without it, a weight pushed
  beyond the bound stays there with zero gradient.

  Initialisation, the reference code's: ``u`` ~ U(0, 1), or U(0, recurrent_max)
  when a bound is set (its ``uniform_(0, U_bound)``); ``b`` zeros (its
  ``fill_(0)``); ``w_ih`` PyTorch's U(-1/sqrt(H), 1/sqrt(H)) (the reference code
  uses a separate linear layer with its own initialisation).

  There is no hand-written whole-sequence kernel: `jaxrnn.scan` loops over the step. One
  was written and measured (the elementwise backward in the loop, the weight gradients
  hoisted after it): at B=32, T=128, I=128, H=256 on XLA:CPU its forward+backward took
  1.06x (per-round 0.24-4.83, 9 interleaved rounds, a shared 2-core machine) the time of
  autodiff of the step loop, which is already 0.06x the LSTM's, so it did not pay.

  Args:
    hidden_size: H.
    activation: ``"relu"`` (the paper's) or ``"tanh"``.
    recurrent_max: None (no bound) or the positive bound on ``|u|``.
    use_bias: whether ``b`` exists.
    dtype, carry_dtype, compute_dtype: the params', the carry's (None: float32 for
      bfloat16 or float16 params) and the step's dtypes (`jaxrnn.cells.factory`).

  Returns:
    A `Cell` with carry `HiddenCarry(h)`, ``h`` ``(*batch, H)``; the output is ``h``.

  Raises:
    ValueError: for a non-positive size, an unknown activation or a
      ``recurrent_max`` that is not a positive number.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> cell = jaxrnn.indrnn(hidden_size=4, recurrent_max=2 ** (1 / 100))
    >>> params = cell.init(jax.random.key(0), input_size=3)
    >>> params.w_hh.shape, bool(jnp.all((params.w_hh >= 0) & (params.w_hh <= 2 ** 0.01)))
    ((4,), True)
    >>> carry, y = cell.step(params, cell.initial_carry(params, (5,)), jnp.ones((5, 3)))
    >>> y.shape
    (5, 4)
  """
  config = factory.config(locals())  # first: exactly the factory's arguments
  if activation not in ACTIVATIONS:
    raise ValueError(f"activation={activation!r} is not one of {tuple(ACTIVATIONS)}.")
  if recurrent_max is not None and (
    isinstance(recurrent_max, bool)
    or not isinstance(recurrent_max, int | float)
    or not recurrent_max > 0
  ):
    raise ValueError(f"recurrent_max={recurrent_max!r}: expected None or a positive number.")
  scale = base.hidden_scale(hidden_size)
  H = hidden_size
  u_high = 1.0 if recurrent_max is None else float(recurrent_max)

  def init(key, input_size):
    base.check_input_size(input_size)
    k_ih, k_hh = jax.random.split(key)
    w_ih = base.uniform(k_ih, (input_size, H), scale, dtype)
    w_hh = jax.random.uniform(k_hh, (H,), dtype, 0.0, u_high)
    return IndRNNParams(w_ih, w_hh, jnp.zeros((H,), dtype) if use_bias else None)

  step_math = functools.partial(update, activation=activation, recurrent_max=recurrent_max)
  return factory.library_cell(KIND, init=init, update=step_math, config=config)


KIND = base.CellKind("indrnn", indrnn, IndRNNParams, HiddenCarry, None)
