"""Kept for old imports: the built-in factories' shared arguments live in `jaxrnn.cells.builtin`."""

from jaxrnn.cells.builtin import (
  config,
  gate_weights,
  library_cell,
  uniform_or_zeros,
  zeros_carry,
)

__all__ = ["config", "gate_weights", "library_cell", "uniform_or_zeros", "zeros_carry"]
