"""Every cell on one task, one run each: the modern adding problem's test MSE and time per step.

The task and budget of `experiments.adding` (b) at one T (default 100): values U[0, 1],
one marked value in each half, the target their sum; a linear readout of the final
``h``; every cell gets the same budget (``--steps`` Adam steps of learning rate ``--lr``,
global-norm clipping 1, batch ``--batch``, ``--hidden`` units, one seed) and its
library defaults, with two exceptions written down: the sLSTM and the mLSTM have ``HEADS``
heads (they need a head count; xLSTM's default) and the IndRNN the bound ``2 ** (1 / T)`` on
its recurrent weights (the paper's own setting for this task; see `jaxrnn.indrnn`); a
cell whose ``h`` is complex (the LRU) or is not its output (Mamba's SSM state) is read out
from its last output, a map of its final state and input, and so is the mLSTM, whose carry
(its memory) has no ``h``.
Nothing is tuned, so nothing is chosen on the test data. Reported per cell: the test
MSE on 2000 fresh sequences over the baseline 1/6 (predicting the mean), the parameter
count, and the time of one training step, every cell's compiled step timed in the same
interleaved rounds (`experiments.timing.interleaved`) with the ratio to the LSTM's (the
median over rounds of that round's ratio, and the per-round range: the noise).

One check, the seed document's claim at this T (as `experiments.adding`): the LSTM
reaches MSE / baseline < 0.1 while the tanh RNN stays above 0.5. Writes
``OUT/cells/cells.json``, ``.png`` and ``.md`` (the table).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrnn
from experiments import adding, harness, timing, training

NAME = "cells"
HEADS = 4
# The arguments a kind needs beyond its hidden size (T: the sequence length).
ARGUMENTS: dict[str, Callable[[int, int], dict[str, Any]]] = {
  "indrnn": lambda h, T: dict(recurrent_max=2 ** (1 / T)),
  "slstm": lambda h, T: dict(num_heads=HEADS if h % HEADS == 0 else 1),
  "mlstm": lambda h, T: dict(num_heads=HEADS if h % HEADS == 0 else 1),
  "s5": lambda h, T: dict(state_size=h),  # P = H, as in the selective and RL-memory runs
}
NAMES = {"elman": "tanh"}  # the rows' names where they differ from the kind's
# Every registered kind, read from the registry.
CELLS: dict[str, Callable[[int, int], jaxrnn.Cell]] = {
  NAMES.get(name, name): functools.partial(
    lambda h, T, kind: kind.factory(h, **ARGUMENTS.get(kind.name, lambda h, T: {})(h, T)), kind=kind
  )
  for name, kind in jaxrnn.cells.KINDS.items()
}


def loss_and_predict(cell, args):
  """``(loss(params, key), predict(params, xs))``: the adding problem's MSE on a batch made
  from ``key`` inside the compiled step, and the readout of the final ``h``."""

  def predict(params, xs):
    carry, ys = jaxrnn.scan(cell, params["rnn"], xs)
    last = ys[..., -1, :]  # a complex h (the LRU), a state wider than H (Mamba), no h (mLSTM)
    real_h = hasattr(carry, "h") and not jnp.iscomplexobj(carry.h)
    h = carry.h if real_h and carry.h.shape == last.shape else last
    return h @ params["w"] + params["b"]

  def loss(params, key):
    xs, ys = adding.make_batch(key, args.batch, args.length)
    return jnp.mean((predict(params, xs) - ys) ** 2)

  return loss, predict


def train_cell(name: str, args) -> tuple[dict, tuple]:
  """Trains one cell; ``(row, (step, state, key))``, the last to time its train step.

  The readout starts at ``w = 0``, ``b = 1`` (the mean target), so the untrained model
  predicts the baseline, as in `experiments.adding`.
  """
  cell = CELLS[name](args.hidden, args.length)
  k_init, k_data, k_test = jax.random.split(jax.random.key(args.seed), 3)
  params = {"rnn": cell.init(k_init, 2), "w": jnp.zeros(args.hidden), "b": jnp.ones(())}
  loss, predict = loss_and_predict(cell, args)
  opt = optax.adam(args.lr)
  step = training.make_step(loss, opt)  # one compiled step, trained with and then timed
  config = dict(cell=cell.name, cell_config=cell.config, steps=args.steps, lr=args.lr)
  config |= dict(batch=args.batch, length=args.length)
  batch_fn = lambda i: jax.random.fold_in(k_data, i)  # noqa: E731
  state = training.fit(
    step, training.TrainState.create(params, opt), batch_fn, args, NAME, name, config,
    steps=args.steps, model=cell, batch_size=args.batch,
  )  # fmt: skip
  xs, ys = adding.make_batch(k_test, args.test_size, args.length)
  mse = float(jax.jit(lambda p: jnp.mean((predict(p, xs) - ys) ** 2))(state.params))
  kernel = "step loop" if cell.sequence is None else "whole-sequence kernel"
  kernel = "linear recurrence" if cell.coefficients is not None else kernel
  size = sum(int(np.size(a)) for a in jax.tree.leaves(state.params["rnn"]))
  row = dict(cell=name, test_mse=mse, ratio=mse * 6.0, params=size, kernel=kernel)
  print(f"  {name:16} test MSE / baseline {row['ratio']:.4f}  ({size:,} params)", flush=True)
  return row, (step, state, batch_fn(args.steps))


def time_steps(timed: dict[str, tuple], rounds: int) -> timing.Timings:
  """Every cell's compiled training step on its final state, in the same interleaved rounds."""
  runs = {name: timing.compiled_call(*t) for name, t in timed.items()}
  return timing.interleaved(runs, rounds, warmup=1)


def table(rows: list[dict]) -> list[str]:
  """The markdown table of the rows (the README's), one line per cell."""
  head = ("cell", "sequence path", "params", "test MSE / baseline", "ms per step")
  head += ("step time / LSTM's (per-round range)",)
  body = [
    (r["cell"], r["kernel"], r["params"], r["ratio"], r["ms_per_step"])
    + (f"{r['vs_lstm']:.2f}x ({r['vs_lstm_range'][0]:.2f}-{r['vs_lstm_range'][1]:.2f})",)
    for r in rows
  ]
  return harness.md_table(head, body, "llrrrr")


def write_table(args, lines: list[str]) -> str:
  """Writes the table as ``NAME.md`` in the experiment's folder (where the harness puts its
  JSON and its metrics, `harness.metrics_path`); returns the path."""
  folder = os.path.dirname(os.path.dirname(harness.metrics_path(args, NAME, "table")))
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, f"{NAME}.md")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  return path


def run(args) -> dict:
  print(
    f"Adding problem (modern), T={args.length}: {args.steps} Adam steps (lr {args.lr}), batch "
    f"{args.batch}, H={args.hidden}, seed {args.seed}, one run per cell."
  )
  rows, timed = {}, {}
  for name in args.cells:
    rows[name], timed[name] = train_cell(name, args)
  t = time_steps(timed, args.rounds)
  reference = "lstm" if "lstm" in rows else next(iter(rows))
  for name, row in rows.items():
    ratios = t.ratios(name, reference)
    row |= dict(ms_per_step=t.median(name) * 1e3, vs_lstm=t.ratio(name, reference))
    row["vs_lstm_range"] = [min(ratios), max(ratios)]
  lines = table(list(rows.values()))
  print("\n".join(lines))
  write_table(args, lines)
  return dict(rows=list(rows.values()), table=lines, rounds=args.rounds, length=args.length)


def checks(results, args) -> list[dict]:
  """The seed's claim at this T, when both the LSTM and the tanh RNN ran; else none."""
  by = {r["cell"]: r["ratio"] for r in results["rows"]}
  return [adding.modern_check(args.length, by, args.steps)] if {"lstm", "tanh"} <= set(by) else []


def figure(plt, results, args):
  rows = results["rows"]
  fig, ax = harness.axes(
    plt, (7, 4), "ms per training step", "test MSE / baseline (1/6)",
    f"Adding problem, T={results['length']}: lower left is better",
  )  # fmt: skip
  for r in rows:
    ax.scatter(r["ms_per_step"], r["ratio"])
    ax.annotate(r["cell"], (r["ms_per_step"], r["ratio"]), fontsize=7)
  ax.set_yscale("log")
  return fig


FLAGS = {
  "cells": harness.flag(list(CELLS), "cells trained", choices=list(CELLS)),
  "length": harness.flag(100, "T"),
  "steps": harness.flag(2000, "Adam steps per cell"),
  "batch": harness.flag(64, "batch size"),
  "hidden": harness.flag(64, "H"),
  "lr": harness.flag(3e-3, "Adam learning rate"),
  "test_size": harness.flag(2000, "fresh test sequences"),
  "rounds": harness.flag(7, "interleaved timing rounds of the training steps"),
}
QUICK = dict(cells=["tanh", "lstm"], length=12, steps=20, hidden=8, batch=8, rounds=2)
SPEC = harness.Spec(NAME, __doc__, run, checks, FLAGS, QUICK, figure)


main = SPEC.main


if __name__ == "__main__":
  main()
