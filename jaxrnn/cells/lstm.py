"""The LSTM of the seed document: forget, input and output gates over a cell state."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.cells import base, kernel, torch_layout
from jaxrnn.cells import builtin as factory
from jaxrnn.cells._backward import dense_grads, reverse_loop
from jaxrnn.cells._gates import gates, gates_slope
from jaxrnn.cells.base import LSTMCarry  # also jaxrnn.cells.lstm.LSTMCarry, where it was


class LSTMParams(NamedTuple):
  """Parameters of `jaxrnn.lstm`, gates in PyTorch's order ``[i, f, g, o]``.

  Columns ``[0:H]`` are the input gate, ``[H:2H]`` the forget gate, ``[2H:3H]``
  the candidate ``g``, ``[3H:4H]`` the output gate. Weights are PyTorch's
  transposed (``x @ w_ih``); ``b`` is PyTorch's ``b_ih + b_hh``.

  Attributes:
    w_ih: ``(input_size, 4H)``.
    w_hh: ``(P, 4H)`` with ``P = proj_size`` if projecting, else ``H``.
    b: ``(4H,)`` or None.
    w_proj: ``(H, P)`` or None, PyTorch's ``weight_hr`` transposed.
  """

  w_ih: jax.Array
  w_hh: jax.Array
  b: jax.Array | None = None
  w_proj: jax.Array | None = None

  gate_columns = (("w_ih", 4), ("w_hh", 4), ("b", 4))  # split by sharding's model axis

  input_size = base.INPUT_SIZE

  @property
  def hidden_size(self) -> int:
    return self.w_hh.shape[-1] // 4


def update(params: LSTMParams, carry: LSTMCarry, x: jax.Array, h_mask=None):
  """One LSTM step, the cell's math in one place: ``(carry, y, gate activations)``.

  The gates in ``x``'s (the compute) dtype, ``c`` accumulated in the carry's dtype.
  """
  h_in = base.like(carry.h, x)  # the state enters the matmul in the compute dtype
  h_in = h_in if h_mask is None else h_in * h_mask  # recurrent dropout's mask
  acts = gates(base.add_bias(x @ params.w_ih + h_in @ params.w_hh, params.b))
  i, f, g, o = jnp.split(acts, 4, axis=-1)
  c = base.like(f, carry.c) * carry.c + base.like(i * g, carry.c)
  h = o * base.like(jnp.tanh(c), o)
  if params.w_proj is not None:
    h = h @ params.w_proj
  return LSTMCarry(h, c), h, acts


def backward(params, xs, mask, resets, saved, cotangents, reverse, unroll, noise):
  """The VJP of `update` looped over time (see `jaxrnn.cells.kernel`): the step's local VJP
  run by the shared `jaxrnn.cells._backward.reverse_loop`, then the weight gradients."""
  prev, acts = saved
  proj = params.w_proj
  w_hh_t = kernel.transposed(params.w_hh)
  proj_t = None if proj is None else kernel.transposed(proj)

  def step_vjp(ct, local):
    cp, a = local
    i, f, g, o = jnp.split(a, 4, axis=-1)
    tc = jnp.tanh(f * cp + i * g)
    dh_cell = ct.h if proj is None else ct.h @ proj_t
    dc = ct.c + dh_cell * o * (1.0 - tc * tc)
    d_acts = jnp.concatenate([dc * g, dc * cp, dc * i, dh_cell * tc], axis=-1)
    dz = d_acts * gates_slope(a)
    return dz @ w_hh_t, LSTMCarry(None, dc * f), (dz, None if proj is None else ct.h)

  local = (prev.c, acts)
  ct0, (dz, dh_out), d_reset = reverse_loop(
    step_vjp, local, mask, resets, cotangents, noise, reverse, unroll
  )
  d_w_proj = None
  if proj is not None:
    i, f, g, o = jnp.split(acts, 4, axis=-1)
    h_cell = o * jnp.tanh(f * prev.c + i * g)
    d_w_proj = kernel.rows(h_cell).T @ kernel.rows(dh_out)
  dense, d_xs = dense_grads(params, xs, prev.h, noise.h_mask, dz)
  grads = type(params)(**dense, w_proj=d_w_proj)
  return grads, ct0, d_xs, d_reset


sequence = kernel.sequence_kernel(update, backward)


def lstm(
  hidden_size: int,
  *,
  forget_bias: float = 1.0,
  proj_size: int | None = None,
  use_bias: bool = True,
  recurrent_init: str = "uniform",
  dtype: Any = jnp.float32,
  carry_dtype: Any = None,
  compute_dtype: Any = None,
) -> base.Cell:
  """The LSTM cell (Hochreiter and Schmidhuber 1997, with the forget gate).

  With ``z = x @ w_ih + h @ w_hh + b`` split into ``[i, f, g, o]``::

      c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
      h' = sigmoid(o) * tanh(c')            (then h' @ w_proj if proj_size)

  This is exactly ``torch.nn.LSTMCell`` (and ``torch.nn.LSTM`` with ``proj_size``).
  The forward pass adds no constant: ``forget_bias`` is added to the forget
  slice of ``b`` by ``init`` only, where it can be seen and trained.

  Args:
    hidden_size: H, the cell state size.
    forget_bias: added to ``b[H:2H]`` at init (Gers et al. 2000; Jozefowicz
      et al. 2015 recommend 1.0). Use 0.0 for PyTorch's initial distribution.
    proj_size: P, if given, ``h`` is projected to P features (Sak et al. 2014).
    use_bias: whether ``b`` exists; PyTorch's ``bias=False``.
    recurrent_init: as every cell's (`jaxrnn.cells.factory`); ``"identity"`` needs
      no projection.
    dtype, carry_dtype, compute_dtype: the params', the carry's (None: float32 for
      bfloat16 or float16 params) and the step's dtypes (`jaxrnn.cells.factory`).

  Returns:
    A `Cell` with carry `LSTMCarry(h, c)`: ``h`` ``(*batch, P or H)``,
    ``c`` ``(*batch, H)``; the output ``y`` is ``h``.

  Raises:
    ValueError: for a non-positive size, ``proj_size >= hidden_size`` (as
      PyTorch), or an unknown initialiser.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> cell = jaxrnn.lstm(hidden_size=4)
    >>> params = cell.init(jax.random.key(0), input_size=3)
    >>> params.b[4:8]  # the forget slice, visibly 1 + U(-1/2, 1/2)
    Array([...], dtype=float32)
    >>> carry = cell.initial_carry(params, batch_shape=(5,))
    >>> carry, y = cell.step(params, carry, jnp.ones((5, 3)))
    >>> carry.h.shape, carry.c.shape, y.shape
    ((5, 4), (5, 4), (5, 4))
  """
  config = factory.config(locals())  # first: exactly the factory's arguments
  base.check_positive("proj_size", proj_size, allow_none=True)
  if proj_size is not None and proj_size >= hidden_size:
    raise ValueError(f"proj_size={proj_size} must be smaller than hidden_size={hidden_size}.")
  scale = base.hidden_scale(hidden_size)
  H = hidden_size
  P = hidden_size if proj_size is None else proj_size

  def init(key, input_size):
    k_ih, k_hh, k_b, k_proj = jax.random.split(key, 4)
    w_ih, w_hh, b = factory.gate_weights(config, 4, (k_ih, k_hh, k_b), input_size, rows=P)
    if b is not None:
      b = b.at[H : 2 * H].add(forget_bias)  # the forget bias, in init and nowhere else
    w_proj = None if proj_size is None else base.uniform(k_proj, (H, P), scale, dtype)
    return LSTMParams(w_ih, w_hh, b, w_proj)

  def initial_carry(params, batch):
    p, four_h = params.w_hh.shape[-2:]
    dt = params.w_hh.dtype
    return LSTMCarry(jnp.zeros(batch + (p,), dt), jnp.zeros(batch + (four_h // 4,), dt))

  return factory.library_cell(
    KIND,
    init=init,
    initial_carry=initial_carry,
    update=update,
    check=_check_step,
    sequence=sequence,
    config=config,  # every argument of the factory, as called
  )


def _check_step(params: LSTMParams, carry: LSTMCarry, x: jax.Array) -> None:
  h_size = params.w_hh.shape[-1] // 4
  base.check_step_input("lstm", x, params.w_ih.shape[0], carry.h, params.w_hh.shape[0])
  if carry.c.shape != carry.h.shape[:-1] + (h_size,):
    raise ValueError(
      f"lstm.step: carry.c has shape {carry.c.shape}; expected {carry.h.shape[:-1] + (h_size,)}."
    )


# ------------------------------------------------------------------ PyTorch's layout


def _cell_kwargs(module: Any) -> dict[str, Any]:
  kwargs: dict[str, Any] = dict(use_bias=bool(module.bias))
  if module.proj_size:
    kwargs["proj_size"] = int(module.proj_size)
  return kwargs


def _from_torch(sd: Any, suffix: str) -> LSTMParams:
  w = torch_layout.weights(sd, suffix)
  b = None if w.b_ih is None else jnp.asarray(w.b_ih + w.b_hh)
  w_proj = sd.get(f"weight_hr{suffix}")
  w_proj = None if w_proj is None else jnp.asarray(torch_layout.to_numpy(w_proj).T)
  return LSTMParams(w.w_ih, w.w_hh, b, w_proj)


def _to_torch(p: LSTMParams, suffix: str) -> dict[str, np.ndarray]:
  out = torch_layout.state(p.w_ih, p.w_hh, p.b, None, suffix)
  if p.w_proj is not None:
    out[f"weight_hr{suffix}"] = np.asarray(p.w_proj).T
  return out


KIND = base.CellKind(
  "lstm",
  lstm,
  LSTMParams,
  LSTMCarry,
  torch_layout.TorchLayout("LSTM", _cell_kwargs, _from_torch, _to_torch),
  base.Example((("hidden_size", 5), ("proj_size", 3))),  # the projection checked too
)
