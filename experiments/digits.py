"""scikit-learn's 8x8 digits read row by row: an LSTM beside SVC(gamma=0.001).

Data: ``sklearn.datasets.load_digits`` (1797 images, shipped with
scikit-learn), pixel values / 16. Each image is a sequence of its 8 rows (8
steps of 8 features); the LSTM's final state goes through a linear readout to
10 classes. The split is scikit-learn's own example's: the first half of the
data (in file order) for training, the second half for testing. The reference
is ``sklearn.svm.SVC(gamma=0.001)`` trained on the same half (raw pixel values
0..16, for which that gamma was chosen) in the same run (scikit-learn's
"Recognizing hand-written digits" example, about 0.97). PASS if
the LSTM's test accuracy is at most 2 points below the SVC's.
"""

from __future__ import annotations

import time

import numpy as np

import jaxrnn
from experiments import common

NAME = "digits"


def run(args) -> dict:
  from sklearn.datasets import load_digits
  from sklearn.svm import SVC

  started = time.perf_counter()
  digits = load_digits()
  x = digits.images.astype(np.float32) / 16.0  # (N, 8, 8): 8 rows of 8 pixels
  y = digits.target.astype(np.int32)
  half = len(x) // 2
  x_tr, y_tr, x_te, y_te = x[:half], y[:half], x[half:], y[half:]

  raw = digits.data  # the SVC sees raw pixel values 0..16, as in scikit-learn's example
  svc = SVC(gamma=0.001).fit(raw[:half], y_tr)
  svc_acc = float(np.mean(svc.predict(raw[half:]) == y_te))

  predict = common.train_readout(
    jaxrnn.lstm(args.hidden),
    x_tr,
    y_tr,
    num_outputs=10,
    classify=True,
    steps=args.steps,
    lr=args.lr,
    batch=args.batch,
    seed=args.seed,
    args=args,
    experiment=NAME,
    run="lstm",
  )
  pred = np.argmax(predict(x_te), axis=-1)
  lstm_acc = float(np.mean(pred == y_te))
  train_acc = float(np.mean(np.argmax(predict(x_tr), axis=-1) == y_tr))
  svc_train_acc = float(np.mean(svc.predict(raw[:half]) == y_tr))
  confusion = np.zeros((10, 10), int)
  np.add.at(confusion, (y_te, pred), 1)
  results = {
    "lstm_accuracy": lstm_acc,
    "svc_accuracy": svc_acc,
    "lstm_train_accuracy": train_acc,
    "svc_train_accuracy": svc_train_acc,
    "n_train": int(half),
    "n_test": int(len(x_te)),
    "lstm_confusion": confusion.tolist(),
  }
  print(
    f"Digits row by row: LSTM H={args.hidden}, {args.steps} Adam steps (lr {args.lr}, batch "
    f"{args.batch}); train {half}, test {len(x_te)}."
  )
  print(f"  test accuracy: LSTM {lstm_acc:.4f}, SVC(gamma=0.001) {svc_acc:.4f}")
  print(f"  train accuracy: LSTM {train_acc:.4f}, SVC(gamma=0.001) {svc_train_acc:.4f}")
  checks = [
    common.check(
      "digits: test accuracy, LSTM (ours) vs SVC(gamma=0.001) (reference)",
      lstm_acc,
      svc_acc,
      "scikit-learn SVC(gamma=0.001) on the same split, same run",
      lstm_acc >= svc_acc - 0.02,
      "LSTM accuracy >= SVC accuracy - 0.02",
      f"train accuracy LSTM {train_acc:.3f}, SVC {svc_train_acc:.3f}",
    )
  ]
  return common.finish(NAME, args, results, checks, started, _figure(confusion, lstm_acc))


def _figure(confusion, acc):
  plt = common.pyplot()
  if plt is None:
    return None
  fig, ax = plt.subplots(figsize=(4.5, 4))
  ax.imshow(confusion, cmap="Blues")
  for i in range(10):
    for j in range(10):
      if confusion[i, j]:
        ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_xticks(range(10))
  ax.set_yticks(range(10))
  ax.set_title(f"LSTM on digits, test accuracy {acc:.3f}")
  return fig


def main(argv=None) -> dict:
  p = common.parser(NAME, __doc__)
  p.add_argument("--hidden", type=int, default=64, help="H")
  p.add_argument("--steps", type=int, default=1500, help="Adam steps")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--lr", type=float, default=3e-3)
  args = p.parse_args(argv)
  if args.quick:
    args.steps, args.hidden = 150, 16
  return run(args)


if __name__ == "__main__":
  main()
