"""Cell families: one module each."""

from jaxrnn.cells.base import Cell, HiddenCarry, LSTMCarry
from jaxrnn.cells.elman import ElmanParams, elman
from jaxrnn.cells.gru import GRUParams, gru
from jaxrnn.cells.lstm import LSTMParams, lstm

__all__ = [
  "Cell",
  "ElmanParams",
  "GRUParams",
  "HiddenCarry",
  "LSTMCarry",
  "LSTMParams",
  "elman",
  "gru",
  "lstm",
]
