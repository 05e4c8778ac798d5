"""`TrainState` and one guarded optimizer update, shared by every train step of `jaxrnn.train`.

The update clips the gradient by its global norm (when asked), applies the optax
optimizer, and skips the whole update in-graph when the loss, a gradient, the new
parameters or the new optimizer state hold a NaN or an infinity (`jaxrnn.train`'s
docstring has the semantics of ``skipped`` and ``first_nonfinite``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrnn.cells.base import PyTree


class TrainState(NamedTuple):
  """What a train step reads and returns.

  Attributes:
    step: int32 scalar, the number of train steps run so far (batches
      consumed), skipped ones included.
    params: the model's parameter pytree.
    opt_state: the optax optimizer's state for ``params``.
    skipped: int32 scalar, how many steps were skipped by the non-finite guard.
    first_nonfinite: int32 scalar, the ``step`` (0-based, the value of
      ``step`` before it) of the first skipped step; -1 if none.
  """

  step: jax.Array
  params: PyTree
  opt_state: PyTree
  skipped: Any = np.int32(0)
  first_nonfinite: Any = np.int32(-1)

  @classmethod
  def create(cls, params: PyTree, optimizer: optax.GradientTransformation) -> TrainState:
    """A state at step 0 with ``optimizer.init(params)``.

    Example:
      >>> import jax, optax, jaxrnn
      >>> from jaxrnn.train import TrainState
      >>> params = jaxrnn.gru(4).init(jax.random.key(0), input_size=2)
      >>> state = TrainState.create(params, optax.adam(1e-3))
      >>> int(state.step), state.params.w_hh.shape, int(state.first_nonfinite)
      (0, (4, 12), -1)
    """
    counters = [jnp.zeros((), jnp.int32) for _ in range(2)]  # two buffers: both may be donated
    step, skipped = counters
    return cls(step, params, optimizer.init(params), skipped, jnp.full((), -1, jnp.int32))


def check_optimizer(optimizer: Any) -> None:
  if not isinstance(optimizer, optax.GradientTransformation):
    raise ValueError(
      f"optimizer={type(optimizer).__name__}: expected an optax.GradientTransformation "
      "(e.g. optax.adam(1e-3))."
    )


def check_max_grad_norm(max_grad_norm: Any) -> None:
  if max_grad_norm is None:
    return
  if isinstance(max_grad_norm, bool) or not isinstance(max_grad_norm, int | float):
    raise ValueError(f"max_grad_norm={max_grad_norm!r}: expected a positive number or None.")
  if not max_grad_norm > 0:
    raise ValueError(f"max_grad_norm={max_grad_norm!r}: expected a positive number or None.")


def as_metrics(value: Any, name: str) -> dict[str, Any]:
  if isinstance(value, Mapping):
    return dict(value)
  if value is None:
    return {}
  return {name: value}


def all_finite(*trees: PyTree) -> jax.Array:
  """True when no floating-point leaf of ``trees`` holds a NaN or an infinity."""
  checks = [
    jnp.all(jnp.isfinite(x))
    for x in jax.tree.leaves(trees)
    if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
  ]
  return jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)


def guarded_update(optimizer, max_grad_norm, state, loss, grads):
  """Clipping, the optimizer's update, and the non-finite guard: ``(state, metrics)``."""
  grad_norm = optax.tree.norm(grads)
  clipped = grads
  if max_grad_norm is not None:
    clip = optax.clip_by_global_norm(float(max_grad_norm))
    clipped, _ = clip.update(grads, clip.init(grads))
  updates, opt_state = optimizer.update(clipped, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = all_finite(loss, grads, params, opt_state)

  def keep(new, old):  # in-graph: donated inputs are never returned as they are
    return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

  bad = jnp.logical_not(finite)
  skipped = state.skipped + bad.astype(jnp.int32)
  first = jnp.where(bad & (state.first_nonfinite < 0), state.step, state.first_nonfinite)
  new = TrainState(
    state.step + 1, keep(params, state.params), keep(opt_state, state.opt_state), skipped, first
  )
  metrics = {
    "loss": loss,
    "grad_norm": grad_norm,
    "update_norm": optax.tree.norm(updates),
    "nonfinite": bad,
    "skipped": skipped,
    "first_nonfinite": first,
  }
  return new, metrics
