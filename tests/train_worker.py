"""A small, deterministic training run for the kill-and-resume test in test_train.py.

``python tests/train_worker.py RUN_DIR NUM_STEPS [SLEEP]`` trains an LSTM
regressor with `jaxrnn.loop.fit`, checkpointing into ``RUN_DIR/ckpt`` and
logging to ``RUN_DIR/metrics.jsonl``, and writes the final state to
``RUN_DIR/final.npz``. ``SLEEP`` seconds per step widen the window in which the
test can kill it. Started again after a kill, it resumes from its checkpoint.
"""

from __future__ import annotations

import os
import sys
import time

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


def batch_fn(step, seed=0, sleep=0.0):
  if sleep:
    time.sleep(sleep)
  key = jax.random.fold_in(jax.random.key(seed), step)
  x = jax.random.normal(key, (8, 10, 2))
  return {"x": x, "y": jnp.sum(x[:, :3, 0], axis=1)}


def initial_state(seed=0):
  k_rnn, k_w = jax.random.split(jax.random.key(seed + 1))
  params = {"rnn": CELL.init(k_rnn, 2), "w": 0.1 * jax.random.normal(k_w, (16, 1))}
  return train.TrainState.create(params, OPTIMIZER)


def run(run_dir, num_steps, sleep=0.0):
  """Trains (or resumes) and returns the final state as a flat dict of numpy arrays."""
  step = train.make_train_step(loss_fn, OPTIMIZER, max_grad_norm=1.0)
  state = loop.fit(
    step,
    initial_state(),
    lambda i: batch_fn(i, sleep=sleep),
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


if __name__ == "__main__":
  run_dir, num_steps = sys.argv[1], int(sys.argv[2])
  sleep = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
  final = run(run_dir, num_steps, sleep)
  np.savez(os.path.join(run_dir, "final.npz"), **final)
