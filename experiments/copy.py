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

import jax
import jax.numpy as jnp
import optax

from experiments import adding, harness, training
from jaxrnn import scan

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
  """Trains ``cell`` + a linear readout of every step; test loss, ratio and recall accuracy."""
  k_init, k_out, k_data, k_test = jax.random.split(jax.random.key(seed), 4)
  params = training.readout_params(cell, k_init, k_out, DELIM + 1, SYMBOLS + 1)

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

  state = training.minimize(
    loss_fn, params, k_data, cell, args, NAME, run, lr=lr, steps=steps, batch=batch, length=length
  )
  inputs, targets = make_batch(k_test, 1000, length)
  loss, acc = jax.jit(loss_and_acc)(state.params, inputs, targets)
  return {
    "loss": float(loss),
    "ratio": float(loss) / baseline(length),
    "recall_accuracy": float(acc),
  }


def run(args) -> dict:
  print(
    f"Copying memory: {args.steps} Adam steps (lr {args.lr}), batch {args.batch}, H={args.hidden}, "
    f"seed {args.seed}. Test loss / memoryless baseline 10 ln 8 / (T + 20) [recall accuracy]:"
  )
  print(f"  {'T':>5}" + "".join(f"{c:>18}" for c in args.cells))
  describe = lambda row: "".join(  # noqa: E731
    f"{r['ratio']:>10.3f} [{r['recall_accuracy']:.2f}]" for r in row.values()
  )
  table = adding.sweep(args, train_copy, describe)
  baselines = {str(t): baseline(t) for t in args.lengths}
  return {"table": table, "baselines": baselines, "cells": list(args.cells)}


def checks(results, args) -> list[dict]:
  """At each T: the LSTM below half the memoryless baseline, the tanh RNN not."""
  if "lstm" not in args.cells or "tanh" not in args.cells:
    return []
  out = []
  for length, row in results["table"].items():
    others = ", ".join(f"{c} {r['ratio']:.3f}" for c, r in row.items() if c not in ("lstm", "tanh"))
    out.append(
      harness.check(
        f"copy T={length}: loss/baseline, LSTM (ours) vs tanh RNN (reference)",
        row["lstm"]["ratio"],
        row["tanh"]["ratio"],
        "the seed's claim; task and baseline of Arjovsky, Shah & Bengio 2016",
        row["lstm"]["ratio"] < 0.5 and row["tanh"]["ratio"] >= 0.5,
        "LSTM < 0.5 x baseline and tanh RNN >= 0.5 x baseline",
        f"{args.steps} steps; recall accuracy (chance 0.125): "
        + ", ".join(f"{c} {r['recall_accuracy']:.2f}" for c, r in row.items())
        + f"; loss/baseline: {others}",
      )
    )
  return out


def figure(plt, results, args):
  fig, ax = harness.axes(
    plt, (6, 4), "T (delay)", "test loss / baseline", "Copying memory: lower is better"
  )
  lengths = [int(t) for t in results["table"]]
  for name in results["cells"]:
    ax.plot(lengths, [results["table"][str(t)][name]["ratio"] for t in lengths], "o-", label=name)
  ax.axhline(1.0, color="gray", ls=":", label="memoryless baseline")
  ax.legend(fontsize=8)
  return fig


FLAGS = {
  "lengths": harness.flag([50, 100], "T values"),
  "cells": adding.CELL_CHOICES,
  "steps": harness.flag(2000, "Adam steps per run"),
  "batch": harness.flag(64, "sequences per step"),
  "hidden": harness.flag(64, "H"),
  "lr": harness.flag(1e-3, "Adam learning rate"),
}
QUICK = dict(lengths=[10], steps=60, hidden=16, batch=32, cells=["tanh", "lstm"])
SPEC = harness.Spec(NAME, __doc__, run, checks, FLAGS, QUICK, figure)


main = SPEC.main


if __name__ == "__main__":
  main()
