"""Weight import and export. PyTorch's layout is the interchange format."""

from jaxrnn.interop.torch import carry_from_torch, carry_to_torch, from_torch, to_torch

__all__ = ["carry_from_torch", "carry_to_torch", "from_torch", "to_torch"]
