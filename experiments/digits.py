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

import numpy as np

import jaxrnn
from experiments import harness, training

NAME = "digits"


def run(args) -> dict:
  from sklearn.datasets import load_digits
  from sklearn.svm import SVC

  digits = load_digits()
  x = digits.images.astype(np.float32) / 16.0  # (N, 8, 8): 8 rows of 8 pixels
  y = digits.target.astype(np.int32)
  half = len(x) // 2
  x_tr, y_tr, x_te, y_te = x[:half], y[:half], x[half:], y[half:]

  raw = digits.data  # the SVC sees raw pixel values 0..16, as in scikit-learn's example
  svc = SVC(gamma=0.001).fit(raw[:half], y_tr)
  svc_acc = float(np.mean(svc.predict(raw[half:]) == y_te))

  cell = jaxrnn.lstm(args.hidden)
  predict = training.train_readout(
    cell, x_tr, y_tr, args, NAME, "lstm", classes=10, batch=args.batch
  )
  reg = regularized(x_tr, y_tr, x_te, y_te, args)
  pred = np.argmax(predict(x_te), axis=-1)
  confusion = np.zeros((10, 10), int)
  np.add.at(confusion, (y_te, pred), 1)
  results = {
    "lstm_accuracy": float(np.mean(pred == y_te)),
    "svc_accuracy": svc_acc,
    "lstm_train_accuracy": float(np.mean(np.argmax(predict(x_tr), axis=-1) == y_tr)),
    "svc_train_accuracy": float(np.mean(svc.predict(raw[:half]) == y_tr)),
    "n_train": int(half),
    "n_test": int(len(x_te)),
    "lstm_confusion": confusion.tolist(),
    "lstm_reg": reg,
  }
  r = results
  print(
    f"Digits row by row: LSTM H={args.hidden}, {args.steps} Adam steps (lr {args.lr}, batch "
    f"{args.batch}); train {half}, test {len(x_te)}."
  )
  print(f"  test accuracy: LSTM {r['lstm_accuracy']:.4f}, SVC(gamma=0.001) {svc_acc:.4f}")
  print(
    f"  train accuracy: LSTM {r['lstm_train_accuracy']:.4f}, "
    f"SVC(gamma=0.001) {r['svc_train_accuracy']:.4f}"
  )
  scores = ", ".join(f"{k} {1 - v:.4f}" for k, v in reg["validation_error"].items())
  print(
    f"  regularized LSTM ({reg['chosen']}, chosen on validation accuracy: {scores}): "
    f"test {reg['accuracy']:.4f}, train {reg['train_accuracy']:.4f}"
  )
  return results


def regularized(x_tr, y_tr, x_te, y_te, args) -> dict:
  """The LSTM with the regularizer chosen on the last 20% of the training half, retrained."""
  cut = int(0.8 * len(x_tr))
  kw = dict(classes=10, batch=args.batch)

  def score(name, rates):
    cell = jaxrnn.lstm(args.hidden)
    run = f"lstm-select-{name}"
    predict = training.train_readout(
      cell, x_tr[:cut], y_tr[:cut], args, NAME, run, **kw, regularize=rates
    )
    return float(np.mean(np.argmax(predict(x_tr[cut:]), -1) != y_tr[cut:]))

  chosen, errors = training.select_regularizer(score, args.regularizers)
  rates = training.REGULARIZERS[chosen]
  cell = jaxrnn.lstm(args.hidden)
  run = f"lstm-{chosen}"
  predict = training.train_readout(cell, x_tr, y_tr, args, NAME, run, **kw, regularize=rates)
  return {
    "chosen": chosen,
    "validation_error": errors,
    "accuracy": float(np.mean(np.argmax(predict(x_te), -1) == y_te)),
    "train_accuracy": float(np.mean(np.argmax(predict(x_tr), -1) == y_tr)),
  }


def checks(results, args) -> list[dict]:
  """The LSTM's test accuracy at most 2 points below the SVC's."""
  lstm_acc, svc_acc = results["lstm_accuracy"], results["svc_accuracy"]
  reg = results["lstm_reg"]
  return [
    harness.check(
      "digits: test accuracy, LSTM (ours) vs SVC(gamma=0.001) (reference)",
      lstm_acc,
      svc_acc,
      "scikit-learn SVC(gamma=0.001) on the same split, same run",
      lstm_acc >= svc_acc - 0.02,
      "LSTM accuracy >= SVC accuracy - 0.02",
      f"train accuracy LSTM {results['lstm_train_accuracy']:.3f}, "
      f"SVC {results['svc_train_accuracy']:.3f}",
    ),
    harness.check(
      f"digits: test accuracy, regularized LSTM ({reg['chosen']}, chosen on validation) vs SVC",
      reg["accuracy"],
      svc_acc,
      "scikit-learn SVC(gamma=0.001) on the same split, same run",
      reg["accuracy"] >= svc_acc - 0.02,
      "LSTM accuracy >= SVC accuracy - 0.02",
      f"plain LSTM {lstm_acc:.3f}; train accuracy {reg['train_accuracy']:.3f}",
    ),
  ]


def figure(plt, results, args):
  confusion = results["lstm_confusion"]
  title = f"LSTM on digits, test accuracy {results['lstm_accuracy']:.3f}"
  fig, ax = harness.axes(plt, (4.5, 4), "predicted", "true", title)
  ax.imshow(confusion, cmap="Blues")
  for i in range(10):
    for j in range(10):
      if confusion[i][j]:
        ax.text(j, i, str(confusion[i][j]), ha="center", va="center", fontsize=7)
  ax.set_xticks(range(10))
  ax.set_yticks(range(10))
  return fig


FLAGS = {"hidden": harness.flag(64, "H"), "steps": harness.flag(1500, "Adam steps")}
FLAGS.update(batch=harness.flag(64, "images per step"), lr=harness.flag(3e-3, "Adam learning rate"))
FLAGS["regularizers"] = training.regularizers_flag()
QUICK = dict(steps=150, hidden=16, regularizers=training.QUICK_REGULARIZERS)
SPEC = harness.Spec(NAME, __doc__, run, checks, FLAGS, QUICK, figure)


main = SPEC.main


if __name__ == "__main__":
  main()
