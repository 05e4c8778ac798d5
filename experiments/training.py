"""How the experiments train: the one place that calls `jaxrnn.train`'s steps and `jaxrnn.loop.fit`.

`fit` is the resumable loop of every training run (checkpoints and metrics under
``OUT/NAME/``, a progress bar unless ``--no-progress``); `minimize` is Adam with
global-norm clipping 1 on a loss of ``(params, key)`` through `fit`; and
`train_readout` is a cell with a linear readout of its final state trained on
a small in-memory data set through `minimize`.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import harness
from jaxrnn import loop, recurrent, scan, train

TrainState = train.TrainState
make_tbptt_step = train.make_tbptt_step


def fit(
  step: Callable,
  state: Any,
  batch_fn: Callable[[int], Any],
  args: argparse.Namespace,
  experiment: str,
  run: str,
  config: dict[str, Any],
  *,
  steps: int,
  model: Any,
  batch_size: int,
  checkpoints: int = 4,
  logs: int = 40,
  desc: str | None = None,
) -> Any:
  """`jaxrnn.loop.fit` for run ``run`` of ``experiment``: ``steps`` steps of ``step``.

  Checkpoints (``checkpoints`` in the run, resumed from; see `harness.run_paths`
  for the directory, named by ``config``) and metrics (``logs`` rows) go under
  ``OUT/EXPERIMENT/``. Returns the final state.
  """
  ckpt, metrics = harness.run_paths(args, experiment, run, config)
  return loop.fit(
    step,
    state,
    batch_fn,
    num_steps=steps,
    checkpoint_dir=ckpt,
    checkpoint_every=max(steps // checkpoints, 1),
    model=model,
    metrics_path=metrics,
    log_every=max(steps // logs, 1),
    progress=not args.no_progress,
    desc=desc or run,
    batch_size=batch_size,
  )


def make_step(loss_fn: Callable, opt: optax.GradientTransformation, **kwargs: Any) -> Callable:
  """`jaxrnn.train.make_train_step` with global-norm clipping 1 (every experiment's)."""
  return train.make_train_step(loss_fn, opt, max_grad_norm=1.0, **kwargs)


def minimize(
  loss_fn: Callable,
  params: Any,
  data_key: jax.Array,
  cell: Any,
  args: argparse.Namespace,
  experiment: str,
  run: str,
  *,
  lr: float,
  steps: int,
  batch: int | None,
  batch_size: int | None = None,
  checkpoints: int = 4,
  **config: Any,
) -> Any:
  """Adam(``lr``) on ``loss_fn(params, key)``, the key of step i ``fold_in(data_key, i)``.

  Runs ``steps`` steps through `fit` as run ``run`` of ``experiment``; its
  checkpoints are named by the cell, ``steps``, ``lr``, ``batch`` and the other
  keywords (``config``); ``batch_size`` (default ``batch``) is the examples per
  step for the throughput. Returns the final `TrainState`.
  """
  opt = optax.adam(lr)
  config = dict(cell=cell.name, cell_config=cell.config, steps=steps, lr=lr, batch=batch, **config)
  state = TrainState.create(params, opt)
  batch_fn = lambda i: jax.random.fold_in(data_key, i)  # noqa: E731
  batch_size = batch if batch_size is None else batch_size
  step = make_step(loss_fn, opt)
  return fit(
    step,
    state,
    batch_fn,
    args,
    experiment,
    run,
    config,
    steps=steps,
    model=cell,
    batch_size=batch_size,
    checkpoints=checkpoints,
  )


def readout_params(cell, k_init: jax.Array, k_out: jax.Array, input_size: int, outputs: int):
  """``{"rnn", "w", "b"}``: the cell's params and a linear readout, N(0, 1/H) and zeros."""
  hidden = dict(cell.config)["hidden_size"]
  return {
    "rnn": cell.init(k_init, input_size),
    "w": jax.random.normal(k_out, (hidden, outputs)) / math.sqrt(hidden),
    "b": jnp.zeros((outputs,)),
  }


def train_readout(
  cell,
  xs: np.ndarray,
  ys: np.ndarray,
  args: argparse.Namespace,
  experiment: str,
  run: str,
  *,
  classes: int | None = None,
  batch: int | None = None,
  seed: int | None = None,
  regularize: dict[str, Any] | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
  """Trains ``cell`` + a linear readout of its final state on a small in-memory data set.

  ``--steps`` Adam steps of learning rate ``--lr`` through `minimize`, as run
  ``run`` of ``experiment``.

  Args:
    cell: a `jaxrnn.Cell`.
    xs: ``(N, T, I)`` float32 inputs.
    ys: ``(N,)`` float32 targets (regression, MSE) or int class labels
      (softmax cross-entropy).
    args, experiment, run: the flags (``args.steps``, ``args.lr``), and the
      checkpoint and metrics paths (`harness.run_paths`).
    classes: the number of classes; None: a regression.
    batch: examples per step, sampled without replacement from
      ``fold_in(key, step)``; None: all.
    seed: of the init and the batches (default ``args.seed``).
    regularize: `jaxrnn.recurrent`'s regularizer rates (``input_dropout``,
      ``recurrent_dropout``, ``weight_drop``, ``zoneout``), drawn from each step's
      key in training; predictions are deterministic. None: the plain cell.

  Returns:
    ``predict(xs) -> (N,)`` predictions or ``(N, classes)`` logits (numpy).
  """
  steps, lr = args.steps, args.lr
  classify, num_outputs = classes is not None, classes or 1
  seed = args.seed if seed is None else seed
  xs, ys = jnp.asarray(xs, jnp.float32), jnp.asarray(ys)
  n = xs.shape[0]
  k_init, k_out, k_data = jax.random.split(jax.random.key(seed), 3)
  params = readout_params(cell, k_init, k_out, xs.shape[-1], num_outputs)

  model = None if not regularize else recurrent(cell, **regularize)

  def forward(params, x, key=None):
    if model is None:
      carry, _ = scan(cell, params["rnn"], x)
    else:
      carry, _ = model.apply(params["rnn"], x, key=key, deterministic=key is None)
    return carry.h @ params["w"] + params["b"][None, :]

  def loss_fn(params, key):
    k_drop = None
    if model is not None:  # the unregularized runs keep their keys (and numbers) as before
      key, k_drop = jax.random.split(key)
    if batch is None or batch >= n:
      x, y = xs, ys
    else:
      idx = jax.random.choice(key, n, (batch,), replace=False)
      x, y = xs[idx], ys[idx]
    out = forward(params, x, k_drop)
    if classify:
      return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out, y))
    return jnp.mean((out[:, 0] - y) ** 2)

  data = [list(xs.shape), float(jnp.sum(xs)), float(jnp.sum(ys))]
  state = minimize(
    loss_fn,
    params,
    k_data,
    cell,
    args,
    experiment,
    run,
    lr=lr,
    steps=steps,
    batch=batch,
    batch_size=min(batch or n, n),
    checkpoints=2,
    data=data,
    **({"regularize": sorted(regularize.items())} if regularize else {}),
  )
  forward_jit = jax.jit(forward)

  def predict(x):
    out = np.asarray(forward_jit(state.params, jnp.asarray(x, jnp.float32)))
    return out if classify else out[:, 0]

  return predict


# The regularizers the experiments that overfit try on their LSTM, one at a time
# (`jaxrnn.recurrent`'s options; see `jaxrnn.regularizers`).
REGULARIZERS = {
  "none": None,
  "recurrent_dropout=0.25": {"recurrent_dropout": 0.25},
  "weight_drop=0.25": {"weight_drop": 0.25},
  "zoneout=0.15": {"zoneout": 0.15},
  "input_dropout=0.1": {"input_dropout": 0.1},
}


def select_regularizer(score: Callable[[str, dict | None], float], names) -> tuple[str, dict]:
  """The entry of `REGULARIZERS` named in ``names`` with the lowest ``score(name, rates)``.

  ``score`` trains on part of the training split and scores on the rest (validation):
  the test split plays no part in the choice. Ties go to the first in ``names``.
  Returns the chosen name and every score.
  """
  scores = {name: float(score(name, REGULARIZERS[name])) for name in names}
  return min(scores, key=scores.get), scores


def regularizers_flag():
  """The ``--regularizers`` flag: the candidates `select_regularizer` tries (default all)."""
  return harness.flag(list(REGULARIZERS), "regularizers tried", choices=tuple(REGULARIZERS))


# Quick runs (the tests) try one candidate: the selection path, at a seventh of the cost.
QUICK_REGULARIZERS = ["weight_drop=0.25"]
