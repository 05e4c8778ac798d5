"""`torch.nn.RNN` / `LSTM` / `GRU` (and their ``*Cell``) to jaxrnn and back. torch is imported
inside functions only.

Each cell declares its PyTorch layout next to its own code (`jaxrnn.cells.TorchLayout`);
this module reads those declarations through `jaxrnn.cells.TORCH`. PyTorch stores
``weight_ih_l{k}`` as ``(gates * H, I)`` and computes ``x @ W.T``; jaxrnn stores
``w_ih = W.T``. PyTorch's two biases are summed into ``b``, except the GRU's
``b_hn``, which sits inside the reset product and stays apart.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn import cells
from jaxrnn.cells.torch_layout import numpy_dtype, to_numpy, to_tensor
from jaxrnn.layers import BidirectionalCarry, BidirectionalParams, SequenceModel
from jaxrnn.rnn_stack import rnn_layers

CELL_MODULES = {f"{name}Cell": kind for name, kind in cells.TORCH.items()}
"""``torch.nn.LSTMCell``, ``GRUCell``, ``RNNCell``: one step, no layers, no projection."""

# Parity with PyTorch's own module in each dtype, outputs and states (absolute, for
# unit-scale inputs): the arithmetic differs in order and, below float32, in where results
# are rounded. Measured worst over 2-layer RNN/LSTM/GRU, hidden 5, 6 steps, 5 seeds:
# float16 1.1e-3, bfloat16 1.2e-2 (2-3 units in the last place); tests/test_interop.py.
TOLERANCES = {"float64": 1e-12, "float32": 1e-5, "float16": 3e-3, "bfloat16": 3e-2}


class _CellAsLayer:
  """A ``torch.nn.*Cell`` read as a one-layer module without projection (its `TorchLayout`)."""

  proj_size = 0

  def __init__(self, module: Any):
    self._module = module

  def __getattr__(self, name: str) -> Any:
    return getattr(self._module, name)


def _dtype(module: Any, dtype: Any) -> np.dtype:
  """The params' dtype: ``dtype``, else the module's; 64-bit only with ``jax_enable_x64``."""
  tensors = list(module.state_dict().values())
  dtype = jnp.dtype(numpy_dtype(tensors[0]) if dtype is None else dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"dtype={dtype}: expected a floating dtype.")
  if dtype.itemsize == 8 and jax.dtypes.canonicalize_dtype(dtype) != dtype:
    raise ValueError(
      f"the module is {dtype}, which JAX holds only with jax_enable_x64 set: call "
      "jax.config.update('jax_enable_x64', True) (or convert inside `with "
      "jax.enable_x64(True):`), or pass dtype=jnp.float32 to convert its weights."
    )
  return dtype


def _state_dict(module: Any, dtype: np.dtype) -> dict[str, np.ndarray]:
  """The module's weights as NumPy, in ``dtype`` or, below 32 bits, in float32 (see `_params`)."""
  work = np.float32 if dtype.itemsize < 4 else dtype
  return {k: to_numpy(v).astype(work) for k, v in module.state_dict().items()}


def _params(kind: Any, sd: dict[str, np.ndarray], dtype: np.dtype, suffix: str) -> Any:
  """One layer and direction's params in ``dtype``: PyTorch's two biases are summed in the
  state dict's dtype (float32 for float16 and bfloat16) and rounded once."""
  params = kind.torch.params_from_torch(sd, suffix)
  return jax.tree.map(lambda a: jnp.asarray(a, dtype), params)


def from_torch(module: Any, *, dtype: Any = None, carry_dtype: Any = None) -> tuple[Any, Any]:
  """Converts a PyTorch recurrent module into a jaxrnn model (or cell) and its params.

  ``torch.nn.RNN``, ``LSTM`` and ``GRU`` become `jaxrnn.rnn_layers` models with
  every option: ``num_layers``, ``bidirectional``, ``bias``, ``batch_first``
  (as ``time_major=not batch_first``), ``nonlinearity``, ``proj_size`` and
  ``dropout`` (applied only when ``apply`` gets a ``key`` and
  ``deterministic=False``; the random masks differ from PyTorch's).
  ``torch.nn.RNNCell``, ``LSTMCell`` and ``GRUCell`` become the `jaxrnn.elman`,
  `jaxrnn.lstm` and `jaxrnn.gru` cells.

  The params keep the module's dtype (float32, float16, bfloat16; float64 with
  ``jax_enable_x64``), unless ``dtype`` converts them. Without x64 a float64
  module raises rather than silently losing precision. Outputs and states
  match PyTorch's to an absolute `TOLERANCES` per dtype: 1e-12 (float64),
  1e-5 (float32), 3e-3 (float16), 3e-2 (bfloat16; both round every gate
  there, at different places). PyTorch keeps a float16 or bfloat16 module's state in
  that dtype; jaxrnn's carry is float32 by default for such params (``carry_dtype``,
  docs/dtypes.md), which is more accurate over long sequences: ``carry_dtype=`` the
  module's dtype reproduces PyTorch's state.

  Args:
    module: one of the six modules above.
    dtype: the params' dtype; None (default) keeps the module's.
    carry_dtype: the cells' ``carry_dtype`` (None: float32 for 16-bit float params, else
      the params' dtype); ``jnp.bfloat16`` for a bfloat16 module keeps PyTorch's state.

  Returns:
    ``(model, params)``: for the layered modules a `SequenceModel` whose
    ``model.apply(params, xs, seq_lengths=...)`` computes what the module
    computes on ``xs`` (packed with ``pack_padded_sequence`` when padded), and
    a tuple over layers; for a cell module, ``(cell, params)``: ``cell.step(params,
    carry, x)`` is ``module(x, h)`` with ``x`` ``(batch, input_size)``.

  Raises:
    ValueError: a module not among the six; a float64 module without
      ``jax_enable_x64`` (pass ``dtype=`` to convert); a non-floating ``dtype``.

  Example:
    >>> import torch, numpy as np, jaxrnn
    >>> m = torch.nn.LSTM(3, 8, num_layers=2, batch_first=True)
    >>> model, params = jaxrnn.from_torch(m)
    >>> x = np.ones((2, 5, 3), np.float32)
    >>> carry, ys = model.apply(params, x)
    >>> np.abs(np.asarray(ys) - m(torch.from_numpy(x))[0].detach().numpy()).max() < 1e-5
    np.True_
    >>> cell, p = jaxrnn.from_torch(torch.nn.GRUCell(3, 4).to(torch.bfloat16))
    >>> carry, y = cell.step(p, cell.initial_carry(p, (2,)), np.ones((2, 3), np.float32))
    >>> y.shape, y.dtype
    ((2, 4), dtype(bfloat16))
  """
  import torch

  name = type(module).__name__
  if isinstance(module, torch.nn.RNNCellBase) and name in CELL_MODULES:
    kind = CELL_MODULES[name]
    dtype = _dtype(module, dtype)
    kwargs = dict(dtype=dtype, carry_dtype=carry_dtype)
    cell = kind.factory(
      int(module.hidden_size), **kwargs, **kind.torch.cell_kwargs(_CellAsLayer(module))
    )
    return cell, _params(kind, _state_dict(module, dtype), dtype, "")
  if not isinstance(module, torch.nn.RNNBase) or name not in cells.TORCH:
    *most, last = [f"torch.nn.{m}" for m in [*cells.TORCH, *CELL_MODULES]]
    raise ValueError(f"module is a {name}; expected {', '.join(most)} or {last}.")
  kind = cells.TORCH[name]
  dtype = _dtype(module, dtype)
  model = rnn_layers(
    kind.name,
    int(module.hidden_size),
    num_layers=int(module.num_layers),
    bidirectional=bool(module.bidirectional),
    dropout_rate=float(module.dropout),
    time_major=not module.batch_first,
    dtype=dtype,
    carry_dtype=carry_dtype,
    **kind.torch.cell_kwargs(module),
  )
  sd, params = _state_dict(module, dtype), []
  for k in range(module.num_layers):
    fwd = _params(kind, sd, dtype, f"_l{k}")
    if module.bidirectional:
      fwd = BidirectionalParams(fwd, _params(kind, sd, dtype, f"_l{k}_reverse"))
    params.append(fwd)
  return model, tuple(params)


def _check_prefix(prefix: Any) -> str:
  if not isinstance(prefix, str) or (prefix and not prefix.endswith(".")):
    raise ValueError(
      f"prefix={prefix!r}: expected '' or the submodule's path ending in '.', e.g. 'lstm.' "
      "for a module held as self.lstm."
    )
  return prefix


def _one_layer(p: Any, where: str, suffix: str) -> tuple[type, dict[str, np.ndarray]]:
  """The state-dict entries of one layer and direction (or of a cell, ``suffix=""``)."""
  kind = cells.kind_of_params(p)
  if kind is None or kind.torch is None:
    raise ValueError(
      f"{where} holds {type(p).__name__}; expected the params of a cell PyTorch has "
      f"({', '.join(k.params.__name__ for k in cells.TORCH.values())})."
    )
  if not suffix and getattr(p, "w_proj", None) is not None:
    raise ValueError(f"{where} has a projection (w_proj); torch.nn.LSTMCell has none.")
  return type(p), kind.torch.params_to_torch(p, suffix)


def to_torch(params: Any, *, prefix: str = "") -> dict:
  """The PyTorch ``state_dict`` of jaxrnn params (as made by `rnn_layers`, a cell or `from_torch`).

  Summed biases are exported as ``bias_ih`` with a zero ``bias_hh`` (the GRU's
  ``b_hn`` goes to the n slice of ``bias_hh``), which computes the same
  function. Tensors keep the params' dtype, bfloat16 included.

  Args:
    params: a tuple over layers of `ElmanParams`, `LSTMParams` or `GRUParams`,
      or `BidirectionalParams` of them, for ``torch.nn.RNN``, ``LSTM`` or
      ``GRU``; or one cell's params (not in a tuple) for ``torch.nn.RNNCell``,
      ``LSTMCell`` or ``GRUCell``.
    prefix: prepended to every key: the submodule's path inside its parent,
      ending in ``"."`` (``"lstm."`` for ``self.lstm``), so that
      ``parent.load_state_dict(to_torch(params, prefix="lstm."), strict=False)``
      fills exactly that submodule.

  Returns:
    A dict of ``torch.Tensor``, ``weight_ih_l0`` ... (``weight_ih`` ... for a cell).

  Raises:
    ValueError: for params that no PyTorch module holds (mixed kinds, readouts,
      a projection in a cell), or a ``prefix`` that does not end in ``"."``.

  Example:
    >>> import torch, jax, jaxrnn
    >>> model = jaxrnn.rnn_layers("gru", 8, num_layers=2)
    >>> params = model.init(jax.random.key(0), input_size=3)
    >>> m = torch.nn.GRU(3, 8, num_layers=2, batch_first=True)
    >>> m.load_state_dict(jaxrnn.to_torch(params))
    <All keys matched successfully>
    >>> sorted(jaxrnn.to_torch(params, prefix="encoder.rnn."))[:2]
    ['encoder.rnn.bias_hh_l0', 'encoder.rnn.bias_hh_l1']
  """
  prefix = _check_prefix(prefix)
  if cells.kind_of_params(params) is not None:  # one cell: torch.nn.*Cell's keys
    _, sd = _one_layer(params, "params", "")
    return {prefix + k: to_tensor(v) for k, v in sd.items()}
  if not isinstance(params, tuple | list) or not params:
    raise ValueError(
      f"params must be a non-empty tuple over layers, or one cell's params; got "
      f"{type(params).__name__}."
    )
  kinds, sd = set(), {}
  for k, layer in enumerate(params):
    pairs = [(layer, f"_l{k}")]
    if isinstance(layer, BidirectionalParams):
      pairs = [(layer.forward, f"_l{k}"), (layer.backward, f"_l{k}_reverse")]
    for p, suffix in pairs:
      kind, entries = _one_layer(p, f"layer {k}", suffix)
      kinds.add(kind)
      sd.update(entries)
  if len(kinds) > 1:
    raise ValueError(f"layers mix cell kinds {sorted(k.__name__ for k in kinds)}.")
  return {prefix + k: to_tensor(v) for k, v in sd.items()}


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
