"""The Elman RNN of the seed document: S(t) = act([S(t-1), X(t)] U + B), O(t) = S(t) V + c."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.cells import base, kernel, torch_layout
from jaxrnn.cells import builtin as factory
from jaxrnn.cells._backward import dense_grads, reverse_loop
from jaxrnn.cells.base import HiddenCarry

ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu}


class ElmanParams(NamedTuple):
  """Parameters of `jaxrnn.elman`; ``x @ w_ih`` layout (PyTorch's weights transposed).

  Attributes:
    w_ih: ``(input_size, hidden_size)``, the seed's last ``x`` rows of ``U``.
    w_hh: ``(hidden_size, hidden_size)``, the seed's first ``n`` rows of ``U``.
    b: ``(hidden_size,)`` or None, the seed's ``B`` (PyTorch's ``b_ih + b_hh``).
    w_out: ``(hidden_size, output_size)`` or None, the seed's readout ``V``.
    b_out: ``(output_size,)`` or None, the readout bias ``c``.
  """

  w_ih: jax.Array
  w_hh: jax.Array
  b: jax.Array | None = None
  w_out: jax.Array | None = None
  b_out: jax.Array | None = None

  gate_columns = (("w_ih", 1), ("w_hh", 1), ("b", 1))  # split by sharding's model axis

  input_size = base.INPUT_SIZE

  @property
  def hidden_size(self) -> int:
    return self.w_hh.shape[-1]

  @classmethod
  def from_concatenated(cls, u, b=None, v=None, c=None) -> ElmanParams:
    """Builds params from the seed's concatenated ``U`` of shape ``(n + x, n)``.

    The state comes first: ``[S(t-1), X(t)] @ U``, so ``U[:n]`` is the recurrent
    matrix and ``U[n:]`` the input matrix.

    Args:
      u: ``(n + x, n)``.
      b: ``(n,)`` or None.
      v: ``(n, o)`` readout or None.
      c: ``(o,)`` readout bias or None.

    Returns:
      `ElmanParams`.

    Raises:
      ValueError: if ``u`` is not ``(n + x, n)`` with ``x >= 1`` or the others disagree.

    Example:
      >>> p = ElmanParams.from_concatenated(jnp.ones((3, 2)), jnp.zeros(2))
      >>> p.w_hh.shape, p.w_ih.shape
      ((2, 2), (1, 2))
    """
    u = jnp.asarray(u)
    if u.ndim != 2 or u.shape[0] <= u.shape[1]:
      raise ValueError(f"u has shape {u.shape}; expected (n + x, n) with x >= 1.")
    n = u.shape[1]
    if b is not None and jnp.shape(b) != (n,):
      raise ValueError(f"b has shape {jnp.shape(b)}; expected ({n},).")
    if v is not None and (jnp.ndim(v) != 2 or jnp.shape(v)[0] != n):
      raise ValueError(f"v has shape {jnp.shape(v)}; expected ({n}, output_size).")
    if c is not None and v is None:
      raise ValueError("c (readout bias) was given without v (readout).")
    if c is not None and jnp.shape(c) != (jnp.shape(v)[1],):
      raise ValueError(f"c has shape {jnp.shape(c)}; expected ({jnp.shape(v)[1]},).")
    as_arr = lambda a: None if a is None else jnp.asarray(a, u.dtype)  # noqa: E731
    return cls(w_ih=u[n:], w_hh=u[:n], b=as_arr(b), w_out=as_arr(v), b_out=as_arr(c))

  def concatenated(self) -> jax.Array:
    """The seed's ``U = [[w_hh], [w_ih]]`` of shape ``(n + x, n)``."""
    return jnp.concatenate([self.w_hh, self.w_ih], axis=-2)


def update(params: ElmanParams, carry: HiddenCarry, x: jax.Array, h_mask=None, *, activation):
  """One Elman step before the readout, the cell's math in one place: ``(carry, y, h)``.

  The matmuls in ``x``'s (the compute) dtype, the activation and ``h`` in the carry's; the
  output ``y`` is ``h`` in the compute dtype.
  """
  h_in = base.like(carry.h, x)  # the state enters the matmul in the compute dtype
  h_in = h_in if h_mask is None else h_in * h_mask  # recurrent dropout's mask
  z = base.add_bias(x @ params.w_ih + h_in @ params.w_hh, params.b)
  h = ACTIVATIONS[activation](base.like(z, carry.h))
  return HiddenCarry(h), base.like(h, x), h


def readout(params: ElmanParams, h: jax.Array) -> jax.Array:
  """The seed's output ``O = S V + c``, or ``h`` itself without a readout."""
  return h if params.w_out is None else base.add_bias(h @ params.w_out, params.b_out)


def backward(params, xs, mask, resets, saved, cotangents, reverse, unroll, noise, *, activation):
  """The VJP of `update` looped over time (see `jaxrnn.cells.kernel`): the step's local VJP
  run by the shared `jaxrnn.cells._backward.reverse_loop`, then the weight gradients."""
  prev, h_new = saved
  w_hh_t = kernel.transposed(params.w_hh)

  def step_vjp(ct, h):
    slope = 1.0 - h * h if activation == "tanh" else (h > 0).astype(h.dtype)
    da = ct.h * slope
    return da @ w_hh_t, HiddenCarry(None), da

  ct0, da, d_reset = reverse_loop(step_vjp, h_new, mask, resets, cotangents, noise, reverse, unroll)
  dense, d_xs = dense_grads(params, xs, prev.h, noise.h_mask, da)
  return params._replace(**dense), ct0, d_xs, d_reset


_CORES = {
  a: kernel.sequence_kernel(
    functools.partial(update, activation=a), functools.partial(backward, activation=a)
  )
  for a in ACTIVATIONS
}


def sequence(
  params, carry, xs, mask, reverse, unroll, resets=None, reset_carry=None, noise=None, *, activation
):
  """The Elman RNN over ``xs`` ``(T, N, I)``; the optional readout runs after the loop."""
  core = params._replace(w_out=None, b_out=None)
  args = (core, carry, xs, mask, reverse, unroll, resets, reset_carry)
  carry, hs = _CORES[activation](*args, noise)
  if params.w_out is None:
    return carry, hs
  return carry, kernel.zeros_where_invalid(mask, readout(params, hs))


def _marked(fn):
  fn.takes_noise = True  # the regularizer masks reach the kernel (see `kernel.Noise`)
  return fn


def elman(
  hidden_size: int,
  *,
  activation: str = "tanh",
  output_size: int | None = None,
  use_bias: bool = True,
  recurrent_init: str = "uniform",
  dtype: Any = jnp.float32,
  carry_dtype: Any = None,
  compute_dtype: Any = None,
) -> base.Cell:
  """The Elman RNN cell of the seed document.

  ``h' = act(x @ w_ih + h @ w_hh + b)``; the output is ``h'``, or
  ``h' @ w_out + b_out`` when ``output_size`` is given (the seed's readout V).
  With ``activation="tanh"`` and no readout this is ``torch.nn.RNNCell``.

  Args:
    hidden_size: H, the state size (the seed's n).
    activation: ``"tanh"`` or ``"relu"``.
    output_size: size of the optional linear readout; None means ``y = h``.
    use_bias: whether ``b`` (and ``b_out``) exist; PyTorch's ``bias=False``.
    recurrent_init: as every cell's (`jaxrnn.cells.factory`); ``"identity"`` is the
      IRNN (identity ``w_hh``, zero bias, N(0, 0.001^2) input weights, Le et al. 2015).
    dtype, carry_dtype, compute_dtype: the params', the carry's (None: float32 for
      bfloat16 or float16 params) and the step's dtypes (`jaxrnn.cells.factory`).

  Returns:
    A `Cell` with carry `HiddenCarry(h)`, ``h`` of shape ``(*batch, H)``.

  Raises:
    ValueError: for a non-positive size or an unknown activation or initialiser.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> cell = jaxrnn.elman(hidden_size=4, output_size=2)
    >>> params = cell.init(jax.random.key(0), input_size=3)
    >>> carry = cell.initial_carry(params, batch_shape=(5,))
    >>> carry, y = cell.step(params, carry, jnp.ones((5, 3)))
    >>> carry.h.shape, y.shape
    ((5, 4), (5, 2))
  """
  config = factory.config(locals())  # first: exactly the factory's arguments
  base.check_positive("output_size", output_size, allow_none=True)
  if activation not in ACTIVATIONS:
    raise ValueError(f"activation={activation!r} is not one of {tuple(ACTIVATIONS)}.")
  scale = base.hidden_scale(hidden_size)

  def init(key, input_size):
    base.check_input_size(input_size)
    k_ih, k_hh, k_b, k_out, k_bout = jax.random.split(key, 5)
    if recurrent_init == "identity":
      w_ih = 0.001 * jax.random.normal(k_ih, (input_size, hidden_size), dtype)
    else:
      w_ih = base.uniform(k_ih, (input_size, hidden_size), scale, dtype)
    w_hh = base.recurrent_matrix(k_hh, recurrent_init, hidden_size, hidden_size, 1, scale, dtype)
    b = None
    if use_bias:
      b = factory.uniform_or_zeros(config, k_b, (hidden_size,))
    w_out = b_out = None
    if output_size is not None:
      w_out = base.uniform(k_out, (hidden_size, output_size), scale, dtype)
      b_out = base.uniform(k_bout, (output_size,), scale, dtype) if use_bias else None
    return ElmanParams(w_ih, w_hh, b, w_out, b_out)

  def cell_update(params, carry, x):
    carry, h, _ = update(params, carry, x, activation=activation)
    return carry, readout(params, h), None

  return factory.library_cell(
    KIND,
    init=init,
    update=cell_update,
    sequence=_marked(functools.partial(sequence, activation=activation)),
    config=config,  # every argument of the factory, as called
  )


# ------------------------------------------------------------------ PyTorch's layout


def _from_torch(sd: Any, suffix: str) -> ElmanParams:
  w = torch_layout.weights(sd, suffix)
  return ElmanParams(w.w_ih, w.w_hh, None if w.b_ih is None else jnp.asarray(w.b_ih + w.b_hh))


def _to_torch(p: ElmanParams, suffix: str) -> dict[str, np.ndarray]:
  if p.w_out is not None:
    raise ValueError("an Elman cell with a readout (output_size) has no torch.nn.RNN equivalent.")
  return torch_layout.state(p.w_ih, p.w_hh, p.b, None, suffix)


def _cell_kwargs(module: Any) -> dict[str, Any]:
  return dict(use_bias=bool(module.bias), activation=module.nonlinearity)


KIND = base.CellKind(
  "elman",
  elman,
  ElmanParams,
  HiddenCarry,
  torch_layout.TorchLayout("RNN", _cell_kwargs, _from_torch, _to_torch),
  base.Example((("hidden_size", 5), ("output_size", 2))),  # the readout checked too
)
