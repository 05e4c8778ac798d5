"""The resumable training loop: `fit` runs a train step over ``batch_fn(step)``.

`fit` is the experiments' loop, with a tqdm progress bar (loss, throughput),
metrics appended to a JSONL file, and periodic `jaxrnn.checkpoint`s, so that a
run killed at any moment and started again ends with the same parameters, bit
for bit, as one that ran through. Determinism comes from ``batch_fn(step)``
being a function of the step index alone.

It sits above the train steps (`jaxrnn.train`, `jaxrnn.sharding`) and
`jaxrnn.checkpoint`: any ``step_fn(state, batch) -> (state, metrics)`` works,
sharded or not; with ``mesh=`` it runs on a mesh of one or many processes
(sharded checkpoints, each process feeding its own rows, process 0 alone
logging). Faults: a SIGTERM checkpoints and exits (`Preempted`); a step that
the train step's non-finite guard skipped raises or is let go
(``on_nonfinite``); a process of a multi-process run that dies is detected by
`jax.distributed`'s heartbeats (``heartbeat_timeout_seconds``), which end the
other processes with an error naming the dead one instead of a hang.

tqdm and orbax-checkpoint (the ``experiments`` extra) are imported only when
`fit` shows a progress bar (without tqdm it runs silently) or checkpoints.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn import checkpoint as _checkpoint
from jaxrnn import metrics_log as _metrics_log
from jaxrnn import sharding as _sharding
from jaxrnn.cells.base import PyTree

__all__ = ["Preempted", "fit"]


def _batch_size(batch: PyTree) -> int | None:
  leaves = jax.tree.leaves(batch)
  for leaf in leaves:
    if jnp.ndim(leaf) >= 1 and not jnp.issubdtype(jnp.result_type(leaf), jax.dtypes.prng_key):
      return int(jnp.shape(leaf)[0])
  return None


def _check_counts(num_steps: Any, checkpoint_every: Any, log_every: Any, eval_every: Any) -> None:
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


def _resume(checkpoint_dir: Any, state: PyTree, model: Any) -> tuple[PyTree, int]:
  """The newest checkpoint's state and step, or ``(state, 0)`` when there is none."""
  if checkpoint_dir is None or _checkpoint.latest_step(checkpoint_dir) is None:
    return state, 0
  state, info = _checkpoint.restore(checkpoint_dir, state, model=model)
  return state, int(info["step"])


class Preempted(SystemExit):
  """What `fit` raises after a SIGTERM, once the state is checkpointed: exit status 143.

  A `SystemExit`, so an uncaught one ends the program the way the signal
  would have (128 + SIGTERM); ``step`` is the step of the checkpoint written.
  """

  def __init__(self, step: int):
    super().__init__(128 + signal.SIGTERM)
    self.step = step


class _Preemption:
  """Whether a SIGTERM arrived, at the same step on every process.

  One process: a SIGTERM handler (main thread only) sets a flag. Several:
  `jax.experimental.multihost_utils.reached_preemption_sync_point`, which
  `jax.distributed` answers True on every process at the same step once any
  of them got the signal; it must be called at every step.
  """

  def __init__(self):
    self.flag, self.previous = False, None
    self.multi = jax.process_count() > 1
    if not self.multi and threading.current_thread() is threading.main_thread():
      self.previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    del signum, frame
    self.flag = True

  def __call__(self, step: int) -> bool:
    if self.multi:
      from jax.experimental import multihost_utils

      return bool(multihost_utils.reached_preemption_sync_point(step))
    return self.flag

  def close(self):
    if self.previous is not None:
      signal.signal(signal.SIGTERM, self.previous)


def _check_mode(on_nonfinite: Any) -> None:
  if on_nonfinite not in ("raise", "skip"):
    raise ValueError(f"on_nonfinite={on_nonfinite!r}: expected 'raise' or 'skip'.")


def _check_finite(metrics: Mapping[str, Any], on_nonfinite: str, skipped_before: int) -> int:
  """The skip count in ``metrics``; raises under ``"raise"`` if it grew since ``skipped_before``.

  Every process reads the same replicated counters, so in a multi-process run
  they all raise at the same step.
  """
  if "skipped" not in metrics:
    return skipped_before
  # cumulative counters: scalars, or one per window for a TBPTT step (the last is the largest)
  skipped = int(np.max(np.asarray(metrics["skipped"])))
  if on_nonfinite == "raise" and skipped > skipped_before:
    first = int(np.max(np.asarray(metrics["first_nonfinite"])))
    raise FloatingPointError(
      f"step {first}: the loss, a gradient or the update is not finite; "
      f"the train step skipped its update ({skipped} skipped so far) and fit stopped "
      "(on_nonfinite='raise'; 'skip' goes on). No checkpoint was written after it."
    )
  return skipped


def _skips(state: PyTree) -> int:
  """The skip count of the train states in ``state`` (a `TrainState`, or e.g. one with a carry)."""

  def is_train_state(x):
    return hasattr(x, "skipped") and hasattr(x, "params")

  nodes = jax.tree.leaves(state, is_leaf=is_train_state)
  return sum(int(np.max(np.asarray(x.skipped))) for x in nodes if is_train_state(x))


def _place_batch(batch: PyTree, mesh: Any, data_axis: Any) -> PyTree:
  """This process's rows, assembled into the global batch on ``mesh`` (None: as it is)."""
  if mesh is None:
    return batch
  return _sharding.shard_batch(batch, mesh, data_axis, process_local=True)


def _save(checkpoint_dir, step, state, **kwargs) -> None:
  """`jaxrnn.checkpoint.save` of ``state`` at ``step`` unless there is no directory or it has
  that step already (a run resumed at its last step)."""
  if checkpoint_dir is not None and step not in _checkpoint.all_steps(checkpoint_dir):
    _checkpoint.save(checkpoint_dir, step, state, **kwargs)


def fit(
  step_fn: Callable[[PyTree, PyTree], tuple[PyTree, Mapping[str, Any]]],
  state: PyTree,
  batch_fn: Callable[[int], PyTree],
  *,
  num_steps: int,
  mesh: Any = None,
  data_axis: Any = "data",
  model_axis: str | None = None,
  checkpoint_dir: str | os.PathLike | None = None,
  checkpoint_every: int = 1000,
  keep: int | None = 2,
  model: Any = None,
  metadata: Mapping[str, Any] | None = None,
  metrics_path: str | os.PathLike | None = None,
  log_every: int = 50,
  eval_fn: Callable[[PyTree], Mapping[str, Any]] | None = None,
  eval_every: int | None = None,
  on_nonfinite: str = "raise",
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
  serves as the target structure, and with ``mesh`` its layout) and the loop
  continues from its step, and the metrics file is cut back to that step, so a
  run killed at any moment and started again with the same arguments ends with
  the same state, bit for bit, and the same metrics (timings aside) as a run
  that was never interrupted. A SIGTERM (preemption) ends the step under way,
  checkpoints it and raises `Preempted` (exit status 143).

  On a mesh (one or several processes; call `fit` on every process with the
  same arguments): ``state`` is laid out with `jaxrnn.sharding.shard_state`
  (``model_axis``), every checkpoint is written and restored sharded (the
  restore accepts a checkpoint written on any other mesh), and ``batch_fn(i)``
  returns **this process's rows** of global batch ``i``,
  ``global_batch[process_batch_rows(mesh, global_batch_size)]`` (on one process
  that is the whole batch), which `jaxrnn.sharding.shard_batch` assembles with
  ``process_local=True``. Process 0 alone writes the metrics file and shows
  the progress bar.

  Args:
    step_fn: ``step_fn(state, batch) -> (state, metrics)``, e.g. from
      `jaxrnn.train.make_train_step` or `jaxrnn.sharding.make_sharded_train_step`
      (with ``mesh``: one made for that mesh); ``metrics`` is a dict of scalars
      or arrays.
    state: the initial state (e.g. a `jaxrnn.train.TrainState`), also the restore target.
    batch_fn: ``batch_fn(step) -> batch`` (with ``mesh``: this process's rows).
    num_steps: total number of steps of the run (not of this call).
    mesh: a `jax.sharding.Mesh` to train on; None: the state and batches as given.
    data_axis: the mesh axis (or axes) of the batch dimension.
    model_axis: the mesh axis the cells' gate columns are split over; None: replicated.
    checkpoint_dir: where checkpoints go (the same storage for every
      process); None: no checkpoints, no resuming.
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
    on_nonfinite: what to do when the train step's non-finite guard skipped
      an update (its ``skipped`` metric grew; checked at every metric line and
      before every checkpoint): ``"raise"`` a `FloatingPointError` naming the
      first bad step, before any checkpoint after it is written; ``"skip"``
      go on (the metrics lines record ``skipped`` and ``first_nonfinite``).
    progress: show a tqdm progress bar (loss and throughput) when the output
      is a terminal (tqdm's ``disable=None``); the metrics file records
      everything either way.
    desc: the progress bar's label.
    batch_size: examples per step for the throughput figure; None: the
      leading dimension of the (global) batch's first array leaf (0 if it has
      none, e.g. when the batch is a PRNG key that the step turns into data).

  Returns:
    The final state.

  Raises:
    ValueError: for non-positive counts, a bad ``on_nonfinite``, or a
      checkpoint that does not match ``state`` or ``model`` (see
      `jaxrnn.checkpoint.restore`).
    FloatingPointError: with ``on_nonfinite="raise"``, see above.
    Preempted: after a SIGTERM, once the checkpoint is written.

  Example:
    >>> import json, os, tempfile, jax, jax.numpy as jnp, optax, jaxrnn
    >>> from jaxrnn.loop import fit
    >>> from jaxrnn.train import TrainState, make_train_step
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
  _check_counts(num_steps, checkpoint_every, log_every, eval_every)
  _check_mode(on_nonfinite)
  if mesh is not None:
    state = _sharding.shard_state(state, mesh, model_axis=model_axis)
  state, start = _resume(checkpoint_dir, state, model)
  lead = jax.process_index() == 0  # the one process that writes metrics and shows progress
  metrics_path = _metrics_log.trim(metrics_path, start) if lead else None
  skipped = _skips(state)

  bar = _metrics_log.progress_bar(total=num_steps, initial=start, show=progress and lead, desc=desc)
  preempted = _Preemption()
  t_last, examples = time.perf_counter(), 0
  try:
    for i in range(start, num_steps):
      batch = _place_batch(batch_fn(i), mesh, data_axis)
      examples += batch_size if batch_size is not None else (_batch_size(batch) or 0)
      state, metrics = step_fn(state, batch)
      done = i + 1
      bar.update(1)
      stop = preempted(done)
      if done % log_every == 0 or done == num_steps:
        skipped = _check_finite(metrics, on_nonfinite, skipped)
        if lead:
          t_last = _metrics_log.log_train(bar, metrics_path, metrics, done, examples, t_last)
        examples = 0
      if eval_fn is not None and (done == num_steps or (eval_every and done % eval_every == 0)):
        _metrics_log.log_eval(eval_fn, state, done, metrics_path)
      if done % checkpoint_every == 0 or done == num_steps or stop:
        skipped = _check_finite(metrics, on_nonfinite, skipped)
        _save(checkpoint_dir, done, state, model=model, metadata=metadata, keep=keep)
      if stop:
        raise Preempted(done)
  finally:
    preempted.close()
    bar.close()
  return state
