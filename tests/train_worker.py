"""A small, deterministic training run for the fault tests in test_train.py.

``python tests/train_worker.py RUN_DIR NUM_STEPS [--kill-at I | --term-at I]``
trains an LSTM regressor with `jaxrnn.loop.fit`, checkpointing into
``RUN_DIR/ckpt`` every 10 steps and logging to ``RUN_DIR/metrics.jsonl``, and
writes the final state to ``RUN_DIR/final.npz``. The hooks are deterministic
points, not timings: ``--kill-at I`` sends this process SIGKILL while loading
batch I (step I + 1 never happens), ``--term-at I`` sends it SIGTERM there (fit
finishes step I + 1, checkpoints it and exits with status 143). Started again,
it resumes from its newest checkpoint.
"""

from __future__ import annotations

import argparse
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrnn
from jaxrnn import loop, train

CELL = jaxrnn.lstm(16)
OPTIMIZER = optax.adam(1e-2)


def loss_fn(params, batch):
  _, ys = jaxrnn.scan(CELL, params["rnn"], batch["x"])
  pred = ys[:, -1, :] @ params["w"]
  return jnp.mean((pred[:, 0] - batch["y"]) ** 2)


STEP = train.make_train_step(loss_fn, OPTIMIZER, max_grad_norm=1.0)  # compiled once per process


def batch_fn(step, seed=0):
  key = jax.random.fold_in(jax.random.key(seed), step)
  x = jax.random.normal(key, (8, 10, 2))
  return {"x": x, "y": jnp.sum(x[:, :3, 0], axis=1)}


def initial_state(seed=0):
  k_rnn, k_w = jax.random.split(jax.random.key(seed + 1))
  params = {"rnn": CELL.init(k_rnn, 2), "w": 0.1 * jax.random.normal(k_w, (16, 1))}
  return train.TrainState.create(params, OPTIMIZER)


def run(run_dir, num_steps, hook=None):
  """Trains (or resumes) and returns the final state as a flat dict of numpy arrays.

  ``hook(i)`` runs before batch i is made (the fault tests' deterministic point).
  """

  def batches(i):
    if hook is not None:
      hook(i)
    return batch_fn(i)

  state = loop.fit(
    STEP,
    initial_state(),
    batches,
    num_steps=num_steps,
    checkpoint_dir=os.path.join(run_dir, "ckpt"),
    checkpoint_every=10,
    keep=2,
    model=CELL,
    metadata={"seed": 0},
    metrics_path=os.path.join(run_dir, "metrics.jsonl"),
    log_every=1,
    progress=False,
  )
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def signal_at(step, signum, process_index=None):
  """A hook that sends this process ``signum`` when batch ``step`` is about to be made.

  With ``process_index``, only in that process of a multi-process run.
  """

  def hook(i):
    if i == step and process_index in (None, jax.process_index()):
      os.kill(os.getpid(), signum)

  return hook


if __name__ == "__main__":
  parser = argparse.ArgumentParser()
  parser.add_argument("run_dir")
  parser.add_argument("num_steps", type=int)
  parser.add_argument("--kill-at", type=int)
  parser.add_argument("--term-at", type=int)
  args = parser.parse_args()
  hook = None
  if args.kill_at is not None:
    hook = signal_at(args.kill_at, signal.SIGKILL)
  if args.term_at is not None:
    hook = signal_at(args.term_at, signal.SIGTERM)
  final = run(args.run_dir, args.num_steps, hook)
  np.savez(os.path.join(args.run_dir, "final.npz"), **final)
