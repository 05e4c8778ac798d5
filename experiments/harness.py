"""The shared harness: an experiment is one `Spec`; `main` runs it and writes its record.

Each experiment is ``python -m experiments.NAME [--quick] [--seed S] [--out DIR]``
and writes ``DIR/NAME/NAME.json`` (flags, numbers, checks) and, when matplotlib
is installed, ``DIR/NAME/NAME.png``. DIR is ``runs/`` unless given: git ignores
it, so running an experiment leaves the checkout clean. The committed results
under ``results/`` change only when a run is pointed there on purpose
(``--out results``, or ``make results``). ``--quick`` runs the spec's small sizes
for the tests: its numbers are smoke tests, not results, and are flagged
``"quick": true``; a quick run into ``results/`` is refused. Training goes
through `experiments.training`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

import jaxrnn

RESULTS = "results"  # the committed results: written only with --out results
RUNS = "runs"  # the default --out, ignored by git
Results = dict[str, Any]
Check = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Spec:
  """One experiment: its flags, its quick sizes, its run, its checks, its figure.

  Attributes:
    name: the module name under ``experiments``; files go to ``OUT/NAME/``.
    doc: the module docstring (its first line is ``--help``'s description).
    run: ``run(args) -> results``, a JSON-able dict of every number measured.
    checks: ``checks(results, args) -> [check(...), ...]``, the PASS/FAIL lines.
    flags: the experiment's own flags, ``{dest: default or flag(...)}``.
    quick: the flags' values under ``--quick`` (small sizes for the tests).
    figure: ``figure(plt, results, args) -> Figure or None``, drawn when
      matplotlib is installed.
    table: also print the checks as a markdown table after the run.
  """

  name: str
  doc: str | None
  run: Callable[[argparse.Namespace], Results]
  checks: Callable[[Results, argparse.Namespace], list[Check]]
  flags: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  quick: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  figure: Callable[[Any, Results, argparse.Namespace], Any] | None = None
  table: bool = False

  def main(self, argv: Sequence[str] | None = None) -> Results:
    """``python -m experiments.NAME [flags]``: see `execute`."""
    return execute(self, argv)


def flag(default: Any, help: str = "", **kwargs: Any) -> dict[str, Any]:
  """argparse keywords for one flag: type, ``nargs="+"`` (lists), store_true from ``default``."""
  sample = default[0] if isinstance(default, list | tuple) else default
  out = {"default": default, "help": help or None, **kwargs}
  if isinstance(default, bool):
    out.setdefault("action", "store_true")
  elif sample is not None:
    out.setdefault("type", type(sample))
  if isinstance(default, list | tuple):
    out.setdefault("nargs", "+")
  return out


def parser(
  name: str, doc: str | None, flags: Mapping[str, Any] | None = None
) -> argparse.ArgumentParser:
  """The flags every experiment has (--quick, --seed, --out, ...) and then ``flags``."""
  p = argparse.ArgumentParser(
    prog=f"python -m experiments.{name}",
    description=(doc or name).strip().splitlines()[0],
    formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  p.add_argument("--quick", action="store_true", help="small sizes (seconds); for the tests")
  p.add_argument("--seed", type=int, default=0, help="every random number derives from it")
  p.add_argument(
    "--out",
    default=RUNS,
    help=f"results root, files go to OUT/NAME/; {RUNS}/ is git-ignored, --out {RESULTS} "
    "regenerates the committed results",
  )
  p.add_argument(
    "--no-progress", action="store_true", help="no tqdm progress bars (none off a terminal)"
  )
  p.add_argument(
    "--no-checkpoints", action="store_true", help="do not checkpoint (nor resume) training runs"
  )
  for dest, value in (flags or {}).items():
    kwargs = value if isinstance(value, dict) else flag(value)
    p.add_argument("--" + dest.replace("_", "-"), **kwargs)
  return p


def shared_argv(args: argparse.Namespace, out: str | None = None) -> list[str]:
  """The shared flags of ``args`` as argv, to run another experiment (into ``out``) with them."""
  argv = ["--out", args.out if out is None else out, "--seed", str(args.seed)]
  argv += ["--quick"] * args.quick + ["--no-progress"] * args.no_progress
  return argv + ["--no-checkpoints"] * args.no_checkpoints


def parse(spec: Spec, argv: Sequence[str] | None = None) -> argparse.Namespace:
  """The spec's flags from ``argv``; under ``--quick`` its quick sizes replace them.

  Raises:
    ValueError: for ``--quick`` into the committed results (see `check_out`).
  """
  args = check_out(parser(spec.name, spec.doc, spec.flags).parse_args(argv))
  if args.quick:
    for dest, value in spec.quick.items():
      setattr(args, dest, value)
  return args


def check_out(args: argparse.Namespace) -> argparse.Namespace:
  """``args``, unless it is a quick run into ``results/`` (smoke-test numbers over results).

  Raises:
    ValueError: for ``--quick`` with ``--out`` naming ``results/`` (or a folder inside it).
  """
  out, committed = os.path.realpath(args.out), os.path.realpath(RESULTS)
  if args.quick and (out == committed or out.startswith(committed + os.sep)):
    raise ValueError(
      f"--quick --out {args.out}: quick runs write smoke-test numbers, not into the committed "
      f"{RESULTS}/; drop --out (default {RUNS}/) or name another folder"
    )
  return args


def execute(spec: Spec, argv: Sequence[str] | None = None) -> Results:
  """Parses the flags, runs the spec, checks its results and writes its record."""
  args = parse(spec, argv)
  started = time.perf_counter()
  results = spec.run(args)
  checks = spec.checks(results, args)
  if jax.process_index() != 0:  # multi-host: process 0 writes the record
    return {"results": results, "checks": checks}
  if spec.table:
    print("\n== summary ==")
    print("\n".join(checks_table(checks)))
  return finish(spec, args, results, checks, started)


def check(
  name: str, ours: Any, reference: Any, source: str, passed: bool, rule: str, note: str = ""
) -> Check:
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
  """A number as the tables print it: 4 significant digits, thousands separators for ints."""
  if isinstance(x, float):
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
      return f"{x:.3g}"
    return f"{x:.4g}"
  if isinstance(x, int) and not isinstance(x, bool):
    return f"{x:,}"
  return str(x)


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "") -> list[str]:
  """The lines of a markdown table; each cell through `fmt`, pipes escaped (norms are ||x||).

  ``align`` has one letter a column, ``l`` or ``r`` (default: all ``l``).
  """
  align = align or "l" * len(header)
  rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
  line = lambda cells: "| " + " | ".join(fmt(c).replace("|", "\\|") for c in cells) + " |"  # noqa: E731
  return [line(header), rule] + [line(r) for r in rows]


def verdict(c: Check) -> str:
  return "PASS" if c["pass"] else "FAIL"


def checks_table(checks: Sequence[Check], by_experiment: bool = False) -> list[str]:
  """The checks as a markdown table; ``by_experiment``: the summary's (each has "experiment")."""
  if not by_experiment:
    header = ("check", "ours", "reference", "source", "result")
    return md_table(header, [check_cells(c)[:5] for c in checks])
  header = ("experiment", "check", "ours", "reference", "source", "result", "notes")
  return md_table(header, [(c["experiment"], *check_cells(c)) for c in checks])


def check_cells(c: Check) -> tuple[Any, ...]:
  return (c["name"], c["ours"], c["reference"], c["source"], verdict(c), c.get("note", ""))


def print_checks(checks: Sequence[Check], quick: bool) -> None:
  """The PASS/FAIL lines: verdict, ours vs reference, source, rule and note."""
  tag = " (quick run: small sizes, not the result)" if quick else ""
  for c in checks:
    print(f"  {verdict(c)}: {c['name']}: ours {fmt(c['ours'])} vs reference {fmt(c['reference'])}")
    print(f"        [{c['source']}] rule: {c['rule']}{tag}")
    if c.get("note"):
      print(f"        note: {c['note']}")


def clean(x: Any) -> Any:
  """JSON-safe: numpy and jax scalars to Python, NaN/inf to strings."""
  if isinstance(x, dict):
    return {str(k): clean(v) for k, v in x.items()}
  if isinstance(x, list | tuple):
    return [clean(v) for v in x]
  if isinstance(x, jax.Array | np.ndarray | np.generic):
    return clean(np.asarray(x).tolist())
  if isinstance(x, float) and not math.isfinite(x):
    return str(x)
  return x


def write_json(path: str, data: Any) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(data, f, indent=1)
    f.write("\n")


def finish(
  spec: Spec, args: argparse.Namespace, results: Results, checks: list[Check], started: float
) -> Results:
  """Writes ``OUT/NAME/NAME.json`` (and the PNG), prints the checks, returns the record."""
  name = spec.name
  path = os.path.join(args.out, name)
  record = {
    "experiment": name,
    "quick": bool(args.quick),
    "flags": dict(vars(args)),
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
  record = clean(record)
  write_json(os.path.join(path, f"{name}.json"), record)
  if spec.figure is not None:
    save_figure(spec.figure, results, args, os.path.join(path, f"{name}.png"))
  print(f"{name}: {'all checks PASS' if record['passed'] else 'some checks FAIL'}")
  print_checks(record["checks"], args.quick)
  print(f"  wrote {os.path.join(path, name + '.json')} ({record['seconds']:.0f} s)")
  return record


def axes(plt, figsize: tuple[float, float], xlabel: str, ylabel: str, title: str, **kwargs):
  """``(fig, ax)``: one axes of ``figsize`` inches, labelled and titled."""
  fig, ax = plt.subplots(figsize=figsize)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title, **kwargs)
  return fig, ax


def save_figure(figure: Callable, results: Results, args: argparse.Namespace, path: str) -> None:
  """Draws ``figure(plt, results, args)`` with the Agg backend; a note if matplotlib is missing."""
  try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print("  (matplotlib is not installed: no plot; pip install 'jaxrnn[experiments]')")
    return
  fig = figure(plt, results, args)
  if fig is not None:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def metrics_path(args: argparse.Namespace, name: str, run: str) -> str:
  """Where `experiments.training.fit` appends the metrics of run ``run`` of ``name``."""
  return os.path.join(args.out, name, "metrics", f"{run}.jsonl")


def run_paths(
  args: argparse.Namespace, name: str, run: str, config: dict[str, Any]
) -> tuple[str | None, str]:
  """``(checkpoint_dir, metrics_path)`` for one training run of an experiment.

  The checkpoint directory is ``OUT/NAME/checkpoints/RUN-HASH`` where HASH
  identifies every setting of the run (``config``, the seed, quick or not), so
  a killed run resumes only with the same settings; a finished run is restored
  rather than retrained (same numbers: training is deterministic). None when
  ``--no-checkpoints`` is given or orbax-checkpoint is not installed.
  """
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
  return ckpt, metrics_path(args, name, run)


def progress(total: int, desc: str, disable: bool) -> Iterable[int]:
  """``range(total)``, behind a tqdm bar unless ``disable`` or tqdm is not installed.

  Without ``disable`` the bar still stays quiet when its stream (stderr) is not a
  terminal (tqdm's ``disable=None``), so that logs are not flooded with redraws.
  """
  try:
    from tqdm.auto import tqdm
  except ImportError:
    return range(total)
  return tqdm(range(total), desc=desc, leave=False, disable=True if disable else None)
