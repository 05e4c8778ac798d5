"""Cell families, one module each, and the registry that reads what each declares.

A cell module declares a `CellKind` (its name, factory, params and carry types and,
where PyTorch has the cell, its `TorchLayout`); `KINDS` collects them. Adding a cell
is one module in this package, its tests, and its line in `_MODULES` below.
"""

from jaxrnn.cells import elman as _elman
from jaxrnn.cells import gru as _gru
from jaxrnn.cells import lstm as _lstm
from jaxrnn.cells import min_gru as _min_gru
from jaxrnn.cells import min_lstm as _min_lstm
from jaxrnn.cells.base import Cell, CellKind, HiddenCarry
from jaxrnn.cells.elman import ElmanParams, elman
from jaxrnn.cells.gru import GRUParams, gru
from jaxrnn.cells.lstm import LSTMCarry, LSTMParams, lstm
from jaxrnn.cells.min_gru import MinGRUParams, min_gru
from jaxrnn.cells.min_lstm import MinLSTMParams, min_lstm
from jaxrnn.cells.torch_layout import TorchLayout

_MODULES = (_elman, _lstm, _gru, _min_gru, _min_lstm)

KINDS: dict[str, CellKind] = {m.KIND.name: m.KIND for m in _MODULES}
"""Every built-in cell by name: what `rnn_layers(kind, ...)` accepts."""

TORCH: dict[str, CellKind] = {k.torch.module: k for k in KINDS.values() if k.torch is not None}
"""The kinds PyTorch has, by ``torch.nn`` module name: what `from_torch` accepts."""


def kind_of_params(params: object) -> CellKind | None:
  """The built-in kind whose params type ``params`` is, or None."""
  for kind in KINDS.values():
    if isinstance(params, kind.params):
      return kind
  return None


__all__ = [
  "KINDS",
  "TORCH",
  "Cell",
  "CellKind",
  "ElmanParams",
  "GRUParams",
  "HiddenCarry",
  "LSTMCarry",
  "LSTMParams",
  "MinGRUParams",
  "MinLSTMParams",
  "TorchLayout",
  "elman",
  "gru",
  "kind_of_params",
  "lstm",
  "min_gru",
  "min_lstm",
]
