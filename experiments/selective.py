"""The Mamba paper's synthetic tasks: Selective Copying and Induction Heads, every cell.

Gu and Dao 2023 ("Mamba", section 4.1, tables 1 and 2; appendix E.1) separate models
whose recurrence depends on the input (selective: S6, Mamba) from time-invariant ones
(S4 and other linear time-invariant SSMs) with two synthetic tasks:

- **Selective Copying.** Vocabulary V = 16: token 0 is noise, token V - 1 the recall
  marker, the data tokens are 1..V-2 (14 values). ``--copy-tokens`` data tokens sit at
  random (sorted, distinct) positions among ``--copy-length`` positions of noise, followed
  by as many markers; at each marker the model outputs the next data token, in order. The
  layout is that of the paper's generator (state-spaces' ``torch_copying_data`` with
  ``variable=True``). Accuracy: the fraction of recalled tokens right (chance 1/14).
- **Induction Heads.** Tokens uniform over 0..V-2 (15 values), the special token V - 1
  once at a random position p (p + 1 < T - 1) and again as the last token; the model
  predicts, at the last step, the token that followed the first special token. Accuracy:
  the fraction of final-token predictions right (chance 1/15). Trained at
  ``--induction-length``, tested at 1x to 16x that length (``--test-multiples``).

The paper's setup beside this run's (scaled to a shared, loaded 2-core CPU; probes of one
seed of a smaller Mamba (expand 1, N = 8), not part of the run, showed L = 64 with 4
tokens still on the plateau after 1500 steps of batch 16, and Induction Heads at T = 64
after 800 steps of batch 16):

- Selective Copying. Paper: L = 4096, 16 data tokens, V = 16, 400K steps. Here: L = 32
  (+4 markers), 4 data tokens, V = 16; 1200 Adam steps of batch 16.
- Induction Heads. Paper: trained at T = 256, tested from 2^6 to 2^20, V = 16. Here:
  trained at T = 32, tested at 32 .. 512 (1x .. 16x), V = 16; 500 Adam steps of batch 32.
- Model. Paper and here: 2 layers of width 64; Mamba with expand 2, state size N = 16 and
  a width-4 convolution (the paper's and `jaxrnn.mamba`'s defaults).
- Seeds. Here 3 per cell (vmapped), 1 in ``--quick``.

The model of every cell is an embedding (V -> 64), ``jaxrnn.rnn_layers(kind, 64,
num_layers=2)`` and a linear head to V logits at each step; its arguments beyond the
width are written down in `CELL_ARGUMENTS` (S5 a state size of 64; the mLSTM 4 heads, as
`experiments.cells`; everything else the library's defaults). Unlike the paper's blocks
there is no nonlinearity, normalisation or residual between the two layers: each
``rnn_layers`` layer is the cell alone, so the LRU and S5 stacks are linear
time-invariant maps from embeddings to logits. Training: Adam (``--lr`` 3e-3), global-norm
clipping 1, cross-entropy at the recall steps only, a fresh batch every step from
``fold_in(key, step)``; the seeds of one cell train in one vmapped step. Nothing is tuned:
every cell gets the same budget, and the validation accuracy (a fresh set from the
training generator under its own key) is recorded beside the test accuracy (sets from
separate keys, `TEST_KEY`; ``--test-size`` sequences per length), which plays no part in
any choice.

Checks, each with the paper's number beside it: Mamba's mean selective-copying accuracy
at least 0.9 (paper: 99.8% for Mamba with S6); the time-invariant cells (LRU, S5) each at
least 0.1 below Mamba's ("clearly": the paper's S4 rows are 18.3% to 57.0%); Mamba's
mean induction-heads accuracy at 16x the training length at least 0.9 of its accuracy at
the training length, which must itself be at least 0.9 (the ratio of two chance-level
accuracies would pass otherwise; the paper: 100% at every length up to 2^20 after
training at 256). The checks' selective cell is ``--selective`` (Mamba; ``--quick`` runs
minGRU alone, for the suite's time). Writes ``OUT/selective/selective.json``
and two plots: ``selective_copying.png`` (accuracy per cell) and ``induction_heads.png``
(accuracy against test length per cell).
"""

from __future__ import annotations

import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrnn
from experiments import cells, harness, training

NAME = "selective"
VOCAB = 16  # the paper's vocabulary, both tasks
NOISE, MARKER, SPECIAL = 0, VOCAB - 1, VOCAB - 1
TEST_KEY = 1_000_003  # the test sets' keys derive from it; training and validation never do
CELLS = ("mamba", "s5", "lru", "rg_lru", "mlstm", "lstm", "gru", "min_gru")
TIME_INVARIANT = ("lru", "s5")
# The arguments a kind needs beyond its width (the mLSTM's heads are experiments.cells').
CELL_ARGUMENTS = {
  "s5": lambda h: dict(state_size=h),
  "mlstm": lambda h: cells.ARGUMENTS["mlstm"](h, 0),
}
PAPER = {
  "copying": {
    "no gate + S4": 0.183,
    "no gate + S6": 0.970,
    "H3 + S4": 0.570,
    "H3 + S6": 0.997,
    "Mamba + S4": 0.564,
    "Mamba + S6": 0.998,
  },
  "copying_setup": dict(length=4096, vocab=VOCAB, tokens=16, layers=2, width=64, steps=400_000),
  "induction_setup": dict(train_length=256, test_lengths="2^6 .. 2^20", vocab=VOCAB),
  "induction": "Mamba: 100% at every test length up to 2^20 (4000x the training length); "
  "attention and S4-style models fail beyond about 2x",
}


def copying_batch(key, batch, length, tokens):
  """A Selective Copying batch: ``(inputs, targets, recall)``, each ``(batch, length +
  tokens)``; ``inputs`` and ``targets`` int32, ``recall`` (the steps scored) bool.

  ``tokens`` data tokens from 1..V-2 at distinct random positions among the first
  ``length`` steps (in order), noise (0) elsewhere, then ``tokens`` markers (V - 1); at
  the markers the targets are the data tokens in order (elsewhere 0, not scored).
  """
  k_pos, k_val = jax.random.split(key)
  order = jnp.argsort(jax.random.uniform(k_pos, (batch, length)), axis=-1)
  positions = jnp.sort(order[:, :tokens], axis=-1)
  values = jax.random.randint(k_val, (batch, tokens), 1, VOCAB - 1)
  rows = jnp.broadcast_to(jnp.arange(batch)[:, None], positions.shape)
  data = jnp.zeros((batch, length), jnp.int32).at[rows, positions].set(values)
  markers = jnp.full((batch, tokens), MARKER, jnp.int32)
  inputs = jnp.concatenate([data, markers], axis=1)
  targets = jnp.concatenate([jnp.zeros_like(data), values], axis=1)
  recall = jnp.broadcast_to(jnp.arange(length + tokens)[None, :] >= length, inputs.shape)
  return inputs, targets, recall


def induction_batch(key, batch, length):
  """An Induction Heads batch: ``(inputs, targets, recall)``, each ``(batch, length)``;
  only the last step is scored (``recall``).

  Tokens uniform over 0..V-2; the special token (V - 1) at a random ``p < length - 2`` and
  at ``length - 1``; the last step's target is the token at ``p + 1``.
  """
  k_tok, k_pos = jax.random.split(key)
  inputs = jax.random.randint(k_tok, (batch, length), 0, VOCAB - 1)
  p = jax.random.randint(k_pos, (batch,), 0, length - 2)
  rows = jnp.arange(batch)
  inputs = inputs.at[rows, p].set(SPECIAL).at[:, length - 1].set(SPECIAL)
  targets = jnp.zeros_like(inputs).at[:, length - 1].set(inputs[rows, p + 1])
  recall = jnp.broadcast_to(jnp.arange(length)[None, :] == length - 1, inputs.shape)
  return inputs, targets, recall


@functools.cache
def make_model(kind, hidden):
  """``(model, init(key) -> params, logits(params, inputs) -> (batch, T, V))``; one per
  ``(kind, hidden)``, so both tasks share its compiled functions where shapes agree."""
  extra = CELL_ARGUMENTS.get(kind, lambda h: {})(hidden)
  model = jaxrnn.rnn_layers(kind, hidden, num_layers=2, **extra)

  def init(key):
    k_e, k_r, k_o = jax.random.split(key, 3)
    return {
      "embed": jax.random.normal(k_e, (VOCAB, hidden)),
      "rnn": model.init(k_r, hidden),
      "w": jax.random.normal(k_o, (hidden, VOCAB)) / math.sqrt(hidden),
      "b": jnp.zeros((VOCAB,)),
    }

  def logits(params, inputs):
    _, ys = model.apply(params["rnn"], params["embed"][inputs], deterministic=True)
    return ys @ params["w"] + params["b"][None, None, :]

  return model, init, logits


def loss_and_accuracy(logits_fn, params, inputs, targets, recall):
  """Cross-entropy and accuracy over the ``recall`` steps (scalars)."""
  logits = logits_fn(params, inputs)
  weight = recall.astype(jnp.float32)
  count = jnp.sum(weight)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  right = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return jnp.sum(loss * weight) / count, jnp.sum(right * weight) / count


@functools.cache
def seeds_step(kind, hidden, lr):
  """``(opt, step(states, batches))``: Adam steps of every seed's model at once (vmapped),
  compiled once per ``(kind, hidden, lr)`` and batch shape; metrics: the seeds' mean loss."""
  _, _, logits_fn = make_model(kind, hidden)
  opt = optax.adam(lr)
  loss_fn = lambda p, batch: loss_and_accuracy(logits_fn, p, *batch)[0]  # noqa: E731
  step = training.make_step(loss_fn, opt, jit=False)

  def step_all(state, batch):
    state, metrics = jax.vmap(step)(state, batch)
    out = {k: jnp.max(v) for k, v in metrics.items() if k in ("skipped", "first_nonfinite")}
    return state, out | {"loss": jnp.mean(metrics["loss"]), "loss_max": jnp.max(metrics["loss"])}

  return opt, jax.jit(step_all)


def train_seeds(kind, name, task, args, seeds, steps, batch):
  """Trains one model per seed (vmapped) on ``task``'s batches of ``batch`` (``task``: a
  generator and its sizes, `make_batch`), as run ``NAME-KIND``; returns ``(logits_fn,
  params, keys)``: params stacked over the seeds, ``keys[:, 2]`` each seed's validation key."""
  _, init, logits_fn = make_model(kind, args.hidden)
  opt, step = seeds_step(kind, args.hidden, args.lr)
  keys = jax.vmap(lambda s: jax.random.split(jax.random.key(s), 3))(jnp.asarray(seeds))
  state = jax.jit(jax.vmap(lambda k: training.TrainState.create(init(k), opt)))(keys[:, 0])
  data = jax.jit(
    jax.vmap(lambda k, i: make_batch(task, jax.random.fold_in(k, i), batch), (0, None))
  )
  config = dict(kind=kind, seeds=list(seeds), lr=args.lr, task=name, sizes=list(task[1]))
  config |= dict(steps=steps, batch=batch, hidden=args.hidden)
  state = training.fit(
    step, state, lambda i: data(keys[:, 1], i), args, NAME, f"{name}-{kind}", config,
    steps=steps, model=None, batch_size=batch * len(seeds),
  )  # fmt: skip
  return logits_fn, state.params, keys


def make_batch(task, key, batch):
  """``task = (generator, sizes)``, e.g. ``(copying_batch, (32, 4))``: ``generator(key, batch,
  *sizes)``. A task is a hashable value, so the compiled evaluators can be cached by it."""
  generator, sizes = task
  return generator(key, batch, *sizes)


@functools.cache
def evaluator(logits_fn, task, chunk):
  """``evaluate(params, key) -> (seeds,)`` accuracies on a batch of ``chunk`` sequences of
  ``task`` drawn from ``key`` inside the compiled function, params stacked over the seeds."""
  acc = lambda p, *batch: loss_and_accuracy(logits_fn, p, *batch)[1]  # noqa: E731
  vmapped = jax.vmap(acc, in_axes=(0, None, None, None))
  return jax.jit(lambda params, key: vmapped(params, *make_batch(task, key, chunk)))


def accuracy(logits_fn, params, key, task, size, chunk) -> list[float]:
  """Each seed's accuracy on ``size`` fresh sequences of ``task`` from ``key``, ``chunk`` at
  a time (Mamba's states are ``E N`` times its width); ``(seeds,)`` floats."""
  evaluate = evaluator(logits_fn, task, chunk)
  accs = [evaluate(params, jax.random.fold_in(key, i)) for i in range(max(size // chunk, 1))]
  return [float(a) for a in np.mean(np.stack(accs), axis=0)]


def run_copying(kind, args, seeds):
  """Selective Copying for ``kind``: per-seed validation and test accuracy."""
  task = (copying_batch, (args.copy_length, args.copy_tokens))
  logits_fn, params, keys = train_seeds(
    kind, "copy", task, args, seeds, args.copy_steps, args.copy_batch
  )
  n, c = args.test_size, args.eval_chunk
  val = accuracy(logits_fn, params, keys[0, 2], task, n, c)
  test = accuracy(logits_fn, params, jax.random.key(TEST_KEY + seeds[0]), task, n, c)
  return dict(validation=val, test=test, mean=float(np.mean(test)), std=float(np.std(test)))


def run_induction(kind, args, seeds):
  """Induction Heads for ``kind``: validation accuracy at the training length, test accuracy
  at each multiple of it (per seed)."""
  train_len = args.induction_length
  task = (induction_batch, (train_len,))
  logits_fn, params, keys = train_seeds(
    kind, "induction", task, args, seeds, args.induction_steps, args.induction_batch
  )
  n, c = args.test_size, args.eval_chunk
  val = accuracy(logits_fn, params, keys[0, 2], task, n, c)
  test = {}
  for m in args.test_multiples:
    length, key = m * train_len, jax.random.key(TEST_KEY + 100 * seeds[0] + m)
    acc = accuracy(logits_fn, params, key, (induction_batch, (length,)), n, max(c // m, 1))
    test[str(length)] = dict(test=acc, mean=float(np.mean(acc)), std=float(np.std(acc)))
  return dict(validation=val, by_length=test)


def run(args) -> dict:
  seeds = [args.seed + i for i in range(args.seeds)]
  print(
    f"Selective Copying (L={args.copy_length}, {args.copy_tokens} tokens) and Induction Heads "
    f"(trained at T={args.induction_length}, tested at x{args.test_multiples}), V={VOCAB}: "
    f"{args.copy_steps} and {args.induction_steps} Adam steps (lr {args.lr}), batch "
    f"{args.copy_batch} and {args.induction_batch}, width {args.hidden}, 2 layers, seeds {seeds}."
  )
  copying, induction = {}, {}
  for kind in args.cells:
    copying[kind] = run_copying(kind, args, seeds)
    induction[kind] = run_induction(kind, args, seeds)
    by = induction[kind]["by_length"]
    print(
      f"  {kind:8} copying {copying[kind]['mean']:.3f} (validation "
      f"{np.mean(copying[kind]['validation']):.3f}); induction "
      + " ".join(f"{n}:{r['mean']:.2f}" for n, r in by.items()),
      flush=True,
    )
  arguments = {k: CELL_ARGUMENTS[k](args.hidden) for k in args.cells if k in CELL_ARGUMENTS}
  setup = dict(
    copying=dict(length=args.copy_length, tokens=args.copy_tokens, vocab=VOCAB),
    induction=dict(train_length=args.induction_length, test_multiples=args.test_multiples),
    model=dict(layers=2, width=args.hidden, arguments=arguments),
    training=dict(lr=args.lr, seeds=seeds, clip=1.0, optimizer="adam"),
  )
  setup["copying"] |= dict(steps=args.copy_steps, batch=args.copy_batch)
  setup["induction"] |= dict(steps=args.induction_steps, batch=args.induction_batch)
  chance = dict(copying=1 / (VOCAB - 2), induction=1 / (VOCAB - 1))
  return dict(copying=copying, induction=induction, setup=setup, paper=PAPER, chance=chance,
              cells=list(args.cells))  # fmt: skip


def induction_ratio(results, kind) -> tuple[float, float, float]:
  """``(accuracy at the training length, at the longest test length, their ratio)``."""
  by = results["induction"][kind]["by_length"]
  lengths = sorted(by, key=int)
  first, last = by[lengths[0]]["mean"], by[lengths[-1]]["mean"]
  return first, last, last / first if first > 0 else 0.0


def checks(results, args) -> list[dict]:
  """The selective cell (``--selective``, Mamba) >= 0.9 on copying; LRU and S5 at least 0.1
  below it; it holds 0.9 of its induction accuracy at 16x (for the cells that ran)."""
  sel, copy = args.selective, {k: r["mean"] for k, r in results["copying"].items()}
  if sel not in copy:
    return []
  others = ", ".join(f"{k} {v:.3f}" for k, v in copy.items())
  seeds = len(results["setup"]["training"]["seeds"])
  out = [harness.check(
    f"selective copying: accuracy, {sel} (ours) vs the paper's Mamba (S6)",
    copy[sel], PAPER["copying"]["Mamba + S6"], "Gu & Dao 2023, table 1 (L=4096, 400K steps)",
    copy[sel] >= 0.9, f"{sel} mean test accuracy >= 0.9", f"mean of {seeds} seeds; every "
    f"cell: {others}; chance {results['chance']['copying']:.3f}",
  )]  # fmt: skip
  for kind in (k for k in TIME_INVARIANT if k in copy):
    out.append(harness.check(
      f"selective copying: accuracy, {kind} (time-invariant, ours) vs the paper's S4",
      copy[kind], PAPER["copying"]["Mamba + S4"],
      "Gu & Dao 2023, table 1: S4 18.3% (no gate) to 57.0% (H3)",
      copy[kind] <= copy[sel] - 0.1, f"accuracy at least 0.1 below {sel}'s",
      f"{sel} {copy[sel]:.3f}; std over seeds {results['copying'][kind]['std']:.3f}",
    ))  # fmt: skip
  first, last, ratio = induction_ratio(results, sel)
  lengths = sorted(results["induction"][sel]["by_length"], key=int)
  out.append(harness.check(
    f"induction heads: {sel} accuracy at T={lengths[-1]}, trained at T={lengths[0]}",
    last, 1.0, "Gu & Dao 2023, table 2: Mamba 100% up to 2^20 after training at 256",
    ratio >= 0.9 and first >= 0.9,
    "accuracy at the longest length >= 0.9 x at the training length, which is >= 0.9",
    f"accuracy {first:.3f} at T={lengths[0]} (ratio {ratio:.3f}); chance "
    f"{results['chance']['induction']:.3f}",
  ))  # fmt: skip
  return out


def copying_figure(plt, results, args):
  """Selective Copying: each cell's mean test accuracy (bar) and its seeds (dots)."""
  fig, ax = harness.axes(plt, (7, 3.8), "cell", "test accuracy (recalled tokens)",
                         "Selective Copying: mean and seeds")  # fmt: skip
  kinds = results["cells"]
  for i, kind in enumerate(kinds):
    r = results["copying"][kind]
    ax.bar(i, r["mean"], color="C0" if kind not in TIME_INVARIANT else "C3")
    ax.plot([i] * len(r["test"]), r["test"], "k.", ms=4)
  ax.axhline(results["chance"]["copying"], color="gray", ls=":", label="chance 1/14")
  ax.set_xticks(range(len(kinds)), kinds, fontsize=8)
  ax.set_ylim(0, 1.02)
  ax.legend(fontsize=8)
  return fig


def induction_figure(plt, results, args):
  """Induction Heads: each cell's mean test accuracy against the test length."""
  fig, ax = harness.axes(plt, (7, 4), "test length T (log scale)", "test accuracy (last token)",
                         "Induction Heads: trained at T={}".format(
                           results["setup"]["induction"]["train_length"]))  # fmt: skip
  for kind in results["cells"]:
    by = results["induction"][kind]["by_length"]
    lengths = sorted(by, key=int)
    ax.plot([int(n) for n in lengths], [by[n]["mean"] for n in lengths], "o-", label=kind)
  ax.axhline(results["chance"]["induction"], color="gray", ls=":", label="chance 1/15")
  ax.set_xscale("log", base=2)
  ax.set_ylim(0, 1.02)
  ax.legend(fontsize=7, ncol=2)
  return fig


def save_plots(results, args) -> None:
  """Both plots into ``OUT/selective/``: ``selective_copying.png``, ``induction_heads.png``."""
  folder = os.path.join(args.out, NAME)
  os.makedirs(folder, exist_ok=True)
  harness.save_figure(copying_figure, results, args, os.path.join(folder, "selective_copying.png"))
  harness.save_figure(induction_figure, results, args, os.path.join(folder, "induction_heads.png"))


def run_and_plot(args) -> dict:
  results = run(args)
  save_plots(results, args)
  return results


FLAGS = {
  "cells": harness.flag(list(CELLS), "cells trained", choices=list(jaxrnn.cells.KINDS)),
  "selective": harness.flag("mamba", "the selective cell the checks are about"),
  "seeds": harness.flag(3, "seeds per cell (trained together, vmapped), from --seed on"),
  "copy_length": harness.flag(32, "Selective Copying: positions the data tokens are among"),
  "copy_tokens": harness.flag(4, "Selective Copying: data tokens to recall"),
  "copy_steps": harness.flag(1200, "Selective Copying: Adam steps"),
  "copy_batch": harness.flag(16, "Selective Copying: sequences per step and seed"),
  "induction_length": harness.flag(32, "Induction Heads: training length"),
  "test_multiples": harness.flag([1, 2, 4, 8, 16], "Induction Heads: test lengths / training"),
  "induction_steps": harness.flag(500, "Induction Heads: Adam steps"),
  "induction_batch": harness.flag(32, "Induction Heads: sequences per step and seed"),
  "hidden": harness.flag(64, "width of both layers and the embedding"),
  "lr": harness.flag(3e-3, "Adam learning rate"),
  "test_size": harness.flag(256, "test (and validation) sequences per length"),
  "eval_chunk": harness.flag(128, "sequences per evaluation call at the training length"),
}
# Both tasks at the same shapes (T = 8, batch 8): one compiled train step serves both. One
# cell, minGRU (its gate reads the input: the checks' selective cell), whose step compiles
# in a fraction of Mamba's time: the suite's budget.
QUICK = dict(
  cells=["min_gru"],
  selective="min_gru",
  seeds=1,
  copy_length=6,
  copy_tokens=2,
  induction_length=8,
)
QUICK |= dict(copy_steps=30, induction_steps=30, copy_batch=8, induction_batch=8, hidden=8)
QUICK |= dict(test_multiples=[1, 2], test_size=32, eval_chunk=32)
SPEC = harness.Spec(NAME, __doc__, run_and_plot, checks, FLAGS, QUICK)


main = SPEC.main


if __name__ == "__main__":
  main()
