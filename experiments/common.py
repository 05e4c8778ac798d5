"""What every experiment shares: flags, checks (ours, reference, source, PASS/FAIL), output files.

Each experiment is ``python -m experiments.NAME [--quick] [--seed S] [--out DIR]``
and writes ``DIR/NAME/NAME.json`` (flags, numbers, checks) and, when matplotlib
is installed, ``DIR/NAME/NAME.png``. ``--quick`` runs tiny sizes for the tests:
its numbers are smoke tests, not results, and are flagged ``"quick": true``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from typing import Any

import jax
import numpy as np

import jaxrnn

RESULTS = "results"


def parser(name: str, doc: str | None) -> argparse.ArgumentParser:
  """The flags every experiment has: --quick, --seed, --out, --no-progress."""
  p = argparse.ArgumentParser(
    prog=f"python -m experiments.{name}",
    description=(doc or name).strip().splitlines()[0],
    formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  p.add_argument("--quick", action="store_true", help="tiny sizes (seconds); for the tests")
  p.add_argument("--seed", type=int, default=0, help="every random number derives from it")
  p.add_argument("--out", default=RESULTS, help="results root; files go to OUT/NAME/")
  p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
  p.add_argument(
    "--no-checkpoints", action="store_true", help="do not checkpoint (nor resume) training runs"
  )
  return p


def check(
  name: str, ours: Any, reference: Any, source: str, passed: bool, rule: str, note: str = ""
) -> dict[str, Any]:
  """One line of the summary: our number beside the reference, the PASS/FAIL rule, and a
  note of measured facts that help read it (computed, never a verdict written in advance)."""
  return {
    "name": name,
    "ours": ours,
    "reference": reference,
    "source": source,
    "pass": bool(passed),
    "rule": rule,
    "note": note,
  }


def fmt(x: Any) -> str:
  if isinstance(x, float):
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
      return f"{x:.3g}"
    return f"{x:.4g}"
  if isinstance(x, int) and not isinstance(x, bool):
    return f"{x:,}"
  return str(x)


def md_cell(text: Any) -> str:
  """Text for a markdown table cell: pipes escaped (norms are written ||x||)."""
  return str(text).replace("|", "\\|")


def print_checks(checks: list[dict[str, Any]], quick: bool) -> None:
  for c in checks:
    verdict = "PASS" if c["pass"] else "FAIL"
    tag = " (quick run: tiny sizes, not the result)" if quick else ""
    print(f"  {verdict}: {c['name']}: ours {fmt(c['ours'])} vs reference {fmt(c['reference'])}")
    print(f"        [{c['source']}] rule: {c['rule']}{tag}")
    if c.get("note"):
      print(f"        note: {c['note']}")


def _clean(x: Any) -> Any:
  """JSON-safe: numpy and jax scalars to Python, NaN/inf to strings."""
  if isinstance(x, dict):
    return {str(k): _clean(v) for k, v in x.items()}
  if isinstance(x, list | tuple):
    return [_clean(v) for v in x]
  if isinstance(x, jax.Array | np.ndarray | np.generic):
    return _clean(np.asarray(x).tolist())
  if isinstance(x, float) and not math.isfinite(x):
    return str(x)
  return x


def out_dir(args: argparse.Namespace, name: str) -> str:
  path = os.path.join(args.out, name)
  os.makedirs(path, exist_ok=True)
  return path


def finish(
  name: str,
  args: argparse.Namespace,
  results: dict[str, Any],
  checks: list[dict[str, Any]],
  started: float,
  figure: Any = None,
) -> dict[str, Any]:
  """Writes ``OUT/NAME/NAME.json`` (and the PNG), prints the checks, returns the record."""
  path = out_dir(args, name)
  record = {
    "experiment": name,
    "quick": bool(args.quick),
    "flags": {k: v for k, v in vars(args).items()},
    "results": results,
    "checks": checks,
    "passed": all(c["pass"] for c in checks),
    "seconds": time.perf_counter() - started,
    "versions": {
      "jaxrnn": jaxrnn.__version__,
      "jax": jax.__version__,
      "python": platform.python_version(),
      "backend": jax.default_backend(),
    },
  }
  record = _clean(record)
  with open(os.path.join(path, f"{name}.json"), "w", encoding="utf-8") as f:
    json.dump(record, f, indent=1)
    f.write("\n")
  if figure is not None:
    figure.savefig(os.path.join(path, f"{name}.png"), dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
  print(f"{name}: {'all checks PASS' if record['passed'] else 'some checks FAIL'}")
  print_checks(record["checks"], args.quick)
  print(f"  wrote {os.path.join(path, name + '.json')} ({record['seconds']:.0f} s)")
  return record


def pyplot():
  """matplotlib.pyplot with the Agg backend, or None if matplotlib is missing."""
  try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print("  (matplotlib is not installed: no plot; pip install 'jaxrnn[experiments]')")
    return None
  return plt


def run_paths(args: argparse.Namespace, name: str, run: str, config: dict[str, Any]):
  """``(checkpoint_dir, metrics_path)`` for one training run of an experiment.

  The checkpoint directory is ``OUT/NAME/checkpoints/RUN-HASH`` where HASH
  identifies every setting of the run (``config``, the seed, quick or not), so
  `jaxrnn.train.fit` resumes a killed run of the same settings and never one of
  other settings; a finished run is restored rather than retrained (same
  numbers: training is deterministic). None when ``--no-checkpoints`` is given
  or orbax-checkpoint is not installed. Metrics go to ``OUT/NAME/metrics/RUN.jsonl``.
  """
  import hashlib

  settings = json.dumps(
    {"config": config, "seed": args.seed, "quick": bool(args.quick)}, sort_keys=True, default=str
  )
  digest = hashlib.sha256(settings.encode()).hexdigest()[:10]
  ckpt = None
  if not getattr(args, "no_checkpoints", False):
    try:
      import orbax.checkpoint  # noqa: F401
    except ImportError:
      ckpt = None
    else:
      ckpt = os.path.join(args.out, name, "checkpoints", f"{run}-{digest}")
  metrics = os.path.join(args.out, name, "metrics", f"{run}.jsonl")
  return ckpt, metrics


class _NoBar:
  def update(self, n=1):
    del n

  def set_postfix(self, **kwargs):
    del kwargs

  def close(self):
    pass


def bar(total: int, desc: str, disable: bool):
  """A tqdm progress bar, or a silent stand-in without tqdm or when disabled."""
  if disable:
    return _NoBar()
  try:
    from tqdm.auto import tqdm
  except ImportError:
    return _NoBar()
  return tqdm(total=total, desc=desc, leave=False)


def train_readout(
  cell,
  xs: np.ndarray,
  ys: np.ndarray,
  *,
  num_outputs: int,
  classify: bool,
  steps: int,
  lr: float,
  batch: int | None,
  seed: int,
  args: argparse.Namespace,
  experiment: str,
  run: str,
):
  """Trains ``cell`` + a linear readout of its final state on a small in-memory data set.

  Args:
    cell: a `jaxrnn.Cell`.
    xs: ``(N, T, I)`` float32 inputs.
    ys: ``(N,)`` float32 targets (regression, MSE) or int class labels
      (``classify``, softmax cross-entropy).
    num_outputs: 1 for regression, the number of classes otherwise.
    classify: which of the two.
    steps, lr, batch, seed: Adam steps and learning rate; examples per step
      (sampled without replacement from ``fold_in(key, step)``; None: all).
    args, experiment, run: for the checkpoint and metrics paths (`run_paths`).

  Returns:
    ``predict(xs) -> (N,)`` predictions or ``(N, num_outputs)`` logits (numpy).
  """
  import jax.numpy as jnp
  import optax

  from jaxrnn import scan, train

  xs, ys = jnp.asarray(xs, jnp.float32), jnp.asarray(ys)
  n, hidden = xs.shape[0], dict(cell.config)["hidden_size"]
  k_init, k_out, k_data = jax.random.split(jax.random.key(seed), 3)
  params = {
    "rnn": cell.init(k_init, xs.shape[-1]),
    "w": jax.random.normal(k_out, (hidden, num_outputs)) / math.sqrt(hidden),
    "b": jnp.zeros((num_outputs,)),
  }
  opt = optax.adam(lr)

  def forward(params, x):
    carry, _ = scan(cell, params["rnn"], x)
    return carry.h @ params["w"] + params["b"][None, :]

  def loss_fn(params, key):
    if batch is None or batch >= n:
      x, y = xs, ys
    else:
      idx = jax.random.choice(key, n, (batch,), replace=False)
      x, y = xs[idx], ys[idx]
    out = forward(params, x)
    if classify:
      return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out, y))
    return jnp.mean((out[:, 0] - y) ** 2)

  config = dict(
    cell=cell.name,
    cell_config=cell.config,
    data=[list(xs.shape), float(jnp.sum(xs)), float(jnp.sum(ys))],
    steps=steps,
    lr=lr,
    batch=batch,
  )
  ckpt, metrics = run_paths(args, experiment, run, config)
  state = train.fit(
    train.make_train_step(loss_fn, opt, max_grad_norm=1.0),
    train.TrainState.create(params, opt),
    lambda i: jax.random.fold_in(k_data, i),
    num_steps=steps,
    checkpoint_dir=ckpt,
    checkpoint_every=max(steps // 2, 1),
    model=cell,
    metrics_path=metrics,
    log_every=max(steps // 40, 1),
    progress=not args.no_progress,
    desc=run,
    batch_size=min(batch or n, n),
  )
  forward_jit = jax.jit(forward)

  def predict(x):
    out = np.asarray(forward_jit(state.params, jnp.asarray(x, jnp.float32)))
    return out if classify else out[:, 0]

  return predict
