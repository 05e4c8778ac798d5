"""`torch.nn.RNN` / `LSTM` / `GRU` to jaxrnn and back. torch is imported inside functions only.

Each cell declares its PyTorch layout next to its own code (`jaxrnn.cells.TorchLayout`);
this module reads those declarations through `jaxrnn.cells.TORCH`. PyTorch stores
``weight_ih_l{k}`` as ``(gates * H, I)`` and computes ``x @ W.T``; jaxrnn stores
``w_ih = W.T``. PyTorch's two biases are summed into ``b``, except the GRU's
``b_hn``, which sits inside the reset product and stays apart.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxrnn import cells
from jaxrnn.cells.torch_layout import to_numpy
from jaxrnn.layers import BidirectionalCarry, BidirectionalParams, SequenceModel, rnn_layers


def from_torch(module: Any) -> tuple[SequenceModel, tuple]:
  """Converts a ``torch.nn.RNN``, ``LSTM`` or ``GRU`` into a jaxrnn model and params.

  Every option carries over: ``num_layers``, ``bidirectional``, ``bias``,
  ``batch_first`` (as ``time_major=not batch_first``), ``nonlinearity``,
  ``proj_size`` and ``dropout`` (applied only when ``apply`` gets a ``key``
  and ``deterministic=False``; the random masks differ from PyTorch's).

  Args:
    module: a ``torch.nn.RNN``, ``torch.nn.LSTM`` or ``torch.nn.GRU``.

  Returns:
    ``(model, params)``: a `jaxrnn.rnn_layers` model and its params, with the
    module's dtype. ``model.apply(params, xs, seq_lengths=...)`` computes what the
    module computes on ``xs`` (packed with ``pack_padded_sequence`` when padded).

  Raises:
    ValueError: if ``module`` is not one of the three.

  Example:
    >>> import torch, numpy as np, jaxrnn
    >>> m = torch.nn.LSTM(3, 8, num_layers=2, batch_first=True)
    >>> model, params = jaxrnn.from_torch(m)
    >>> x = np.ones((2, 5, 3), np.float32)
    >>> carry, ys = model.apply(params, x)
    >>> np.abs(np.asarray(ys) - m(torch.from_numpy(x))[0].detach().numpy()).max() < 1e-5
    np.True_
  """
  import torch

  name = type(module).__name__
  if not isinstance(module, torch.nn.RNNBase) or name not in cells.TORCH:
    *most, last = [f"torch.nn.{m}" for m in cells.TORCH]
    raise ValueError(f"module is a {name}; expected {', '.join(most)} or {last}.")
  kind = cells.TORCH[name]
  cell_kwargs = kind.torch.cell_kwargs(module)
  sd = module.state_dict()
  cell_kwargs["dtype"] = to_numpy(next(iter(sd.values()))).dtype
  model = rnn_layers(
    kind.name,
    int(module.hidden_size),
    num_layers=int(module.num_layers),
    bidirectional=bool(module.bidirectional),
    dropout_rate=float(module.dropout),
    time_major=not module.batch_first,
    **cell_kwargs,
  )
  from_sd = kind.torch.params_from_torch
  params = []
  for k in range(module.num_layers):
    fwd = from_sd(sd, f"_l{k}")
    if module.bidirectional:
      params.append(BidirectionalParams(fwd, from_sd(sd, f"_l{k}_reverse")))
    else:
      params.append(fwd)
  return model, tuple(params)


def to_torch(params: tuple) -> dict:
  """The PyTorch ``state_dict`` of jaxrnn params (as made by `rnn_layers` or `from_torch`).

  Summed biases are exported as ``bias_ih`` with a zero ``bias_hh`` (the GRU's
  ``b_hn`` goes to the n slice of ``bias_hh``), which computes the same function.

  Args:
    params: a tuple over layers of `ElmanParams`, `LSTMParams` or `GRUParams`,
      or `BidirectionalParams` of them.

  Returns:
    A dict of ``torch.Tensor`` for ``module.load_state_dict``.

  Raises:
    ValueError: for params that no PyTorch module holds (mixed kinds, readouts).

  Example:
    >>> import torch, jax, jaxrnn
    >>> model = jaxrnn.rnn_layers("gru", 8, num_layers=2)
    >>> params = model.init(jax.random.key(0), input_size=3)
    >>> m = torch.nn.GRU(3, 8, num_layers=2, batch_first=True)
    >>> m.load_state_dict(jaxrnn.to_torch(params))
    <All keys matched successfully>
  """
  import torch

  if not isinstance(params, tuple | list) or not params:
    raise ValueError(f"params must be a non-empty tuple over layers, got {type(params).__name__}.")
  kinds = set()
  sd: dict[str, np.ndarray] = {}
  for k, layer in enumerate(params):
    pairs = [(layer, f"_l{k}")]
    if isinstance(layer, BidirectionalParams):
      pairs = [(layer.forward, f"_l{k}"), (layer.backward, f"_l{k}_reverse")]
    for p, suffix in pairs:
      kind = cells.kind_of_params(p)
      if kind is None or kind.torch is None:
        raise ValueError(
          f"layer {k} holds {type(p).__name__}; expected the params of a cell PyTorch has "
          f"({', '.join(k.params.__name__ for k in cells.TORCH.values())})."
        )
      kinds.add(type(p))
      sd.update(kind.torch.params_to_torch(p, suffix))
  if len(kinds) > 1:
    raise ValueError(f"layers mix cell kinds {sorted(k.__name__ for k in kinds)}.")
  return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in sd.items()}


def _layer_directions(model: SequenceModel) -> tuple[int, bool]:
  config = dict(model.config)
  if model.name != "rnn_layers":
    raise ValueError(f"expected a model made by rnn_layers or from_torch, got {model.name!r}.")
  return config["num_layers"], config["bidirectional"]


def carry_to_torch(model: SequenceModel, carry: tuple) -> tuple:
  """The carry of an `rnn_layers` model as PyTorch's ``h_n`` (and ``c_n`` for LSTM).

  Args:
    model: the model, from `rnn_layers` or `from_torch`.
    carry: its carry, a tuple over layers.

  Returns:
    ``(h_n,)`` or ``(h_n, c_n)`` as jax arrays of shape
    ``(num_layers * num_directions, *batch, features)``, PyTorch's order.
  """
  num_layers, bidir = _layer_directions(model)
  if len(carry) != num_layers:
    raise ValueError(f"carry has {len(carry)} layers; the model has {num_layers}.")
  flat = []
  for c in carry:
    flat.extend([c.forward, c.backward] if bidir else [c])
  return tuple(jnp.stack(leaves) for leaves in zip(*flat, strict=True))


def carry_from_torch(model: SequenceModel, h_0, c_0=None) -> tuple:
  """PyTorch's ``h_0`` (and ``c_0``) as the carry of an `rnn_layers` model.

  Args:
    model: the model, from `rnn_layers` or `from_torch`.
    h_0: ``(num_layers * num_directions, *batch, H or P)`` array or tensor.
    c_0: ``(num_layers * num_directions, *batch, H)`` for an LSTM, else None.

  Returns:
    The carry: a tuple over layers of `LSTMCarry` / `HiddenCarry`, or
    `BidirectionalCarry` of them.
  """
  num_layers, bidir = _layer_directions(model)
  carry_type = cells.KINDS[dict(model.config)["kind"]].carry
  if ("c" in carry_type._fields) != (c_0 is not None):
    raise ValueError("c_0 must be given for an LSTM and only for an LSTM.")
  h_0 = jnp.asarray(to_numpy(h_0))
  c_0 = None if c_0 is None else jnp.asarray(to_numpy(c_0))
  dirs = 2 if bidir else 1
  if h_0.shape[0] != num_layers * dirs:
    raise ValueError(
      f"h_0 has {h_0.shape[0]} rows; expected num_layers * directions = {num_layers * dirs}."
    )

  def one(i):
    return carry_type(h_0[i]) if c_0 is None else carry_type(h_0[i], c_0[i])

  out = []
  for k in range(num_layers):
    if bidir:
      out.append(BidirectionalCarry(one(2 * k), one(2 * k + 1)))
    else:
      out.append(one(k))
  return tuple(out)
