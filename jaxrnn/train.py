"""Training with optax: a jit-compiled step, evaluation, truncated BPTT, and a resumable loop.

The pieces are pure functions of explicit state, so they compose with the rest
of JAX:

- `TrainState` ``(step, params, opt_state)`` and `make_train_step`, which turns a
  loss function and any optax optimizer into ``step(state, batch) -> (state,
  metrics)``, with global-norm gradient clipping applied before the optimizer
  (so the optimizer's state does not depend on the clipping).
- `make_eval_step`: a jit-compiled metric function.
- `make_tbptt_step`: truncated backpropagation through time over long streams;
  the carry flows from window to window, the gradient stops at window edges,
  and there is one optimizer update per window.
- `fit`: the experiments' loop, with a tqdm progress bar (loss, throughput),
  metrics appended to a JSONL file, and periodic `jaxrnn.checkpoint`s, so that a
  run killed at any moment and started again ends with the same parameters,
  bit for bit, as one that ran through. Determinism comes from ``batch_fn(step)``
  being a function of the step index alone.

The step functions close over nothing device-specific (no ``pmap``, no axis
names): the loss is a mean over the batch, so under `jax.jit` with a batch
sharded over a `jax.sharding.Mesh` the same step computes the global gradient;
``make_train_step(..., mesh=mesh)`` compiles it with ``in_shardings``/``out_shardings``
(`jaxrnn.sharding.make_sharded_train_step`).

tqdm and orbax-checkpoint (the ``experiments`` extra) are imported by `fit` alone, and
only when it shows a progress bar (without tqdm it runs silently) or checkpoints.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrnn import checkpoint as _checkpoint
from jaxrnn.cells.base import PyTree

__all__ = [
  "TrainState",
  "fit",
  "make_eval_step",
  "make_tbptt_step",
  "make_train_step",
  "split_windows",
]


class TrainState(NamedTuple):
  """What a train step reads and returns.

  Attributes:
    step: int32 scalar, the number of optimizer updates applied so far.
    params: the model's parameter pytree.
    opt_state: the optax optimizer's state for ``params``.
  """

  step: jax.Array
  params: PyTree
  opt_state: PyTree

  @classmethod
  def create(cls, params: PyTree, optimizer: optax.GradientTransformation) -> TrainState:
    """A state at step 0 with ``optimizer.init(params)``.

    Example:
      >>> import jax, optax, jaxrnn
      >>> from jaxrnn.train import TrainState
      >>> params = jaxrnn.gru(4).init(jax.random.key(0), input_size=2)
      >>> state = TrainState.create(params, optax.adam(1e-3))
      >>> int(state.step), state.params.w_hh.shape
      (0, (4, 12))
    """
    return cls(jnp.zeros((), jnp.int32), params, optimizer.init(params))


def _check_optimizer(optimizer: Any) -> None:
  if not isinstance(optimizer, optax.GradientTransformation):
    raise ValueError(
      f"optimizer={type(optimizer).__name__}: expected an optax.GradientTransformation "
      "(e.g. optax.adam(1e-3))."
    )


def _check_max_grad_norm(max_grad_norm: Any) -> None:
  if max_grad_norm is None:
    return
  if isinstance(max_grad_norm, bool) or not isinstance(max_grad_norm, int | float):
    raise ValueError(f"max_grad_norm={max_grad_norm!r}: expected a positive number or None.")
  if not max_grad_norm > 0:
    raise ValueError(f"max_grad_norm={max_grad_norm!r}: expected a positive number or None.")


def _as_metrics(value: Any, name: str) -> dict[str, Any]:
  if isinstance(value, Mapping):
    return dict(value)
  if value is None:
    return {}
  return {name: value}


def _clip_and_update(optimizer, max_grad_norm, grads, opt_state, params):
  """Global-norm clipping (optax.clip_by_global_norm), then the optimizer's update."""
  grad_norm = optax.tree.norm(grads)
  if max_grad_norm is not None:
    clip = optax.clip_by_global_norm(float(max_grad_norm))
    grads, _ = clip.update(grads, clip.init(grads))
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, grad_norm, optax.tree.norm(updates)


def make_train_step(
  loss_fn: Callable[..., Any],
  optimizer: optax.GradientTransformation,
  *,
  max_grad_norm: float | None = 1.0,
  has_aux: bool = False,
  jit: bool = True,
  donate: bool = False,
  mesh: jax.sharding.Mesh | None = None,
  data_axis: str | tuple[str, ...] = "data",
  model_axis: str | None = None,
) -> Callable[[TrainState, PyTree], tuple[TrainState, dict[str, jax.Array]]]:
  """A train step ``step(state, batch) -> (state, metrics)`` for any optax optimizer.

  The step computes ``loss_fn(params, batch)`` and its gradient, clips the
  gradient to global norm ``max_grad_norm`` (``optax.clip_by_global_norm``),
  applies ``optimizer``, and increments ``state.step``. Put a PRNG key in the
  batch if the loss needs randomness (dropout): the step itself has none.

  Args:
    loss_fn: ``loss_fn(params, batch) -> loss``, a scalar, or with ``has_aux``
      ``-> (loss, aux)`` where ``aux`` is a dict of scalars (or one scalar).
    optimizer: an ``optax.GradientTransformation``; ``state.opt_state`` is its state.
    max_grad_norm: clip threshold for the gradient's global norm; None: no clipping.
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
    jit: compile the step with `jax.jit`.
    donate: donate the input state's buffers to the output (saves memory;
      the input state must not be used afterwards).
    mesh: a `jax.sharding.Mesh`: compile the step for it with
      `jaxrnn.sharding.make_sharded_train_step` (the batch split over
      ``data_axis``, parameters replicated or, with ``model_axis``, the cells'
      gate columns split over it). Needs ``jit=True``.
    data_axis: with ``mesh``, the mesh axis of the batch dimension.
    model_axis: with ``mesh``, the mesh axis of the gate columns, or None.

  Returns:
    ``step(state, batch) -> (state, metrics)``; ``metrics`` holds ``loss``,
    ``grad_norm`` (before clipping), ``update_norm`` and the entries of ``aux``.

  Raises:
    ValueError: if ``optimizer`` is not an optax transformation,
      ``max_grad_norm`` is not positive, ``mesh`` comes with ``jit=False``, or
      ``data_axis``/``model_axis`` are given without a ``mesh``; see
      `jaxrnn.sharding.make_sharded_train_step` for the mesh's own checks.

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
    (1, ['grad_norm', 'loss', 'update_norm'])
  """
  _check_optimizer(optimizer)
  _check_max_grad_norm(max_grad_norm)
  if mesh is not None:
    if not jit:
      raise ValueError("jit=False with a mesh: expected jit=True (the mesh is used by jax.jit).")
    from jaxrnn import sharding  # sharding builds on this module

    return sharding.make_sharded_train_step(
      loss_fn,
      optimizer,
      mesh,
      data_axis=data_axis,
      model_axis=model_axis,
      max_grad_norm=max_grad_norm,
      has_aux=has_aux,
      donate=donate,
    )
  if data_axis != "data" or model_axis is not None:
    raise ValueError(
      f"data_axis={data_axis!r}, model_axis={model_axis!r} without a mesh: expected mesh=... "
      "(or the defaults)."
    )

  def step(state: TrainState, batch: PyTree):
    out, grads = jax.value_and_grad(loss_fn, has_aux=has_aux)(state.params, batch)
    loss, aux = out if has_aux else (out, None)
    params, opt_state, grad_norm, update_norm = _clip_and_update(
      optimizer, max_grad_norm, grads, state.opt_state, state.params
    )
    metrics = {"loss": loss, "grad_norm": grad_norm, "update_norm": update_norm}
    metrics.update(_as_metrics(aux, "aux"))
    return TrainState(state.step + 1, params, opt_state), metrics

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
    return _as_metrics(metric_fn(params, batch), "loss")

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


def make_tbptt_step(
  loss_fn: Callable[[PyTree, PyTree, PyTree], tuple[jax.Array, PyTree]],
  optimizer: optax.GradientTransformation,
  *,
  window: int,
  max_grad_norm: float | None = 1.0,
  time_axis: int = 1,
  jit: bool = True,
) -> Callable[..., tuple[TrainState, PyTree, dict[str, jax.Array]]]:
  """Truncated BPTT: ``step(state, carry, stream) -> (state, carry, metrics)``.

  The stream is cut into windows of ``window`` steps (`split_windows`). For
  each window in turn (a `jax.lax.scan` over windows, one compiled program):
  the incoming carry is passed through `jax.lax.stop_gradient`, the gradient
  of ``loss_fn(params, carry, window_batch)`` is clipped and applied by
  ``optimizer``, and the window's final carry becomes the next one's initial
  carry. This is TBPTT(k, k) of Williams and Peng (1990) with k = ``window``.
  The returned carry continues the stream in the next call.

  Args:
    loss_fn: ``loss_fn(params, carry, batch) -> (loss, carry)`` on one window.
    optimizer: an ``optax.GradientTransformation``.
    window: steps per window (must divide the stream's length).
    max_grad_norm: global-norm clip per window update; None: no clipping.
    time_axis: the time axis of the stream's leaves.
    jit: compile with `jax.jit`.

  Returns:
    ``step(state, carry, stream)``; ``metrics`` holds ``loss``, ``grad_norm``
    and ``update_norm``, each of shape ``(num_windows,)``.

  Raises:
    ValueError: a bad ``window``, ``optimizer`` or ``max_grad_norm``.

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
  _check_optimizer(optimizer)
  _check_max_grad_norm(max_grad_norm)
  if isinstance(window, bool) or not isinstance(window, int) or window < 1:
    raise ValueError(f"window={window!r}: expected a positive int.")

  def one_window(state_carry, batch):
    state, carry = state_carry
    carry = jax.lax.stop_gradient(carry)  # the gradient stops at the window's edge
    (loss, new_carry), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, carry, batch)
    params, opt_state, grad_norm, update_norm = _clip_and_update(
      optimizer, max_grad_norm, grads, state.opt_state, state.params
    )
    state = TrainState(state.step + 1, params, opt_state)
    metrics = {"loss": loss, "grad_norm": grad_norm, "update_norm": update_norm}
    return (state, jax.lax.stop_gradient(new_carry)), metrics

  def step(state: TrainState, carry: PyTree, stream: PyTree):
    windows = split_windows(stream, window, time_axis=time_axis)
    (state, carry), metrics = jax.lax.scan(one_window, (state, carry), windows)
    return state, carry, metrics

  return jax.jit(step) if jit else step


def _read_jsonl(path: str) -> list[dict[str, Any]]:
  records = []
  if not os.path.exists(path):
    return records
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        break  # a line cut short by a kill: it and anything after it are dropped
  return records


def _rewrite_jsonl(path: str, records: list[dict[str, Any]]) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _to_python(metrics: Mapping[str, Any]) -> dict[str, Any]:
  out = {}
  for k, v in jax.device_get(dict(metrics)).items():
    arr = np.asarray(v)
    out[k] = arr.item() if arr.ndim == 0 else arr.tolist()
  return out


def _batch_size(batch: PyTree) -> int | None:
  leaves = jax.tree.leaves(batch)
  for leaf in leaves:
    if jnp.ndim(leaf) >= 1 and not jnp.issubdtype(jnp.result_type(leaf), jax.dtypes.prng_key):
      return int(jnp.shape(leaf)[0])
  return None


class _NoBar:
  def update(self, n):
    del n

  def set_postfix(self, **kwargs):
    del kwargs

  def close(self):
    pass


def _progress_bar(*, total, initial, disable, desc):
  """A tqdm bar; a silent stand-in when disabled or when tqdm is not installed."""
  if disable:
    return _NoBar()
  try:
    from tqdm.auto import tqdm
  except ImportError:
    return _NoBar()
  return tqdm(total=total, initial=initial, desc=desc, leave=False)


def fit(
  step_fn: Callable[[PyTree, PyTree], tuple[PyTree, Mapping[str, Any]]],
  state: PyTree,
  batch_fn: Callable[[int], PyTree],
  *,
  num_steps: int,
  checkpoint_dir: str | os.PathLike | None = None,
  checkpoint_every: int = 1000,
  keep: int | None = 2,
  model: Any = None,
  metadata: Mapping[str, Any] | None = None,
  metrics_path: str | os.PathLike | None = None,
  log_every: int = 50,
  eval_fn: Callable[[PyTree], Mapping[str, Any]] | None = None,
  eval_every: int | None = None,
  progress: bool = True,
  desc: str | None = None,
  batch_size: int | None = None,
) -> PyTree:
  """Runs ``step_fn`` for ``num_steps`` steps, resuming from the newest checkpoint.

  Deterministic and resumable: the batch of step ``i`` is ``batch_fn(i)``, a
  function of ``i`` alone (e.g. of ``jax.random.fold_in(data_key, i)``), and
  the state is checkpointed (`jaxrnn.checkpoint.save`) every
  ``checkpoint_every`` steps and at the end. If ``checkpoint_dir`` already
  holds a checkpoint, the state is restored from the newest one (``state``
  serves as the target structure) and the loop continues from its step, and
  the metrics file is cut back to that step, so a run killed at any moment and
  started again with the same arguments ends with the same state, bit for bit,
  and the same metrics (timings aside) as a run that was never interrupted.

  Args:
    step_fn: ``step_fn(state, batch) -> (state, metrics)``, e.g. from
      `make_train_step`; ``metrics`` is a dict of scalars or arrays.
    state: the initial state (e.g. a `TrainState`), also the restore target.
    batch_fn: ``batch_fn(step) -> batch``.
    num_steps: total number of steps of the run (not of this call).
    checkpoint_dir: where checkpoints go; None: no checkpoints, no resuming.
    checkpoint_every: steps between checkpoints.
    keep: how many checkpoints to keep (None: all).
    model: the `Cell`/`SequenceModel` whose configuration the checkpoints
      record and check on resume.
    metadata: JSON-serialisable run information stored in each checkpoint.
    metrics_path: a JSONL file; one line ``{"step", "split": "train", metrics...,
      "examples_per_second"}`` every ``log_every`` steps, and
      ``{"step", "split": "eval", ...}`` for ``eval_fn``.
    log_every: steps between metric lines and progress-bar updates.
    eval_fn: ``eval_fn(state) -> dict`` of scalars, run every ``eval_every``
      steps and at the end.
    eval_every: steps between evaluations; None: only at the end.
    progress: show a tqdm progress bar (loss and throughput).
    desc: the progress bar's label.
    batch_size: examples per step for the throughput figure; None: the
      leading dimension of the batch's first array leaf (0 if it has none,
      e.g. when the batch is a PRNG key that the step turns into data).

  Returns:
    The final state.

  Raises:
    ValueError: for non-positive counts, or a checkpoint that does not match
      ``state`` or ``model`` (see `jaxrnn.checkpoint.restore`).

  Example:
    >>> import json, os, tempfile, jax, jax.numpy as jnp, optax, jaxrnn
    >>> from jaxrnn.train import TrainState, fit, make_train_step
    >>> cell = jaxrnn.gru(4)
    >>> def loss_fn(params, key):            # the batch is made from the step's key
    ...   xs = jax.random.normal(key, (8, 5, 2))
    ...   _, ys = jaxrnn.scan(cell, params, xs)
    ...   return jnp.mean((ys[:, -1, 0] - xs[:, 0, 0]) ** 2)
    >>> opt = optax.adam(1e-2)
    >>> state = TrainState.create(cell.init(jax.random.key(0), input_size=2), opt)
    >>> log = os.path.join(tempfile.mkdtemp(), "metrics.jsonl")
    >>> state = fit(make_train_step(loss_fn, opt), state,
    ...             lambda i: jax.random.fold_in(jax.random.key(1), i),
    ...             num_steps=6, metrics_path=log, log_every=3, progress=False)
    >>> with open(log) as f:
    ...   print(int(state.step), [json.loads(line)["step"] for line in f])
    6 [3, 6]
  """
  if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
    raise ValueError(f"num_steps={num_steps!r}: expected a non-negative int.")
  for name, value, optional in [
    ("checkpoint_every", checkpoint_every, False),
    ("log_every", log_every, False),
    ("eval_every", eval_every, True),
  ]:
    if value is None and optional:
      continue
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name}={value!r}: expected a positive int{' or None' * optional}.")

  start = 0
  if checkpoint_dir is not None and _checkpoint.latest_step(checkpoint_dir) is not None:
    state, info = _checkpoint.restore(checkpoint_dir, state, model=model)
    start = int(info["step"])
  if metrics_path is not None:
    metrics_path = os.fspath(metrics_path)
    os.makedirs(os.path.dirname(os.path.abspath(metrics_path)), exist_ok=True)
    kept = [r for r in _read_jsonl(metrics_path) if r.get("step", 0) <= start]
    _rewrite_jsonl(metrics_path, kept)

  bar = _progress_bar(total=num_steps, initial=start, disable=not progress, desc=desc)

  def log(record):
    if metrics_path is None:
      return
    with open(metrics_path, "a", encoding="utf-8") as f:
      f.write(json.dumps(record) + "\n")

  def save(step):
    if checkpoint_dir is not None and step not in _checkpoint.all_steps(checkpoint_dir):
      _checkpoint.save(checkpoint_dir, step, state, model=model, metadata=metadata, keep=keep)

  t_last, examples = time.perf_counter(), 0
  try:
    for i in range(start, num_steps):
      batch = batch_fn(i)
      examples += batch_size if batch_size is not None else (_batch_size(batch) or 0)
      state, metrics = step_fn(state, batch)
      done = i + 1
      bar.update(1)
      if done % log_every == 0 or done == num_steps:
        record = _to_python(metrics)  # waits for the step: honest throughput
        now = time.perf_counter()
        record = {"step": done, "split": "train", **record}
        record["examples_per_second"] = examples / max(now - t_last, 1e-9)
        t_last, examples = now, 0
        log(record)
        if isinstance(record.get("loss"), float):
          bar.set_postfix(loss=f"{record['loss']:.4g}", ex_s=f"{record['examples_per_second']:.0f}")
      if eval_fn is not None and (
        done == num_steps or (eval_every is not None and done % eval_every == 0)
      ):
        log({"step": done, "split": "eval", **_to_python(eval_fn(state))})
      if done % checkpoint_every == 0 or done == num_steps:
        save(done)
  finally:
    bar.close()
  return state
