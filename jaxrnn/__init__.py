"""jaxrnn: pure-functional recurrent networks for JAX."""

from jaxrnn import export  # a submodule: jaxrnn.export.save / load
from jaxrnn.cells import (
  Cell,
  ElmanParams,
  GRUParams,
  HiddenCarry,
  LSTMCarry,
  LSTMParams,
  elman,
  gru,
  lstm,
)
from jaxrnn.interop import carry_from_torch, carry_to_torch, from_torch, to_torch
from jaxrnn.layers import (
  BidirectionalCarry,
  BidirectionalParams,
  SequenceModel,
  bidirectional,
  recurrent,
  rnn_layers,
  stack,
)
from jaxrnn.scan import scan
from jaxrnn.stream import Stream, stream

__version__ = "0.1.0"

__all__ = [
  "BidirectionalCarry",
  "BidirectionalParams",
  "Cell",
  "ElmanParams",
  "GRUParams",
  "HiddenCarry",
  "LSTMCarry",
  "LSTMParams",
  "SequenceModel",
  "Stream",
  "bidirectional",
  "carry_from_torch",
  "carry_to_torch",
  "elman",
  "export",
  "from_torch",
  "gru",
  "lstm",
  "recurrent",
  "rnn_layers",
  "scan",
  "stack",
  "stream",
  "to_torch",
]
