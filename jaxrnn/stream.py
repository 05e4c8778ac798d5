"""Streaming inference: a sequence model fed one time step at a time.

`stream` turns a forward-only model (`recurrent`, `stack`, `rnn_layers`, a
user's `SequenceModel` with a ``step``, or a bare `Cell`) into a `Stream`, a
NamedTuple of two pure functions over explicit params and state, ready for
`jax.jit`. Feeding a sequence step by step gives what ``model.apply`` gives on
the whole sequence, and a ``reset`` mask restarts chosen rows from the initial
state, like haiku's ``ResetCore``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn import cells, params_check
from jaxrnn.cells import kernel
from jaxrnn.cells.base import Cell, PyTree
from jaxrnn.model import SequenceModel

StepFn = Callable[[PyTree, PyTree, jax.Array], tuple[PyTree, jax.Array]]


class Stream(NamedTuple):
  """A model as a step-by-step function, for online inference.

  Attributes:
    init_state: ``init_state(params, batch_shape=()) -> state``, the model's
      initial carry (for a stack, a tuple with one carry per layer). The state
      *is* the model's carry: it can be passed to ``model.apply`` as ``carry``
      and the carry returned by ``model.apply`` can be streamed on from.
    step: ``step(params, state, x, reset=None) -> (state, y)`` with ``x`` of
      shape ``(*batch, input_size)`` and ``y`` ``(*batch, output_size)``.
      ``reset``, a boolean ``(*batch,)`` mask, first puts the rows where it is
      True back to the initial state. Pure, so ``jax.jit(step)`` compiles once
      per shape; ``donate_argnums=1`` lets XLA update the state in place.
  """

  init_state: Callable[..., PyTree]
  step: Callable[..., tuple[PyTree, jax.Array]]


ORDER = "step(params, state, x, reset=None)"


def _batch_shape(state: PyTree, init: PyTree) -> tuple[int, ...]:
  """The state's batch shape: its first leaf's axes before the unbatched carry's own.

  Read off the carry, not off ``x``, so that a model on token ids ``(*batch,)`` streams
  like one on features ``(*batch, input_size)``.
  """
  leaves, leaves0 = jax.tree.leaves(state), jax.tree.leaves(init)
  if not leaves:
    return ()
  shape = tuple(jnp.shape(leaves[0]))
  return shape[: len(shape) - jnp.ndim(leaves0[0])]


def _check_reset(reset: Any, batch_shape: tuple[int, ...]) -> jax.Array:
  if not isinstance(reset, jax.Array | jax.core.Tracer):
    reset = np.asarray(reset)
  if reset.dtype != jnp.bool_:
    raise ValueError(f"reset has dtype {reset.dtype}; expected bool (True restarts a row).")
  if tuple(reset.shape) != batch_shape:
    raise ValueError(
      f"reset has shape {tuple(reset.shape)}; expected the state's batch shape, {batch_shape}."
    )
  return jnp.asarray(reset)


def stream(model: SequenceModel | Cell) -> Stream:
  """Streaming (online) inference over a forward-only model, one step at a time.

  Dropout is off: streaming is inference, as ``apply(..., deterministic=True)``.

  Args:
    model: a `SequenceModel` whose ``step`` is not None (`jaxrnn.recurrent` with
      ``reverse=False``, `jaxrnn.stack` or `jaxrnn.rnn_layers` with
      ``bidirectional=False``, single- or multi-layer, with any cells, user
      cells included; or a user's model with a step); or any `Cell`.

  Returns:
    A `Stream` ``(init_state, step)``. Stepping through ``xs[..., t, :]`` for
    ``t = 0, 1, ...`` gives ``model.apply(params, xs)[1][..., t, :]`` and, at
    the end, ``model.apply``'s carry.

  Raises:
    ValueError: for a model whose ``step`` is None: bidirectional or reverse
      (it needs the future). ``step`` raises it for
      a ``reset`` that is not a boolean ``(*batch,)`` mask (the batch shape is the
      state's, so ``x`` may be ``(*batch,)`` token ids), for params that are not the
      model's (`jaxrnn.params_check`) or a state of another kind, and the cells'
      own checks for a wrong input size or state shape.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> model = jaxrnn.rnn_layers("lstm", 8, num_layers=2)
    >>> params = model.init(jax.random.key(0), input_size=3)
    >>> s = jaxrnn.stream(model)
    >>> step = jax.jit(s.step)
    >>> state = s.init_state(params, batch_shape=(2,))
    >>> state, y = step(params, state, jnp.ones((2, 3)))
    >>> state, y = step(params, state, jnp.ones((2, 3)), jnp.array([True, False]))
    >>> y.shape, state[1].c.shape
    ((2, 8), (2, 8))
  """
  if not isinstance(model, SequenceModel | Cell):
    raise ValueError(
      f"stream: expected a jaxrnn.SequenceModel or jaxrnn.Cell, got {type(model).__name__}."
    )
  step_fn: StepFn | None = model.step
  if step_fn is None:
    reason = getattr(model, "no_step", "") or "cannot run one step at a time (its step is None)."
    raise ValueError(f"stream: the model {reason}")
  initial_carry = model.initial_carry

  def init_state(params: PyTree, batch_shape: Any = ()) -> PyTree:
    return initial_carry(params, cells.base.as_batch_shape(batch_shape))

  def step(params: PyTree, state: PyTree, x: Any, reset: Any = None) -> tuple[PyTree, jax.Array]:
    params_check.check_arrays("stream.step", ORDER, x=x)
    params_check.check(model, params, "stream.step", ORDER, (state, x))
    params_check.check_carry(model, params, state, "stream.step", "state")
    if not isinstance(x, jax.Array | jax.core.Tracer):
      x = jnp.asarray(x)
    if reset is not None:
      # The unbatched initial carry, broadcast: works for symbolic batch sizes too.
      init = initial_carry(params, ())
      if jax.tree.structure(state) != jax.tree.structure(init):
        raise ValueError(
          f"state has structure {jax.tree.structure(state)}; expected the model's carry, "
          f"{jax.tree.structure(init)}."
        )
      reset = _check_reset(reset, _batch_shape(state, init))
      state = kernel.restart(reset, state, init)
    return step_fn(params, state, x)

  return Stream(init_state, step)
