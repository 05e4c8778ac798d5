"""The copying-memory task (Arjovsky, Shah and Bengio 2016), T = 50 and 100.

Each input sequence has T + 20 symbols: 10 symbols drawn uniformly from {1..8},
T - 1 blanks (0), the delimiter (9), and 10 more blanks. The target is blank
for the first T + 10 steps and then the 10 symbols, in order. The loss is the
cross-entropy averaged over all T + 20 steps. A model without memory can do no
better than predicting blanks and then a uniform guess over the 8 symbols, whose
loss is the memoryless baseline 10 ln 8 / (T + 20); we report loss / baseline
(1 = no memory, 0 = perfect copy) and the accuracy on the 10 recalled symbols
(chance 1/8).

Tanh RNN, IRNN, GRU and LSTM (one-hot inputs, linear readout to 9 classes)
are trained with the same budget (Adam, global-norm clipping 1). The claim under
test is the seed's: PASS at each T if the LSTM's loss is below half the
baseline while the tanh RNN's is not. The budget is small next to the paper's,
so a FAIL at the longer T may mean "not within this budget"; the JSON has the
per-run learning curves (``metrics/*.jsonl``) to tell which.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import optax

from experiments import common
from experiments.adding import CELLS
from jaxrnn import scan, train

NAME = "copy"
SYMBOLS, BLANK, DELIM, COPY = 8, 0, 9, 10


def make_batch(key, batch, length):
  """Integer ``inputs`` and ``targets``, both ``(batch, length + 20)``."""
  symbols = jax.random.randint(key, (batch, COPY), 1, SYMBOLS + 1)
  blanks = jnp.zeros((batch, length - 1), symbols.dtype)
  delim = jnp.full((batch, 1), DELIM, symbols.dtype)
  tail = jnp.zeros((batch, COPY), symbols.dtype)
  inputs = jnp.concatenate([symbols, blanks, delim, tail], axis=1)
  targets = jnp.concatenate([jnp.zeros((batch, length + COPY), symbols.dtype), symbols], axis=1)
  return inputs, targets


def baseline(length):
  return COPY * math.log(SYMBOLS) / (length + 2 * COPY)


def train_copy(cell, *, length, steps, batch, lr, seed, args, run):
  hidden = dict(cell.config)["hidden_size"]
  k_init, k_out, k_data, k_test = jax.random.split(jax.random.key(seed), 4)
  params = {
    "rnn": cell.init(k_init, DELIM + 1),
    "w": jax.random.normal(k_out, (hidden, SYMBOLS + 1)) / math.sqrt(hidden),
    "b": jnp.zeros((SYMBOLS + 1,)),
  }
  opt = optax.adam(lr)

  def logits_fn(params, inputs):
    _, hs = scan(cell, params["rnn"], jax.nn.one_hot(inputs, DELIM + 1))
    return hs @ params["w"] + params["b"][None, None, :]

  def loss_and_acc(params, inputs, targets):
    logits = logits_fn(params, inputs)
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets))
    recall = jnp.argmax(logits[:, -COPY:], axis=-1) == targets[:, -COPY:]
    return loss, jnp.mean(recall.astype(jnp.float32))

  def loss_fn(params, key):
    inputs, targets = make_batch(key, batch, length)
    return loss_and_acc(params, inputs, targets)[0]

  ckpt, metrics = common.run_paths(
    args,
    NAME,
    run,
    dict(cell=cell.name, cell_config=cell.config, length=length, steps=steps, batch=batch, lr=lr),
  )
  state = train.fit(
    train.make_train_step(loss_fn, opt, max_grad_norm=1.0),
    train.TrainState.create(params, opt),
    lambda i: jax.random.fold_in(k_data, i),
    num_steps=steps,
    checkpoint_dir=ckpt,
    checkpoint_every=max(steps // 4, 1),
    model=cell,
    metrics_path=metrics,
    log_every=max(steps // 40, 1),
    progress=not args.no_progress,
    desc=run,
    batch_size=batch,
  )
  inputs, targets = make_batch(k_test, 1000, length)
  loss, acc = jax.jit(loss_and_acc)(state.params, inputs, targets)
  return {
    "loss": float(loss),
    "ratio": float(loss) / baseline(length),
    "recall_accuracy": float(acc),
  }


def run(args) -> dict:
  started = time.perf_counter()
  print(
    f"Copying memory: {args.steps} Adam steps (lr {args.lr}), batch {args.batch}, H={args.hidden}, "
    f"seed {args.seed}. Test loss / memoryless baseline 10 ln 8 / (T + 20) [recall accuracy]:"
  )
  print(f"  {'T':>5}" + "".join(f"{c:>18}" for c in args.cells))
  table = {}
  for length in args.lengths:
    row = {}
    for name in args.cells:
      row[name] = train_copy(
        CELLS[name](args.hidden),
        length=length,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        seed=args.seed,
        args=args,
        run=f"{name}-T{length}",
      )
    table[str(length)] = row
    cells = "".join(
      f"{row[c]['ratio']:>10.3f} [{row[c]['recall_accuracy']:.2f}]" for c in args.cells
    )
    print(f"  {length:>5}{cells}")
  checks = []
  if "lstm" in args.cells and "tanh" in args.cells:
    for length, row in table.items():
      checks.append(
        common.check(
          f"copy T={length}: loss/baseline, LSTM (ours) vs tanh RNN (reference)",
          row["lstm"]["ratio"],
          row["tanh"]["ratio"],
          "the seed's claim; task and baseline of Arjovsky, Shah & Bengio 2016",
          row["lstm"]["ratio"] < 0.5 and row["tanh"]["ratio"] >= 0.5,
          "LSTM < 0.5 x baseline and tanh RNN >= 0.5 x baseline",
          f"{args.steps} steps; recall accuracy (chance 0.125): "
          + ", ".join(f"{c} {row[c]['recall_accuracy']:.2f}" for c in args.cells)
          + "; loss/baseline: "
          + ", ".join(
            f"{c} {row[c]['ratio']:.3f}" for c in args.cells if c not in ("lstm", "tanh")
          ),
        )
      )
  results = {
    "table": table,
    "baselines": {str(t): baseline(t) for t in args.lengths},
    "cells": list(args.cells),
  }
  return common.finish(NAME, args, results, checks, started, _figure(results))


def _figure(results):
  plt = common.pyplot()
  if plt is None:
    return None
  fig, ax = plt.subplots(figsize=(6, 4))
  lengths = [int(t) for t in results["table"]]
  for name in results["cells"]:
    ax.plot(lengths, [results["table"][str(t)][name]["ratio"] for t in lengths], "o-", label=name)
  ax.axhline(1.0, color="gray", ls=":", label="memoryless baseline")
  ax.set_xlabel("T (delay)")
  ax.set_ylabel("test loss / baseline")
  ax.set_title("Copying memory: lower is better")
  ax.legend(fontsize=8)
  return fig


def main(argv=None) -> dict:
  p = common.parser(NAME, __doc__)
  p.add_argument("--lengths", type=int, nargs="+", default=[50, 100], help="T values")
  p.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
  p.add_argument("--steps", type=int, default=2000, help="Adam steps per run")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--hidden", type=int, default=64, help="H")
  p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
  args = p.parse_args(argv)
  if args.quick:
    args.lengths, args.steps, args.hidden, args.batch = [10], 60, 16, 32
    args.cells = ["tanh", "lstm"]
  return run(args)


if __name__ == "__main__":
  main()
