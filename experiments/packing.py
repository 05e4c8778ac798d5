"""Sequence packing with ``resets``: the same training as padding, with fewer padded steps.

A data set of variable-length sequences (lengths log-uniform in [``min_length``,
``max_length``], as document lengths in a corpus are skewed) of a per-step task: the
input is ``x_t ~ U(-1, 1)``, the target at every step the running mean of the
sequence's inputs so far. Each training step takes the next ``batch`` sequences of
one fixed shuffled order and trains an LSTM with a linear readout at every step two ways:

(a) padded: one sequence per row, every row ``max_length`` steps, ``seq_lengths``;
(b) packed: the same sequences, several per row (first-fit decreasing into rows of
    ``max_length`` steps; the row count rounded up to a multiple of ``row_multiple``,
    spare rows empty, so that few shapes are compiled), ``resets`` True where each
    sequence starts, ``seq_lengths`` the row's filled length.

No regularizer; the loss is the mean squared error over valid steps (the sum over
every valid step of the batch divided by their count, the same count both ways);
the same init, Adam (``lr``), global-norm clipping 1. A reset restarts the carry from
the initial carry, so each packed sequence computes exactly what it computes alone
and (a) and (b) have the same loss at every step, up to float rounding (the sums run
in another order). Checks:

- PASS if the largest relative loss difference over all steps is at most 1e-5;
- the throughput: the first ``timed_steps`` training steps, padded against packed,
  timed in interleaved rounds (`experiments.timing.interleaved`; the ratio is the
  median over rounds of that round's ratio, its range the noise), beside the ideal
  gain, padded rows over packed rows (the time steps computed). PASS if the measured
  speed-up reaches at least half of the ideal's excess over 1.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrnn
from experiments import harness, timing, training

NAME = "packing"
LOSS_TOLERANCE = 1e-5


# ----------------------------------------------------------------------------- data


def make_sequences(seed: int, n: int, min_length: int, max_length: int) -> list[np.ndarray]:
  """``n`` input sequences, float32 ``(length,)``, lengths log-uniform in the range."""
  rng = np.random.default_rng(seed)
  logs = rng.uniform(math.log(min_length), math.log(max_length + 1), n)
  lengths = np.minimum(np.exp(logs).astype(int), max_length)
  return [rng.uniform(-1.0, 1.0, k).astype(np.float32) for k in lengths]


def running_mean(x: np.ndarray) -> np.ndarray:
  """The task's targets: ``y_t = mean(x_0..x_t)``."""
  return (np.cumsum(x, dtype=np.float64) / np.arange(1, len(x) + 1)).astype(np.float32)


def pack(lengths: list[int], row_length: int) -> list[list[int]]:
  """First-fit decreasing: rows of sequence indices whose lengths sum to at most
  ``row_length``; each row's sequences in the order they are laid out."""
  rows: list[list[int]] = []
  fill: list[int] = []
  for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
    row = next((r for r, f in enumerate(fill) if f + lengths[i] <= row_length), None)
    if row is None:
      rows.append([])
      fill.append(0)
      row = len(rows) - 1
    rows[row].append(i)
    fill[row] += lengths[i]
  return rows


def lay_out(seqs: list[np.ndarray], rows: list[list[int]], n_rows: int, row_length: int):
  """``{"xs" (n_rows, L, 1), "ys" (n_rows, L), "lengths" (n_rows,), "resets" (n_rows, L)}``:
  each row's sequences one after the other, a reset where each starts, zeros after."""
  xs = np.zeros((n_rows, row_length), np.float32)
  ys = np.zeros((n_rows, row_length), np.float32)
  resets = np.zeros((n_rows, row_length), bool)
  lengths = np.zeros(n_rows, np.int32)
  for r, row in enumerate(rows):
    for i in row:
      s, e = lengths[r], lengths[r] + len(seqs[i])
      xs[r, s:e], ys[r, s:e], resets[r, s] = seqs[i], running_mean(seqs[i]), True
      lengths[r] = e
  return dict(xs=xs[..., None], ys=ys, lengths=lengths, resets=resets)


def batches(args) -> tuple[list[dict], list[dict]]:
  """``(padded, packed)``: every training step's batch both ways, the same sequences.

  Step ``i`` takes sequences ``order[i * batch : (i + 1) * batch]`` of one shuffled order.
  A packed batch has the rows its sequences need rounded up to a multiple of
  ``row_multiple`` (at most ``batch``), so that few shapes are compiled.
  """
  n, k = args.steps * args.batch, args.batch
  seqs = make_sequences(args.seed, n, args.min_length, args.max_length)
  order = np.random.default_rng(args.seed + 1).permutation(n)
  chosen = [[seqs[j] for j in order[i * k : (i + 1) * k]] for i in range(args.steps)]
  padded, packed = [], []
  for step in chosen:
    rows = pack([len(s) for s in step], args.max_length)
    n_rows = min(-(-len(rows) // args.row_multiple) * args.row_multiple, k)
    padded.append(lay_out(step, [[i] for i in range(k)], k, args.max_length))
    del padded[-1]["resets"]  # padding needs none: what a user of padding runs
    packed.append(lay_out(step, rows, n_rows, args.max_length))
  return padded, packed


# ----------------------------------------------------------------------------- training


def loss_fn(cell):
  """``loss(params, batch)``: the mean squared error of the per-step readout over valid steps.

  With ``batch["resets"]`` the rows are packed; without, one sequence per row.
  """

  def loss(params, batch):
    _, hs = jaxrnn.scan(
      cell, params["rnn"], batch["xs"], seq_lengths=batch["lengths"], resets=batch.get("resets")
    )
    pred = (hs @ params["w"])[..., 0] + params["b"][0]
    valid = jnp.arange(hs.shape[-2])[None, :] < batch["lengths"][:, None]
    err = jnp.where(valid, pred - batch["ys"], jnp.zeros_like(pred))
    return jnp.sum(err**2) / jnp.sum(valid.astype(err.dtype))

  return loss


def train_both(args, padded: list[dict], packed: list[dict]):
  """Trains from the same init on both layouts, step for step in the same data order.

  Returns ``(losses_padded, losses_packed, step, states)``: every step's loss, the
  compiled train step and the final state of each layout.
  """
  cell = jaxrnn.lstm(args.hidden)
  k_init, k_out = jax.random.split(jax.random.key(args.seed))
  opt = optax.adam(args.lr)
  state = training.TrainState.create(training.readout_params(cell, k_init, k_out, 1, 1), opt)
  step = training.make_step(loss_fn(cell), opt)
  states, losses = {"padded": state, "packed": state}, {"padded": [], "packed": []}
  for i in harness.progress(args.steps, "padded and packed", args.no_progress):
    for name, data in (("padded", padded), ("packed", packed)):
      states[name], metrics = step(states[name], jax.tree.map(jnp.asarray, data[i]))
      losses[name].append(float(metrics["loss"]))
  return losses["padded"], losses["packed"], step, states


def time_steps(args, step, states, padded: list[dict], packed: list[dict]) -> dict:
  """The first ``timed_steps`` training steps (every row count) on each layout, from the
  final states, timed in interleaved rounds: ms per step and the padded / packed ratio."""
  calls = {}
  for name, data in (("padded", padded), ("packed", packed)):
    data = [jax.tree.map(jnp.asarray, b) for b in data[: args.timed_steps]]
    calls[name] = timing.compiled_call(_steps, step, states[name], data)
  t = timing.interleaved(calls, args.rounds)
  ratios = t.ratios("padded", "packed")
  n = min(args.timed_steps, len(padded))
  return dict(
    padded_ms=t.median("padded") * 1e3 / n,
    packed_ms=t.median("packed") * 1e3 / n,
    speedup=t.ratio("padded", "packed"),
    speedup_range=[min(ratios), max(ratios)],
    rounds=args.rounds,
    timed_steps=n,
    timed_rows_padded=sum(len(b["lengths"]) for b in padded[:n]),
    timed_rows_packed=sum(len(b["lengths"]) for b in packed[:n]),
  )


def _steps(step, state, data):
  """``step`` over every batch of ``data`` in turn; the last metrics."""
  for batch in data:
    state, metrics = step(state, batch)
  return metrics


# ----------------------------------------------------------------------------- the spec


def run(args) -> dict:
  padded, packed = batches(args)
  valid = sum(int(b["lengths"].sum()) for b in padded)
  rows = [len(b["lengths"]) for b in packed]
  print(
    f"{args.steps} steps of {args.batch} sequences (lengths {args.min_length}..{args.max_length}, "
    f"log-uniform): {valid / (args.steps * args.batch * args.max_length):.0%} of padded time "
    f"steps are valid; packed into {np.mean(rows):.1f} rows per step on average (row counts "
    f"{sorted(set(rows))}) instead of {args.batch}."
  )
  lp, lq, step, states = train_both(args, padded, packed)
  rel = np.abs(np.asarray(lq) - np.asarray(lp)) / np.abs(np.asarray(lp))
  speed = time_steps(args, step, states, padded, packed)
  ideal = speed["timed_rows_padded"] / speed["timed_rows_packed"]
  lo, hi = speed["speedup_range"]
  print(
    f"  loss: first {lp[0]:.5f}, last padded {lp[-1]:.6f} / packed {lq[-1]:.6f}; largest "
    f"relative difference {rel.max():.2e} (step {int(rel.argmax())}). Per step: padded "
    f"{speed['padded_ms']:.1f} ms, packed {speed['packed_ms']:.1f} ms: speed-up "
    f"{speed['speedup']:.2f}x (rounds {lo:.2f}-{hi:.2f}), ideal {ideal:.2f}x"
  )
  return dict(
    losses_padded=lp,
    losses_packed=lq,
    max_relative_difference=float(rel.max()),
    relative_difference=rel.tolist(),
    rows_per_step=rows,
    ideal_speedup=ideal,
    valid_steps=valid,
    padded_steps=args.steps * args.batch * args.max_length,
    packed_steps=sum(rows) * args.max_length,
    **speed,
  )


def checks(results, args) -> list[dict]:
  r, ideal = results, results["ideal_speedup"]
  lo, hi = r["speedup_range"]
  return [
    harness.check(
      f"packing: largest relative loss difference, packed vs padded, over {args.steps} steps",
      r["max_relative_difference"],
      LOSS_TOLERANCE,
      "exact in real arithmetic (resets make each packed sequence compute alone)",
      r["max_relative_difference"] <= LOSS_TOLERANCE,
      f"at most {LOSS_TOLERANCE:g}",
      f"final loss padded {r['losses_padded'][-1]:.6g}, packed {r['losses_packed'][-1]:.6g}, "
      f"first {r['losses_padded'][0]:.6g}",
    ),
    harness.check(
      f"packing: training-step speed-up, packed vs padded (the same sequences, "
      f"{r['timed_steps']} steps)",
      r["speedup"],
      ideal,
      f"ideal: padded rows / packed rows = {r['timed_rows_padded']} / {r['timed_rows_packed']}",
      r["speedup"] - 1 >= 0.5 * (ideal - 1),
      "speed-up - 1 >= (ideal - 1) / 2",
      f"median of {r['rounds']} interleaved rounds, per-round {lo:.2f}-{hi:.2f}; "
      f"{r['valid_steps'] / r['padded_steps']:.0%} of padded time steps valid, "
      f"{r['valid_steps'] / r['packed_steps']:.0%} of packed",
    ),
  ]


def figure(plt, results, args):
  fig, ax = harness.axes(plt, (6, 4), "training step", "loss (MSE over valid steps)", NAME)
  ax.plot(results["losses_padded"], label="padded (one sequence per row)")
  ax.plot(results["losses_packed"], "--", label="packed with resets")
  ax.set_yscale("log")
  ax.legend(fontsize=8)
  return fig


FLAGS = {
  "steps": harness.flag(300, "training steps (each layout)"),
  "batch": harness.flag(32, "sequences per step"),
  "min_length": harness.flag(4, "shortest sequence"),
  "max_length": harness.flag(128, "longest sequence, and the row length of both layouts"),
  "hidden": harness.flag(64, "LSTM H"),
  "lr": harness.flag(3e-3, "Adam learning rate"),
  "row_multiple": harness.flag(4, "packed row counts are rounded up to a multiple of it"),
  "rounds": harness.flag(7, "interleaved timing rounds"),
  "timed_steps": harness.flag(30, "training steps per timed call"),
}
QUICK = dict(steps=12, batch=8, max_length=24, hidden=8, rounds=2, timed_steps=4)
SPEC = harness.Spec(NAME, __doc__, run, checks, FLAGS, QUICK, figure)


main = SPEC.main


if __name__ == "__main__":
  main()
