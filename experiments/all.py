"""`make experiments`: every experiment at full size, then ``OUT/summary.json`` and ``.md``.

Runs, in order, ``vanishing``, ``adding``, ``copy``, ``sunspots``, ``digits``,
``charlm``, ``ucr``, ``packing``, ``selective`` and ``rl_memory`` (each also ``python -m
experiments.NAME``), each writing ``OUT/NAME/NAME.json`` and its plots, and collects
their checks into one table: our number, the reference, its source, PASS or FAIL. OUT
is ``runs/`` (git-ignored) unless ``--out`` names another; ``--out results`` (``make
results``) regenerates the committed results. An experiment that raises is recorded as an
error and the others still run. Training runs checkpoint under ``OUT/NAME/checkpoints/``
(git-ignored), so an interrupted ``make experiments`` started again resumes
where it stopped; a finished run is restored, not retrained.
"""

from __future__ import annotations

import importlib
import json
import os
import time
import traceback

from experiments import harness

NAME = "all"
EXPERIMENTS = (
  "vanishing",
  "adding",
  "copy",
  "sunspots",
  "digits",
  "charlm",
  "ucr",
  "packing",
  "selective",
  "rl_memory",
)


FLAGS = {
  "only": harness.flag(list(EXPERIMENTS), "experiments to run", choices=EXPERIMENTS),
  "summarize_only": harness.flag(
    False, "run nothing: rebuild the summary from the existing OUT/NAME/NAME.json files"
  ),
}


def summarize(records: dict, out: str) -> tuple[dict, str]:
  """Writes ``OUT/summary.json`` and ``OUT/summary.md`` from experiment records."""
  rows = []
  for name, rec in records.items():
    if "error" in rec:
      rows.append(
        {
          "experiment": name,
          "name": f"{name}: error",
          "ours": rec["error"],
          "reference": "-",
          "source": "-",
          "pass": False,
          "rule": "the experiment must run",
        }
      )
      continue
    for c in rec["checks"]:
      rows.append({"experiment": name, **c})
  quick = any(rec.get("quick") for rec in records.values())
  summary = {
    "quick": quick,
    "passed": sum(r["pass"] for r in rows),
    "failed": sum(not r["pass"] for r in rows),
    "checks": rows,
    "seconds": {n: r.get("seconds") for n, r in records.items()},
  }
  lines = [
    "# jaxrnn experiments: summary",
    "",
    "Each row: our number, the reference it is compared with, where the reference comes from,",
    "and PASS/FAIL under the rule written in the experiment (`python -m experiments.NAME --help`).",
  ]
  if quick:
    lines += ["", "**Quick run (tiny sizes): these are smoke-test numbers, not results.**"]
  lines += ["", *harness.checks_table(rows, by_experiment=True)]
  lines += ["", f"{summary['passed']} PASS, {summary['failed']} FAIL."]
  table = "\n".join(lines) + "\n"
  harness.write_json(os.path.join(out, "summary.json"), summary)
  with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as f:
    f.write(table)
  return summary, table


def main(argv=None) -> dict:
  args = harness.check_out(harness.parser(NAME, __doc__, FLAGS).parse_args(argv))
  flags = harness.shared_argv(args)
  records = {}
  for name in args.only:
    if args.summarize_only:
      path = os.path.join(args.out, name, f"{name}.json")
      if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
          records[name] = json.load(f)
      else:
        records[name] = {"error": f"{path} not found", "seconds": 0.0}
      continue
    print(f"\n===== {name} =====", flush=True)
    t0 = time.perf_counter()
    try:
      records[name] = importlib.import_module(f"experiments.{name}").main(flags)
    except Exception as e:  # one broken experiment must not hide the others' results
      traceback.print_exc()
      records[name] = {"error": f"{type(e).__name__}: {e}", "seconds": time.perf_counter() - t0}
  summary, table = summarize(records, args.out)
  print("\n" + table)
  print(f"wrote {os.path.join(args.out, 'summary.json')} and summary.md")
  return summary


if __name__ == "__main__":
  main()
