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
to ``OUT/default/``, OUT being ``runs/`` (git-ignored, so the checkout stays
clean) unless ``--out`` names another (``--out results`` regenerates the
committed ones); the full experiments are `python -m experiments.all`.
"""

from __future__ import annotations

import os

from experiments import adding, harness, vanishing

NAME = "default"


def run(args) -> dict:
  flags = harness.shared_argv(args, out=os.path.join(args.out, NAME))
  print("== 1. vanishing gradients at initialisation ==")
  van = vanishing.main(flags)

  print("\n== 2. adding problem (modern), tanh RNN vs LSTM ==")
  flags += ["--lengths", str(args.length), "--cells", "tanh", "lstm", "--steps", str(args.steps)]
  add_args = harness.parse(adding.SPEC, flags + ["--hidden", str(args.hidden)])
  length = add_args.lengths[0]
  ratios = adding.modern_table(add_args)[str(length)]
  return {"vanishing": van["results"], "adding": {"length": length, **ratios}}


def checks(results, args) -> list[dict]:
  """Vanishing's checks on its results, then the adding problem's at this T."""
  add = results["adding"]
  return vanishing.checks(results["vanishing"], args) + [adding.modern_check(add["length"], add)]


FLAGS = {
  "length": harness.flag(100, "adding problem T"),
  "steps": harness.flag(2000, "adding problem Adam steps"),
  "hidden": harness.flag(64, "adding problem H"),
}
SPEC = harness.Spec(NAME, __doc__, run, checks, FLAGS, table=True)


main = SPEC.main


if __name__ == "__main__":
  main()
