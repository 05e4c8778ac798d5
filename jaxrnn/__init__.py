"""jaxrnn: pure-functional recurrent networks for JAX."""

from jaxrnn import (
  export,  # a submodule: jaxrnn.export.save / load
  loop,  # a submodule: jaxrnn.loop.fit
)
from jaxrnn.cells import (
  Cell,
  ElmanParams,
  GRUParams,
  HiddenCarry,
  LSTMCarry,
  LSTMParams,
  MinGRUParams,
  MinLSTMParams,
  elman,
  gru,
  lstm,
  min_gru,
  min_lstm,
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
from jaxrnn.version import __version__ as __version__

__all__ = [
  "BidirectionalCarry",
  "BidirectionalParams",
  "Cell",
  "ElmanParams",
  "GRUParams",
  "HiddenCarry",
  "LSTMCarry",
  "LSTMParams",
  "MinGRUParams",
  "MinLSTMParams",
  "SequenceModel",
  "Stream",
  "bidirectional",
  "carry_from_torch",
  "carry_to_torch",
  "elman",
  "export",
  "from_torch",
  "gru",
  "loop",
  "lstm",
  "min_gru",
  "min_lstm",
  "recurrent",
  "rnn_layers",
  "scan",
  "stack",
  "stream",
  "to_torch",
]
