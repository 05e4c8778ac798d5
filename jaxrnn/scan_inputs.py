"""`jaxrnn.scan`'s inputs, checked eagerly: layout, feature axes, lengths, carry, resets, noise.

Each check raises a `ValueError` that names the bad value and the expected one; shapes and
dtypes are static, so they are checked eagerly, under `jax.jit` too.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.cells import kernel
from jaxrnn.cells.base import Cell, PyTree


def batch_and_time(
  xs: jax.Array, time_major: bool, features: int = 1
) -> tuple[tuple[int, ...], int]:
  """``(batch_shape, T)`` of ``xs``, whose last ``features`` axes are one step's input."""
  if xs.ndim < 1 + features:
    layout = "(T, *batch, input_size)" if time_major else "(*batch, T, input_size)"
    raise ValueError(
      f"xs has shape {xs.shape} (rank {xs.ndim}); expected rank >= {1 + features}, {layout}."
    )
  end = xs.ndim - features
  if time_major:
    return tuple(xs.shape[1:end]), xs.shape[0]
  return tuple(xs.shape[: end - 1]), xs.shape[end - 1]


def feature_ndim(cell: Cell, params: PyTree, xs: jax.Array, carry: PyTree, time_major: bool) -> int:
  """How many trailing axes of ``xs`` one step reads: 1 (features) for floating inputs.

  Integer (or boolean) inputs, such as token ids, may have none: ``(*batch, T)``. Then
  the carry, when given, says where the batch ends (its leaves' axes beyond the unbatched
  initial carry's); without one, the step is traced abstractly on 1 feature axis, then on
  none, and the first on which it returns a carry of its input's shapes is taken.
  """
  if jnp.issubdtype(xs.dtype, jnp.inexact) or xs.ndim < 2:
    return 1
  if carry is not None:
    try:
      unbatched = jax.eval_shape(lambda p: cell.initial_carry(p, ()), params)
      leaf, leaf0 = jax.tree.leaves(carry)[0], jax.tree.leaves(unbatched)[0]
    except Exception:  # noqa: BLE001 - the usual checks then say what is wrong
      return 1
    return max(0, xs.ndim - 1 - (jnp.ndim(leaf) - len(leaf0.shape)))
  for features in (1, 0):
    batch_shape, _ = batch_and_time(xs, time_major, features)
    x = jax.ShapeDtypeStruct(batch_shape + xs.shape[xs.ndim - features :], xs.dtype)
    try:
      c = jax.eval_shape(lambda p: cell.initial_carry(p, batch_shape), params)  # noqa: B023
      new, _ = jax.eval_shape(cell.step, params, c, x)
    except Exception:  # noqa: BLE001 - this split does not fit the step
      continue
    if jax.tree.map(lambda a: a.shape, new) == jax.tree.map(lambda a: a.shape, c):
      return features
  return 1


def check_seq_lengths(seq_lengths: Any, batch_shape: tuple[int, ...], length: int) -> jax.Array:
  """Validates ``seq_lengths`` eagerly; returns it as an integer array.

  Static properties (dtype, shape) are always checked. Values are checked
  when they are concrete (not traced): ``0 <= seq_lengths <= T``. Under
  `jax.jit` values cannot be seen, and they are clamped to ``[0, T]`` instead.
  """
  if isinstance(seq_lengths, jax.core.Tracer):
    arr = seq_lengths
  else:
    arr = np.asarray(seq_lengths) if not isinstance(seq_lengths, jax.Array) else seq_lengths
  if not jnp.issubdtype(arr.dtype, jnp.integer):
    raise ValueError(
      f"seq_lengths has dtype {arr.dtype}; expected an integer dtype (lengths count time steps)."
    )
  if tuple(arr.shape) != batch_shape:
    raise ValueError(
      f"seq_lengths has shape {tuple(arr.shape)}; expected the batch shape of xs, {batch_shape}."
    )
  if not isinstance(arr, jax.core.Tracer):
    host = np.asarray(arr)
    if host.size and (host.min() < 0 or host.max() > length):
      raise ValueError(
        f"seq_lengths must lie in [0, T={length}]; got values from {host.min()} to {host.max()}."
      )
  return jnp.asarray(arr)


def check_carry(carry: PyTree, batch_shape: tuple[int, ...]) -> None:
  for path, leaf in jax.tree_util.tree_leaves_with_path(carry):
    shape = tuple(jnp.shape(leaf))
    if shape[:-1] != batch_shape:
      name = "carry" + jax.tree_util.keystr(path)
      raise ValueError(
        f"{name} has shape {shape}; expected (*batch, features) with the batch shape of xs, "
        f"{batch_shape}."
      )


def check_input_size(params: PyTree, xs: jax.Array) -> None:
  expected = getattr(params, "input_size", None)
  if isinstance(expected, int) and xs.shape[-1] != expected:
    raise ValueError(
      f"xs has {xs.shape[-1]} features (shape {xs.shape}), but the params expect "
      f"input_size={expected}."
    )


def check_noise(noise: Any, carry: PyTree, length: int, padded: int):
  """``(h_mask, keep)`` of ``noise`` checked against the carry; ``keep`` padded like ``xs``."""
  if noise is None:
    return None, None
  if not isinstance(noise, kernel.Noise):
    raise ValueError(f"noise is a {type(noise).__name__}; expected a jaxrnn.cells.kernel.Noise.")
  if noise.h_mask is not None:
    h = kernel.hidden(carry)
    if tuple(noise.h_mask.shape) != tuple(h.shape):
      raise ValueError(
        f"noise.h_mask has shape {tuple(noise.h_mask.shape)}; expected the hidden state's "
        f"{tuple(h.shape)}."
      )
  keep = noise.keep
  if keep is not None:

    def pad(k, c):
      if k is None:
        return None
      if tuple(k.shape) != (length,) + tuple(c.shape):
        raise ValueError(
          f"a noise.keep leaf has shape {tuple(k.shape)}; expected (T, *batch, F) = "
          f"{(length,) + tuple(c.shape)}."
        )
      return jnp.concatenate([k, jnp.zeros((padded - length,) + k.shape[1:], k.dtype)])

    keep = jax.tree.map(pad, keep, carry, is_leaf=lambda a: a is None)
  return noise.h_mask, keep


def check_resets(resets: Any, batch_shape: tuple[int, ...], length: int, time_major: bool):
  """Validates ``resets`` eagerly: a boolean ``(*batch, T)`` (``(T, *batch)`` if time-major)."""
  if not isinstance(resets, jax.Array | jax.core.Tracer):
    resets = np.asarray(resets)
  expected = (length, *batch_shape) if time_major else (*batch_shape, length)
  if resets.dtype != jnp.bool_:
    raise ValueError(
      f"resets has dtype {resets.dtype}; expected bool (True at t starts a new segment at t)."
    )
  if tuple(resets.shape) != expected:
    layout = "(T, *batch)" if time_major else "(*batch, T)"
    raise ValueError(
      f"resets has shape {tuple(resets.shape)}; expected {layout} = {expected}, like xs "
      "without its feature axis."
    )
  return jnp.asarray(resets)
