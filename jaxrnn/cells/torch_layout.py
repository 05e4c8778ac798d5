"""PyTorch's ``torch.nn.RNNBase`` layout, as each cell declares it (torch is imported only
inside `to_tensor`).

PyTorch stores ``weight_ih_l{k}`` as ``(gates * H, I)`` and computes ``x @ W.T``;
jaxrnn stores ``w_ih = W.T``. PyTorch's two biases are summed into one ``b`` where
the math allows it (a cell's `TorchLayout` says how); exported back, the sum goes to
``bias_ih`` with a zero ``bias_hh``, which computes the same function.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class TorchLayout(NamedTuple):
  """How a cell maps onto a ``torch.nn.RNNBase`` module (for `jaxrnn.from_torch`).

  Attributes:
    module: the module's class name (``"LSTM"``, ``"GRU"``, ``"RNN"``).
    cell_kwargs: ``cell_kwargs(module) -> dict``, the factory's keyword arguments
      (``use_bias``, ``proj_size``...) for the module's options.
    params_from_torch: ``(state_dict, suffix) -> params`` for one layer and
      direction (``suffix`` like ``"_l0"`` or ``"_l1_reverse"``).
    params_to_torch: ``(params, suffix) -> dict`` of NumPy arrays, the inverse.
  """

  module: str
  cell_kwargs: Callable[[Any], dict[str, Any]]
  params_from_torch: Callable[[Mapping[str, Any], str], Any]
  params_to_torch: Callable[[Any, str], dict[str, np.ndarray]]


class Weights(NamedTuple):
  """One layer's weights read from a state dict: transposed to ``x @ w``, biases as NumPy."""

  w_ih: jax.Array
  w_hh: jax.Array
  b_ih: np.ndarray | None
  b_hh: np.ndarray | None


def numpy_dtype(t: Any) -> np.dtype:
  """The NumPy dtype of a torch tensor (or array): ``torch.bfloat16`` -> ``jnp.bfloat16``."""
  if hasattr(t, "detach"):
    return jnp.dtype(str(t.dtype).removeprefix("torch."))
  return np.asarray(t).dtype


def to_numpy(t: Any) -> np.ndarray:
  """A torch tensor (or array) as NumPy in its own dtype, detached from autograd.

  NumPy has no bfloat16, so a bfloat16 tensor goes through float32 (exactly) to
  ``jnp.bfloat16``.

  Example:
    >>> import torch
    >>> to_numpy(torch.ones(2, 3, dtype=torch.bfloat16)).dtype
    dtype(bfloat16)
  """
  if not hasattr(t, "detach"):
    return np.asarray(t)
  t = t.detach().cpu()
  dtype = numpy_dtype(t)
  return t.float().numpy().astype(dtype) if dtype == jnp.bfloat16 else t.numpy()


def to_tensor(a: Any) -> Any:
  """A NumPy or jax array as a torch tensor of the same dtype (bfloat16 via float32, exactly)."""
  import torch

  a = np.asarray(a)
  if a.dtype == jnp.bfloat16:
    return torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16)
  return torch.from_numpy(np.array(a, copy=True))


def weights(sd: Mapping[str, Any], suffix: str) -> Weights:
  """``weight_ih``, ``weight_hh`` (transposed) and the biases (None without) of one layer."""
  w_ih = jnp.asarray(to_numpy(sd[f"weight_ih{suffix}"]).T)
  w_hh = jnp.asarray(to_numpy(sd[f"weight_hh{suffix}"]).T)
  if f"bias_ih{suffix}" not in sd:
    return Weights(w_ih, w_hh, None, None)
  return Weights(w_ih, w_hh, to_numpy(sd[f"bias_ih{suffix}"]), to_numpy(sd[f"bias_hh{suffix}"]))


def state(w_ih, w_hh, b, b_hh: np.ndarray | None, suffix: str) -> dict[str, np.ndarray]:
  """The state-dict entries of one layer; ``b`` goes to ``bias_ih``, ``b_hh`` (zeros if None)."""
  out = {f"weight_ih{suffix}": np.asarray(w_ih).T, f"weight_hh{suffix}": np.asarray(w_hh).T}
  if b is not None:
    b = np.asarray(b)
    out[f"bias_ih{suffix}"] = b
    out[f"bias_hh{suffix}"] = np.zeros_like(b) if b_hh is None else b_hh
  return out
