"""Streaming inference: a sequence model fed one time step at a time.

`stream` turns a forward-only model (`recurrent`, `stack`, `rnn_layers`, or a
bare `Cell`) into a `Stream`, a NamedTuple of two pure functions over explicit
params and state, ready for `jax.jit`. Feeding a sequence step by step gives
what ``model.apply`` gives on the whole sequence, and a ``reset`` mask restarts
chosen rows from the initial state, like haiku's ``ResetCore``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn import cells
from jaxrnn.cells.base import Cell, PyTree
from jaxrnn.layers import CELL_FACTORIES, SequenceModel

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


def _cell_step(name: str, cell_config: Any, where: str) -> StepFn:
  if name not in CELL_FACTORIES:
    raise ValueError(
      f"stream: {where} uses the cell {name!r}, which cannot be rebuilt from its config; "
      f"expected one of {tuple(CELL_FACTORIES)} (for a custom cell, stream the Cell itself: "
      "jaxrnn.stream(cell))."
    )
  return CELL_FACTORIES[name](**dict(cell_config)).step


def _stack_step(steps: list[StepFn], where: str) -> StepFn:
  n = len(steps)

  def step(params, carry, x):
    for name, tree in (("params", params), ("state", carry)):
      if not isinstance(tree, tuple | list) or len(tree) != n:
        got = f"{len(tree)} entries" if isinstance(tree, tuple | list) else type(tree).__name__
        raise ValueError(f"stream: {name} of {where} has {got}; expected a tuple of {n} layers.")
    new_carry = []
    for layer_step, p, c in zip(steps, params, carry, strict=True):
      c, x = layer_step(p, c, x)
      new_carry.append(c)
    return tuple(new_carry), x

  return step


def _model_step(name: str, config: Any, where: str) -> StepFn:
  """The one-step function of a model, rebuilt from its ``name`` and ``config``."""
  cfg = dict(config)
  if name == "recurrent":
    if cfg.get("reverse", False):
      raise ValueError(
        f"stream: {where} reads in reverse (reverse=True), which needs the whole sequence "
        "first; expected a forward-only model (reverse=False)."
      )
    return _cell_step(cfg["cell"], cfg["cell_config"], where)
  if name == "rnn_layers":
    if cfg.get("bidirectional", False):
      raise ValueError(
        f"stream: {where} is bidirectional (bidirectional=True), and its backward pass needs "
        "the whole sequence first; expected bidirectional=False."
      )
    step = _cell_step(cfg["kind"], cfg["cell_config"], where)
    return _stack_step([step] * cfg["num_layers"], where)
  if name == "stack":
    steps = [
      _model_step(layer_name, layer_config, f"layer {i} of {where}")
      for i, (layer_name, layer_config) in enumerate(cfg["layers"])
    ]
    return _stack_step(steps, where)
  if name == "bidirectional":
    raise ValueError(
      f"stream: {where} is bidirectional, and its backward pass needs the whole sequence "
      "first; expected a forward-only model."
    )
  raise ValueError(
    f"stream: {where} has name {name!r}; expected a model built by jaxrnn.recurrent, "
    "jaxrnn.stack or jaxrnn.rnn_layers, or a jaxrnn.Cell."
  )


def _check_reset(reset: Any, batch_shape: tuple[int, ...]) -> jax.Array:
  if not isinstance(reset, jax.Array | jax.core.Tracer):
    reset = np.asarray(reset)
  if reset.dtype != jnp.bool_:
    raise ValueError(f"reset has dtype {reset.dtype}; expected bool (True restarts a row).")
  if tuple(reset.shape) != batch_shape:
    raise ValueError(
      f"reset has shape {tuple(reset.shape)}; expected the batch shape of x, {batch_shape}."
    )
  return jnp.asarray(reset)


def stream(model: SequenceModel | Cell) -> Stream:
  """Streaming (online) inference over a forward-only model, one step at a time.

  Dropout is off: streaming is inference, as ``apply(..., deterministic=True)``.

  Args:
    model: a `SequenceModel` built by `jaxrnn.recurrent` (``reverse=False``),
      `jaxrnn.stack` or `jaxrnn.rnn_layers` (``bidirectional=False``), single-
      or multi-layer, with built-in cells; or any `Cell`, custom ones included.

  Returns:
    A `Stream` ``(init_state, step)``. Stepping through ``xs[..., t, :]`` for
    ``t = 0, 1, ...`` gives ``model.apply(params, xs)[1][..., t, :]`` and, at
    the end, ``model.apply``'s carry.

  Raises:
    ValueError: for a bidirectional or reverse model (it needs the future), or
      a model or cell that streaming cannot take apart. ``step`` raises it for
      a ``reset`` that is not a boolean ``(*batch,)`` mask, and the cells'
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
  if isinstance(model, Cell):
    step_fn: StepFn = model.step
  elif isinstance(model, SequenceModel):
    step_fn = _model_step(model.name, model.config, "the model")
  else:
    raise ValueError(
      f"stream: expected a jaxrnn.SequenceModel or jaxrnn.Cell, got {type(model).__name__}."
    )
  initial_carry = model.initial_carry

  def init_state(params: PyTree, batch_shape: Any = ()) -> PyTree:
    return initial_carry(params, cells.base.as_batch_shape(batch_shape))

  def step(params: PyTree, state: PyTree, x: Any, reset: Any = None) -> tuple[PyTree, jax.Array]:
    if not isinstance(x, jax.Array | jax.core.Tracer):
      x = jnp.asarray(x)
    if x.ndim < 1:
      raise ValueError(f"x has shape {x.shape}; expected (*batch, input_size).")
    if reset is not None:
      reset = _check_reset(reset, tuple(x.shape[:-1]))
      # The unbatched initial carry, broadcast: works for symbolic batch sizes too.
      init = initial_carry(params, ())
      if jax.tree.structure(state) != jax.tree.structure(init):
        raise ValueError(
          f"state has structure {jax.tree.structure(state)}; expected the model's carry, "
          f"{jax.tree.structure(init)}."
        )

      def restart(s, s0):
        mask = jnp.reshape(reset, reset.shape + (1,) * (s.ndim - reset.ndim))
        return jnp.where(mask, jnp.broadcast_to(s0, s.shape), s)

      state = jax.tree.map(restart, state, init)
    return step_fn(params, state, x)

  return Stream(init_state, step)
