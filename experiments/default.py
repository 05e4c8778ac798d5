"""`make run`: the seed's claim in a few minutes: vanishing gradients and the adding problem.

The seed says plain RNNs lose long-range information through vanishing
gradients while LSTMs keep it. Two experiments show both halves:

1. `experiments.vanishing` at full size (T=200): the gradient norm
   ||dh_T/dh_{T-k}|| of tanh RNNs at initialisation against the Pascanu et al.
   (2013) bound lambda^k, and ||dc_T/dc_{T-k}|| of LSTMs with forget bias 0, 1, 3.
2. The modern adding problem at T=100 (`experiments.adding`, part b) for the
   tanh RNN and the LSTM only: 2000 Adam steps each; test MSE / baseline.

Needs only the core install (jax, optax): plots, progress bars and checkpoints
are used when matplotlib, tqdm and orbax-checkpoint are installed. Results go
to ``OUT/default/``; the full experiments are `python -m experiments.all`.
"""

from __future__ import annotations

import os
import time

from experiments import adding, common, vanishing

NAME = "default"


def run(args) -> dict:
  started = time.perf_counter()
  sub = os.path.join(args.out, NAME)
  flags = ["--out", sub, "--seed", str(args.seed)]
  flags += ["--no-progress"] * args.no_progress + ["--no-checkpoints"] * args.no_checkpoints
  print("== 1. vanishing gradients at initialisation ==")
  van = vanishing.main(flags + ["--quick"] * args.quick)

  print("\n== 2. adding problem (modern), tanh RNN vs LSTM ==")
  add_flags = flags + ["--lengths", str(args.length), "--cells", "tanh", "lstm"]
  add_flags += ["--steps", str(args.steps), "--hidden", str(args.hidden)]
  p = common.parser("adding", adding.__doc__)
  adding.add_flags(p)
  add_args = p.parse_args(add_flags + ["--quick"] * args.quick)
  if args.quick:
    add_args.steps, add_args.hidden, add_args.lengths = 150, 16, [20]
  print(
    f"Adding problem, T={add_args.lengths[0]}: {add_args.steps} Adam steps (lr {add_args.lr}), "
    f"batch {add_args.batch}, H={add_args.hidden}, seed {args.seed}. Baseline MSE = 1/6."
  )
  ratios = {}
  for cell in ("tanh", "lstm"):
    t0 = time.perf_counter()
    ratios[cell] = adding.train_modern(
      adding.CELLS[cell](add_args.hidden),
      length=add_args.lengths[0],
      steps=add_args.steps,
      batch=add_args.batch,
      lr=add_args.lr,
      seed=args.seed,
      args=add_args,
      run=f"{cell}-T{add_args.lengths[0]}",
      progress=not args.no_progress,
    )
    print(f"  {cell:<6} test MSE / baseline {ratios[cell]:.4f} ({time.perf_counter() - t0:.0f} s)")
  checks = list(van["checks"])
  checks.append(
    common.check(
      f"adding (b), T={add_args.lengths[0]}: test MSE/baseline, LSTM (ours) vs tanh RNN "
      "(reference)",
      ratios["lstm"],
      ratios["tanh"],
      "the seed's claim; task of Le, Jaitly & Hinton 2015 (baseline MSE 1/6)",
      ratios["lstm"] < 0.1 and ratios["tanh"] > 0.5,
      "LSTM < 0.1 and tanh RNN > 0.5",
    )
  )
  results = {"vanishing": van["results"], "adding": {"length": add_args.lengths[0], **ratios}}
  print("\n== summary ==")
  print(summary_table(checks))
  return common.finish(NAME, args, results, checks, started, None)


def summary_table(checks) -> str:
  """A markdown table: check, ours, reference, source, PASS/FAIL."""
  lines = ["| check | ours | reference | source | result |", "|---|---|---|---|---|"]
  cell = common.md_cell
  for c in checks:
    verdict = "PASS" if c["pass"] else "FAIL"
    lines.append(
      f"| {cell(c['name'])} | {cell(common.fmt(c['ours']))} | {cell(common.fmt(c['reference']))} "
      f"| {cell(c['source'])} | {verdict} |"
    )
  return "\n".join(lines)


def main(argv=None) -> dict:
  p = common.parser(NAME, __doc__)
  p.add_argument("--length", type=int, default=100, help="adding problem T")
  p.add_argument("--steps", type=int, default=2000, help="adding problem Adam steps")
  p.add_argument("--hidden", type=int, default=64, help="adding problem H")
  args = p.parse_args(argv)
  return run(args)


if __name__ == "__main__":
  main()
