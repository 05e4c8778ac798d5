"""jaxrnn: pure-functional recurrent networks for JAX."""

from jaxrnn import (
  cells,  # a subpackage: the cells and their registry (jaxrnn.cells.KINDS)
  export,  # a submodule: jaxrnn.export.save / load
  loop,  # a submodule: jaxrnn.loop.fit
  testing,  # a submodule: jaxrnn.testing.check_cell
)
from jaxrnn.cells import *  # noqa: F403  (the names in jaxrnn.cells.CELLS are public here)
from jaxrnn.interop import carry_from_torch, carry_to_torch, from_torch, to_torch
from jaxrnn.layers import (
  BidirectionalCarry,
  BidirectionalParams,
  SequenceModel,
  bidirectional,
  recurrent,
  stack,
)
from jaxrnn.learned_carry import LearnedCarryParams, learned_initial_carry
from jaxrnn.recurrence import linear_recurrence
from jaxrnn.rnn_stack import rnn_layers
from jaxrnn.scan import scan
from jaxrnn.stream import Stream, stream
from jaxrnn.version import __version__ as __version__

__all__ = [
  "BidirectionalCarry",
  "BidirectionalParams",
  "LearnedCarryParams",
  "SequenceModel",
  "Stream",
  "bidirectional",
  "carry_from_torch",
  "carry_to_torch",
  "export",
  "from_torch",
  "learned_initial_carry",
  "linear_recurrence",
  "loop",
  "recurrent",
  "rnn_layers",
  "scan",
  "stack",
  "stream",
  "testing",
  "to_torch",
]
__all__ += cells.CELLS  # the cells, their params and carry types (one list, in jaxrnn.cells)
__all__.sort()
