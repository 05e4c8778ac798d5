"""Cell families, one module each, and the registry that reads what each declares.

A cell module declares a `CellKind` (its name, factory, params and carry types and,
where PyTorch has the cell, its `TorchLayout`); `KINDS` collects them. Adding a cell
is one module in this package (built on `jaxrnn.cells.factory`), its tests, its line in
`_MODULES` and its names in `__all__` below, the one list `jaxrnn` re-exports (`CELLS`).
"""

from jaxrnn.cells import cifg_lstm as _cifg_lstm
from jaxrnn.cells import elman as _elman
from jaxrnn.cells import gru as _gru
from jaxrnn.cells import indrnn as _indrnn
from jaxrnn.cells import layer_norm_gru as _layer_norm_gru
from jaxrnn.cells import layer_norm_lstm as _layer_norm_lstm
from jaxrnn.cells import lru as _lru
from jaxrnn.cells import lstm as _lstm
from jaxrnn.cells import mamba as _mamba
from jaxrnn.cells import mgu as _mgu
from jaxrnn.cells import min_gru as _min_gru
from jaxrnn.cells import min_lstm as _min_lstm
from jaxrnn.cells import mlstm as _mlstm
from jaxrnn.cells import peephole_lstm as _peephole_lstm
from jaxrnn.cells import rg_lru as _rg_lru
from jaxrnn.cells import s5 as _s5
from jaxrnn.cells import slstm as _slstm
from jaxrnn.cells.base import Cell, CellKind, HiddenCarry, LSTMCarry
from jaxrnn.cells.cifg_lstm import CIFGLSTMParams, cifg_lstm
from jaxrnn.cells.elman import ElmanParams, elman
from jaxrnn.cells.gru import GRUParams, gru
from jaxrnn.cells.indrnn import IndRNNParams, indrnn, indrnn_constrain
from jaxrnn.cells.layer_norm_gru import LayerNormGRUParams, layer_norm_gru
from jaxrnn.cells.layer_norm_lstm import LayerNormLSTMParams, layer_norm_lstm
from jaxrnn.cells.lru import LRUParams, lru
from jaxrnn.cells.lstm import LSTMParams, lstm
from jaxrnn.cells.mamba import MambaCarry, MambaParams, mamba
from jaxrnn.cells.mgu import MGUParams, mgu
from jaxrnn.cells.min_gru import MinGRUParams, min_gru
from jaxrnn.cells.min_lstm import MinLSTMParams, min_lstm
from jaxrnn.cells.mlstm import MLSTMCarry, MLSTMParams, mlstm
from jaxrnn.cells.peephole_lstm import PeepholeLSTMParams, peephole_lstm
from jaxrnn.cells.rg_lru import RGLRUCarry, RGLRUParams, rg_lru
from jaxrnn.cells.s5 import S5Params, s5
from jaxrnn.cells.slstm import SLSTMCarry, SLSTMParams, slstm
from jaxrnn.cells.torch_layout import TorchLayout

_MODULES = (
  _elman,
  _lstm,
  _gru,
  _layer_norm_lstm,
  _layer_norm_gru,
  _peephole_lstm,
  _cifg_lstm,
  _mgu,
  _indrnn,
  _slstm,
  _min_gru,
  _min_lstm,
  _lru,
  _rg_lru,
  _s5,
  _mamba,
  _mlstm,
)

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
  "CIFGLSTMParams",
  "Cell",
  "ElmanParams",
  "GRUParams",
  "HiddenCarry",
  "IndRNNParams",
  "LRUParams",
  "LSTMCarry",
  "LSTMParams",
  "LayerNormGRUParams",
  "LayerNormLSTMParams",
  "MGUParams",
  "MambaCarry",
  "MambaParams",
  "MLSTMCarry",
  "MLSTMParams",
  "MinGRUParams",
  "MinLSTMParams",
  "PeepholeLSTMParams",
  "RGLRUCarry",
  "RGLRUParams",
  "S5Params",
  "SLSTMCarry",
  "SLSTMParams",
  "cifg_lstm",
  "elman",
  "gru",
  "indrnn",
  "indrnn_constrain",
  "layer_norm_gru",
  "layer_norm_lstm",
  "lru",
  "lstm",
  "mamba",
  "mgu",
  "min_gru",
  "min_lstm",
  "mlstm",
  "peephole_lstm",
  "rg_lru",
  "s5",
  "slstm",
]
CELLS = tuple(__all__)
"""The cells, their params and carry types: the names `jaxrnn` re-exports (and lists)."""

__all__ += ["KINDS", "TORCH", "CellKind", "TorchLayout", "kind_of_params"]  # the registry
