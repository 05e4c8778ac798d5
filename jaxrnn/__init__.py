"""jaxrnn: pure-functional recurrent networks for JAX."""

from jaxrnn import (
  export,  # a submodule: jaxrnn.export.save / load
  loop,  # a submodule: jaxrnn.loop.fit
)
from jaxrnn.cells import (
  Cell,
  CIFGLSTMParams,
  ElmanParams,
  GRUParams,
  HiddenCarry,
  IndRNNParams,
  LSTMCarry,
  LSTMParams,
  MGUParams,
  PeepholeLSTMParams,
  SLSTMCarry,
  SLSTMParams,
  cifg_lstm,
  elman,
  gru,
  indrnn,
  indrnn_constrain,
  lstm,
  mgu,
  peephole_lstm,
  slstm,
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
  "CIFGLSTMParams",
  "Cell",
  "ElmanParams",
  "GRUParams",
  "HiddenCarry",
  "IndRNNParams",
  "LSTMCarry",
  "LSTMParams",
  "LayerNormGRUParams",
  "LayerNormLSTMParams",
  "MGUParams",
  "PeepholeLSTMParams",
  "SLSTMCarry",
  "SLSTMParams",
  "SequenceModel",
  "Stream",
  "bidirectional",
  "carry_from_torch",
  "carry_to_torch",
  "cifg_lstm",
  "elman",
  "export",
  "from_torch",
  "gru",
  "indrnn",
  "indrnn_constrain",
  "layer_norm_gru",
  "layer_norm_lstm",
  "loop",
  "lstm",
  "mgu",
  "peephole_lstm",
  "recurrent",
  "rnn_layers",
  "scan",
  "slstm",
  "stack",
  "stream",
  "to_torch",
]
