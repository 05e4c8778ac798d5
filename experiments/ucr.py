"""UCR time-series classification, GunPoint and ItalyPowerDemand: an LSTM beside 1-NN Euclidean.

Data: the archive's own train/test splits as shipped inside aeon
(``aeon.datasets.load_gunpoint`` / ``load_italy_power_demand``, no download):
GunPoint 50 train / 150 test series of length 150, ItalyPowerDemand 67 / 1029 of
length 24, two classes each, already z-normalised by the archive. Each series is
a sequence of scalars; an LSTM's final state goes through a linear readout to
the classes, trained full-batch with Adam. The reference is the 1-nearest-
neighbour classifier with Euclidean distance computed in the same run (the
archive's published 1-NN ED test errors, 0.087 and 0.045, are recorded beside
it as a check of our baseline). PASS per data set if the LSTM's test error is
at most 1-NN Euclidean's.
"""

from __future__ import annotations

import numpy as np

import jaxrnn
from experiments import harness, training

NAME = "ucr"
DATASETS = {
  "GunPoint": ("load_gunpoint", 0.087),
  "ItalyPowerDemand": ("load_italy_power_demand", 0.045),
}


def load(name):
  import aeon.datasets

  loader = getattr(aeon.datasets, DATASETS[name][0])
  x_tr, y_tr = loader(split="train")
  x_te, y_te = loader(split="test")
  classes = sorted(set(y_tr.tolist()) | set(y_te.tolist()))
  code = {c: i for i, c in enumerate(classes)}
  as_int = lambda y: np.array([code[c] for c in y.tolist()], np.int32)  # noqa: E731
  # aeon gives (N, channels=1, T); a sequence model wants (N, T, features=1)
  seq = lambda x: np.transpose(np.asarray(x, np.float32), (0, 2, 1))  # noqa: E731
  return seq(x_tr), as_int(y_tr), seq(x_te), as_int(y_te), len(classes)


def one_nn_error(x_tr, y_tr, x_te, y_te):
  a, b = x_te.reshape(len(x_te), -1), x_tr.reshape(len(x_tr), -1)
  d = (a**2).sum(1)[:, None] - 2 * a @ b.T + (b**2).sum(1)[None, :]
  return float(np.mean(y_tr[np.argmin(d, axis=1)] != y_te))


def run(args) -> dict:
  results = {}
  print(
    f"UCR: LSTM H={args.hidden}, {args.steps} full-batch Adam steps (lr {args.lr}), "
    f"seed {args.seed}. Test error:"
  )
  print(f"  {'data set':<20}{'LSTM':>8}{'1-NN ED':>10}{'published 1-NN ED':>20}")
  for name in args.datasets:
    x_tr, y_tr, x_te, y_te, n_classes = load(name)
    nn = one_nn_error(x_tr, y_tr, x_te, y_te)
    cell, run = jaxrnn.lstm(args.hidden), f"lstm-{name}"
    predict = training.train_readout(cell, x_tr, y_tr, args, NAME, run, classes=n_classes)
    err = float(np.mean(np.argmax(predict(x_te), axis=-1) != y_te))
    results[name] = {
      "lstm_error": err,
      "one_nn_euclidean_error": nn,
      "published_one_nn_euclidean_error": DATASETS[name][1],
      "n_train": len(y_tr),
      "n_test": len(y_te),
      "length": int(x_tr.shape[1]),
    }
    print(f"  {name:<20}{err:>8.3f}{nn:>10.3f}{DATASETS[name][1]:>20.3f}")
  return results


def checks(results, args) -> list[dict]:
  """Per data set: the LSTM's test error at most 1-NN Euclidean's."""
  return [
    harness.check(
      f"UCR {name}: test error, LSTM (ours) vs 1-NN Euclidean (reference)",
      r["lstm_error"],
      r["one_nn_euclidean_error"],
      f"1-NN Euclidean on the archive's split, same run (UCR archive: {DATASETS[name][1]})",
      r["lstm_error"] <= r["one_nn_euclidean_error"],
      "LSTM error <= 1-NN Euclidean error",
    )
    for name, r in results.items()
  ]


def figure(plt, results, args):
  fig, ax = harness.axes(plt, (5, 3.5), "", "test error", "UCR classification: lower is better")
  names = list(results)
  pos = np.arange(len(names))
  ax.bar(pos - 0.2, [results[n]["lstm_error"] for n in names], 0.4, label="LSTM")
  ax.bar(pos + 0.2, [results[n]["one_nn_euclidean_error"] for n in names], 0.4, label="1-NN ED")
  ax.set_xticks(pos, names)
  ax.legend(fontsize=8)
  return fig


FLAGS = {
  "datasets": harness.flag(list(DATASETS), "UCR data sets", choices=list(DATASETS)),
  "hidden": harness.flag(64, "H"),
  "steps": harness.flag(1000, "full-batch Adam steps"),
  "lr": harness.flag(3e-3, "Adam learning rate"),
}
SPEC = harness.Spec(NAME, __doc__, run, checks, FLAGS, dict(steps=60, hidden=16), figure)


main = SPEC.main


if __name__ == "__main__":
  main()
