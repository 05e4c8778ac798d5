"""Training with optax: a jit-compiled step, evaluation and truncated BPTT.

The pieces are pure functions of explicit state, so they compose with the rest
of JAX:

- `TrainState` ``(step, params, opt_state, skipped, first_nonfinite)`` and
  `make_train_step`, which turns a loss function and any optax optimizer into
  ``step(state, batch) -> (state, metrics)``, with global-norm gradient clipping
  applied before the optimizer (so the optimizer's state does not depend on the
  clipping).
- `make_eval_step`: a jit-compiled metric function.
- `make_tbptt_step`: truncated backpropagation through time over long streams;
  the carry flows from window to window, the gradient stops at window edges,
  and there is one optimizer update per window.

Every step has an in-graph non-finite guard (like `optax.apply_if_finite`): if
the loss, a gradient, the new parameters or the new optimizer state hold a NaN
or an infinity, the update is skipped (``params`` and ``opt_state`` stay as
they were, selected with `jnp.where` inside the compiled program, so it is
safe with donated buffers), ``skipped`` counts it and ``first_nonfinite``
records the step of the first one. ``state.step`` advances on a skipped step
too: it counts the batches consumed (the step of ``batch_fn(step)`` in
`jaxrnn.loop.fit`), while the optimizer's own counters (Adam's ``count``)
count the updates applied.

The step functions close over nothing device-specific (no ``pmap``, no axis
names): the loss is a mean over the batch, so under `jax.jit` with a batch
sharded over a `jax.sharding.Mesh` the same step computes the global gradient;
`jaxrnn.sharding.make_sharded_train_step` compiles it with
``in_shardings``/``out_shardings``. The resumable loop, `jaxrnn.loop.fit`, and
`jaxrnn.checkpoint` build on this module; it imports neither.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxrnn import train_state
from jaxrnn.cells.base import PyTree
from jaxrnn.train_state import TrainState

__all__ = [
  "TrainState",
  "make_eval_step",
  "make_tbptt_step",
  "make_train_step",
  "split_windows",
  "window_keys",
]


def make_train_step(
  loss_fn: Callable[..., Any],
  optimizer: optax.GradientTransformation,
  *,
  max_grad_norm: float | None = 1.0,
  has_aux: bool = False,
  jit: bool = True,
  donate: bool = False,
) -> Callable[[TrainState, PyTree], tuple[TrainState, dict[str, jax.Array]]]:
  """A train step ``step(state, batch) -> (state, metrics)`` for any optax optimizer.

  The step computes ``loss_fn(params, batch)`` and its gradient, clips the
  gradient to global norm ``max_grad_norm`` (``optax.clip_by_global_norm``),
  applies ``optimizer``, and increments ``state.step``; a step with a non-finite
  loss, gradient or result is skipped (see the module docstring). Put a PRNG key in the
  batch if the loss needs randomness (dropout): the step itself has none. For a
  `jax.sharding.Mesh`, `jaxrnn.sharding.make_sharded_train_step` compiles this
  same step with the mesh's shardings.

  Args:
    loss_fn: ``loss_fn(params, batch) -> loss``, a scalar, or with ``has_aux``
      ``-> (loss, aux)`` where ``aux`` is a dict of scalars (or one scalar).
    optimizer: an ``optax.GradientTransformation``; ``state.opt_state`` is its state.
    max_grad_norm: clip threshold for the gradient's global norm; None: no clipping.
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
    jit: compile the step with `jax.jit`.
    donate: donate the input state's buffers to the output (saves memory;
      the input state must not be used afterwards).

  Returns:
    ``step(state, batch) -> (state, metrics)``; ``metrics`` holds ``loss``,
    ``grad_norm`` (before clipping), ``update_norm``, ``nonfinite`` (this step
    was skipped), ``skipped`` and ``first_nonfinite`` (as in the new state) and
    the entries of ``aux``.

  Raises:
    ValueError: if ``optimizer`` is not an optax transformation or
      ``max_grad_norm`` is not positive.

  Example:
    >>> import jax, jax.numpy as jnp, optax, jaxrnn
    >>> from jaxrnn.train import TrainState, make_train_step
    >>> cell = jaxrnn.elman(8, output_size=1)
    >>> def loss_fn(params, batch):
    ...   _, ys = jaxrnn.scan(cell, params, batch["x"])
    ...   return jnp.mean((ys[:, -1, 0] - batch["y"]) ** 2)
    >>> opt = optax.adam(1e-2)
    >>> state = TrainState.create(cell.init(jax.random.key(0), input_size=2), opt)
    >>> step = make_train_step(loss_fn, opt, max_grad_norm=1.0)
    >>> batch = {"x": jnp.ones((4, 5, 2)), "y": jnp.zeros(4)}
    >>> state, metrics = step(state, batch)
    >>> int(state.step), sorted(metrics)
    (1, ['first_nonfinite', 'grad_norm', 'loss', 'nonfinite', 'skipped', 'update_norm'])
    >>> state, metrics = step(state, {"x": jnp.ones((4, 5, 2)), "y": jnp.full(4, jnp.nan)})
    >>> int(state.step), bool(metrics["nonfinite"]), int(state.skipped), int(state.first_nonfinite)
    (2, True, 1, 1)
  """
  train_state.check_optimizer(optimizer)
  train_state.check_max_grad_norm(max_grad_norm)

  def step(state: TrainState, batch: PyTree):
    out, grads = jax.value_and_grad(loss_fn, has_aux=has_aux)(state.params, batch)
    loss, aux = out if has_aux else (out, None)
    state, metrics = train_state.guarded_update(optimizer, max_grad_norm, state, loss, grads)
    metrics.update(train_state.as_metrics(aux, "aux"))
    return state, metrics

  if jit:
    return jax.jit(step, donate_argnums=(0,) if donate else ())
  return step


def make_eval_step(
  metric_fn: Callable[[PyTree, PyTree], Any], *, jit: bool = True
) -> Callable[[PyTree, PyTree], dict[str, jax.Array]]:
  """An evaluation step ``eval_step(params, batch) -> metrics`` (no gradient, no update).

  Args:
    metric_fn: ``metric_fn(params, batch)`` returning a scalar (reported as
      ``loss``) or a dict of scalars.
    jit: compile it with `jax.jit`.

  Returns:
    ``eval_step(params, batch) -> dict`` of scalars.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxrnn.train import make_eval_step
    >>> eval_step = make_eval_step(lambda p, b: {"mse": jnp.mean((p * b) ** 2)})
    >>> float(eval_step(jnp.float32(2.0), jnp.ones(3))["mse"])
    4.0
  """

  def eval_step(params, batch):
    return train_state.as_metrics(metric_fn(params, batch), "loss")

  return jax.jit(eval_step) if jit else eval_step


def split_windows(stream: PyTree, window: int, *, time_axis: int = 1) -> PyTree:
  """Cuts every leaf of ``stream`` into consecutive windows along ``time_axis``.

  Args:
    stream: a pytree whose leaves share the length L of axis ``time_axis``.
    window: the window length; must divide L.
    time_axis: the time axis of every leaf (1 for ``(batch, T, ...)``).

  Returns:
    The same pytree with leaves ``(L // window, *shape with L replaced by window)``.

  Raises:
    ValueError: if ``window`` is not positive, the leaves disagree on L, or
      ``window`` does not divide L.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxrnn.train import split_windows
    >>> split_windows({"x": jnp.zeros((2, 12, 3))}, 4)["x"].shape
    (3, 2, 4, 3)
  """
  if isinstance(window, bool) or not isinstance(window, int) or window < 1:
    raise ValueError(f"window={window!r}: expected a positive int.")
  leaves = jax.tree.leaves(stream)
  lengths = {jnp.shape(leaf)[time_axis] for leaf in leaves}
  if len(lengths) != 1:
    raise ValueError(
      f"stream leaves have lengths {sorted(lengths)} on axis {time_axis}; expected one."
    )
  (length,) = lengths
  if length % window:
    raise ValueError(
      f"window={window} does not divide the stream length {length}; trim the stream to a "
      f"multiple of {window} (e.g. {length - length % window})."
    )

  def cut(leaf):
    leaf = jnp.asarray(leaf)
    axis = time_axis % leaf.ndim
    shape = leaf.shape[:axis] + (length // window, window) + leaf.shape[axis + 1 :]
    return jnp.moveaxis(jnp.reshape(leaf, shape), axis, 0)

  return jax.tree.map(cut, stream)


def window_keys(key: jax.Array, num_windows: int) -> jax.Array:
  """One key per window: ``jax.random.fold_in(key, i)`` for window ``i`` of a call.

  A typed key (`jax.random.key`) or a raw ``uint32[2]`` one (`jax.random.PRNGKey`).

  Raises:
    ValueError: for ``key`` that is not one PRNG key.

  Example:
    >>> import jax
    >>> from jaxrnn.train import window_keys
    >>> keys = window_keys(jax.random.key(0), 3)
    >>> same = jax.random.key_data(keys[1]) == jax.random.key_data(
    ...     jax.random.fold_in(jax.random.key(0), 1))
    >>> keys.shape, bool(same.all())
    ((3,), True)
  """
  typed = jnp.issubdtype(jnp.result_type(key), jax.dtypes.prng_key)
  if jnp.shape(key) != (() if typed else (2,)):
    raise ValueError(
      f"key has shape {jnp.shape(key)} and dtype {jnp.result_type(key)}; expected one PRNG "
      "key, jax.random.key(seed) (the step folds each window's index into it)."
    )
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(num_windows, dtype=jnp.uint32))


def make_tbptt_step(
  loss_fn: Callable[[PyTree, PyTree, PyTree], tuple[jax.Array, PyTree]],
  optimizer: optax.GradientTransformation,
  *,
  window: int,
  max_grad_norm: float | None = 1.0,
  time_axis: int = 1,
  jit: bool = True,
) -> Callable[..., tuple[TrainState, PyTree, dict[str, jax.Array]]]:
  """Truncated BPTT: ``step(state, carry, stream, key=None) -> (state, carry, metrics)``.

  The stream is cut into windows of ``window`` steps (`split_windows`). For
  each window in turn (a `jax.lax.scan` over windows, one compiled program):
  the incoming carry is passed through `jax.lax.stop_gradient`, the gradient
  of ``loss_fn(params, carry, window_batch)`` is clipped and applied by
  ``optimizer``, and the window's final carry becomes the next one's initial
  carry. This is TBPTT(k, k) of Williams and Peng (1990) with k = ``window``.
  The returned carry continues the stream in the next call.

  Episode boundaries: every leaf of ``stream`` is cut into windows, so a boolean
  ``resets`` leaf ``(*batch, T)`` arrives with each window and ``loss_fn`` passes it
  to `jaxrnn.scan` (or a model's ``apply``); a reset at a window's first step
  replaces the carry handed over from the previous window.

  Randomness (dropout per window, as AWD-LSTM trains): pass ``key`` to the step; window
  ``i`` of the call gets ``jax.random.fold_in(key, i)`` (`window_keys`) and the loss is
  called as ``loss_fn(params, carry, batch, key)``, so each window draws its own masks and
  the same ``key`` draws the same ones again. Give each call (each stretch of the stream)
  its own ``key``, e.g. ``jax.random.fold_in(run_key, call_index)``. Without a key the
  loss is called as before, ``loss_fn(params, carry, batch)``.

  Args:
    loss_fn: ``loss_fn(params, carry, batch) -> (loss, carry)`` on one window, or
      ``loss_fn(params, carry, batch, key)`` when the step is given a ``key``.
    optimizer: an ``optax.GradientTransformation``.
    window: steps per window (must divide the stream's length).
    max_grad_norm: global-norm clip per window update; None: no clipping.
    time_axis: the time axis of the stream's leaves.
    jit: compile with `jax.jit`.

  Returns:
    ``step(state, carry, stream, key=None)``; ``metrics`` holds `make_train_step`'s
    entries, each of shape ``(num_windows,)`` (each window's update is guarded
    against non-finite values on its own).

  Raises:
    ValueError: a bad ``window``, ``optimizer`` or ``max_grad_norm``; the step raises it
      for a ``key`` that is not one PRNG key.

  Example:
    >>> import jax, jax.numpy as jnp, optax, jaxrnn
    >>> from jaxrnn.train import TrainState, make_tbptt_step
    >>> cell = jaxrnn.lstm(8)
    >>> def loss_fn(params, carry, batch):
    ...   carry, ys = jaxrnn.scan(cell, params, batch["x"], carry)
    ...   return jnp.mean((ys[..., 0] - batch["y"]) ** 2), carry
    >>> opt = optax.sgd(0.1)
    >>> params = cell.init(jax.random.key(0), input_size=1)
    >>> state = TrainState.create(params, opt)
    >>> step = make_tbptt_step(loss_fn, opt, window=10)
    >>> stream = {"x": jnp.ones((2, 50, 1)), "y": jnp.zeros((2, 50))}
    >>> state, carry, metrics = step(state, cell.initial_carry(params, (2,)), stream)
    >>> int(state.step), metrics["loss"].shape, carry.h.shape
    (5, (5,), (2, 8))
  """
  train_state.check_optimizer(optimizer)
  train_state.check_max_grad_norm(max_grad_norm)
  if isinstance(window, bool) or not isinstance(window, int) or window < 1:
    raise ValueError(f"window={window!r}: expected a positive int.")

  def one_window(state_carry, inputs):
    state, carry = state_carry
    batch, key = inputs
    carry = jax.lax.stop_gradient(carry)  # the gradient stops at the window's edge
    extra = () if key is None else (key,)  # without a key: the old loss_fn(params, carry, batch)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, new_carry), grads = grad_fn(state.params, carry, batch, *extra)
    state, metrics = train_state.guarded_update(optimizer, max_grad_norm, state, loss, grads)
    # a skipped window passes its incoming carry on, not a non-finite one
    new_carry = jax.tree.map(lambda n, o: jnp.where(metrics["nonfinite"], o, n), new_carry, carry)
    return (state, jax.lax.stop_gradient(new_carry)), metrics

  def step(state: TrainState, carry: PyTree, stream: PyTree, key: jax.Array | None = None):
    windows = split_windows(stream, window, time_axis=time_axis)
    keys = None if key is None else window_keys(key, jax.tree.leaves(windows)[0].shape[0])
    (state, carry), metrics = jax.lax.scan(one_window, (state, carry), (windows, keys))
    return state, carry, metrics

  return jax.jit(step) if jit else step
