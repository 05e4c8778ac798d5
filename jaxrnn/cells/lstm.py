"""The LSTM of the seed document: forget, input and output gates over a cell state."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn.cells import base, fused


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

  @property
  def input_size(self) -> int:
    return self.w_ih.shape[-2]

  @property
  def hidden_size(self) -> int:
    return self.w_hh.shape[-1] // 4


def lstm(
  hidden_size: int,
  *,
  forget_bias: float = 1.0,
  proj_size: int | None = None,
  use_bias: bool = True,
  recurrent_init: str = "uniform",
  dtype: Any = jnp.float32,
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
    recurrent_init: ``"uniform"`` (PyTorch's), ``"orthogonal"`` (per gate)
      or ``"identity"`` (per gate; needs no projection). The non-uniform ones
      start the bias at zero (plus ``forget_bias``).
    dtype: dtype of the parameters made by ``init``.

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
  base.check_positive("hidden_size", hidden_size)
  base.check_positive("proj_size", proj_size, allow_none=True)
  if proj_size is not None and proj_size >= hidden_size:
    raise ValueError(f"proj_size={proj_size} must be smaller than hidden_size={hidden_size}.")
  base.check_recurrent_init(recurrent_init)
  scale = base.hidden_scale(hidden_size)
  H = hidden_size
  P = hidden_size if proj_size is None else proj_size

  def init(key, input_size):
    base.check_input_size(input_size)
    k_ih, k_hh, k_b, k_proj = jax.random.split(key, 4)
    w_ih = base.uniform(k_ih, (input_size, 4 * H), scale, dtype)
    w_hh = base.recurrent_matrix(k_hh, recurrent_init, P, H, 4, scale, dtype)
    b = None
    if use_bias:
      if recurrent_init == "uniform":
        b = base.uniform(k_b, (4 * H,), scale, dtype)
      else:
        b = jnp.zeros((4 * H,), dtype)
      b = b.at[H : 2 * H].add(forget_bias)  # the forget bias, in init and nowhere else
    w_proj = None if proj_size is None else base.uniform(k_proj, (H, P), scale, dtype)
    return LSTMParams(w_ih, w_hh, b, w_proj)

  def initial_carry(params, batch_shape=()):
    batch = base.as_batch_shape(batch_shape)
    p, four_h = params.w_hh.shape[-2:]
    dt = params.w_hh.dtype
    return base.LSTMCarry(jnp.zeros(batch + (p,), dt), jnp.zeros(batch + (four_h // 4,), dt))

  def step(params, carry, x):
    h_size = params.w_hh.shape[-1] // 4
    base.check_step_input("lstm", x, params.w_ih.shape[0], carry.h, params.w_hh.shape[0])
    if carry.c.shape != carry.h.shape[:-1] + (h_size,):
      raise ValueError(
        f"lstm.step: carry.c has shape {carry.c.shape}; expected {carry.h.shape[:-1] + (h_size,)}."
      )
    z = base.add_bias(x @ params.w_ih + carry.h @ params.w_hh, params.b)
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c = jax.nn.sigmoid(f) * carry.c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    if params.w_proj is not None:
      h = h @ params.w_proj
    return base.LSTMCarry(h, c), h

  config = dict(
    hidden_size=hidden_size,
    forget_bias=forget_bias,
    proj_size=proj_size,
    use_bias=use_bias,
    recurrent_init=recurrent_init,
  )
  config = tuple(sorted(config.items()))
  return base.Cell(init, initial_carry, step, "lstm", config, fused.lstm_sequence)
