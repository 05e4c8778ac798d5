"""`jaxrnn.loop.fit`'s metrics log: the JSONL lines it appends, trims on resume, and shows.

One JSON object a line, ``{"step", "split": "train" | "eval", ...metrics}``; a line cut
short by a kill is dropped when the file is read back, and a resumed run first cuts the
file back to the steps it resumes from, so a killed and resumed run logs each step once.
The progress bar (tqdm, when installed) shows the loss and the throughput.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np


def read_jsonl(path: str) -> list[dict[str, Any]]:
  records = []
  if not os.path.exists(path):
    return records
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        break  # a line cut short by a kill: it and anything after it are dropped
  return records


def rewrite_jsonl(path: str, records: list[dict[str, Any]]) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def append_jsonl(path: str | None, record: dict[str, Any]) -> None:
  if path is None:
    return
  with open(path, "a", encoding="utf-8") as f:
    f.write(json.dumps(record) + "\n")


def to_python(metrics: Mapping[str, Any]) -> dict[str, Any]:
  out = {}
  for k, v in jax.device_get(dict(metrics)).items():
    arr = np.asarray(v)
    out[k] = arr.item() if arr.ndim == 0 else arr.tolist()
  return out


class NoBar:
  """What `fit` uses of a tqdm bar, doing nothing: the stand-in when tqdm is not installed."""

  def update(self, n):
    del n

  def set_postfix(self, **kwargs):
    del kwargs

  def close(self):
    pass


def progress_bar(*, total, initial, show, desc):
  """A tqdm bar, quiet when the stream is not a terminal (``disable=None``) or ``show`` is False.

  `NoBar` when tqdm is not installed.
  """
  try:
    from tqdm.auto import tqdm
  except ImportError:
    return NoBar()
  return tqdm(total=total, initial=initial, desc=desc, leave=False, disable=None if show else True)


def trim(metrics_path: Any, start: int) -> str | None:
  """Cuts the metrics file back to the lines of steps ``<= start``; its path, or None."""
  if metrics_path is None:
    return None
  metrics_path = os.fspath(metrics_path)
  os.makedirs(os.path.dirname(os.path.abspath(metrics_path)), exist_ok=True)
  kept = [r for r in read_jsonl(metrics_path) if r.get("step", 0) <= start]
  rewrite_jsonl(metrics_path, kept)
  return metrics_path


def train_record(
  metrics: Mapping[str, Any], step: int, examples: int, since: float
) -> tuple[dict[str, Any], float]:
  """The train line of ``step``, with the throughput of ``examples`` since ``since``; now."""
  record = {"step": step, "split": "train", **to_python(metrics)}  # waits for the step
  now = time.perf_counter()
  record["examples_per_second"] = examples / max(now - since, 1e-9)
  return record, now


def show(bar: Any, record: dict[str, Any]) -> None:
  if isinstance(record.get("loss"), float):
    bar.set_postfix(loss=f"{record['loss']:.4g}", ex_s=f"{record['examples_per_second']:.0f}")


def log_train(bar, metrics_path, metrics, done, examples, t_last) -> float:
  """Process 0's training record: to the JSONL file and the progress bar; the new clock."""
  record, t_last = train_record(metrics, done, examples, t_last)
  append_jsonl(metrics_path, record)
  show(bar, record)
  return t_last


def log_eval(eval_fn, state, done, metrics_path) -> None:
  evaluation = {"step": done, "split": "eval", **to_python(eval_fn(state))}
  append_jsonl(metrics_path, evaluation)  # metrics_path is None off process 0
