"""What every benchmark section shares: one interleaved-round timer, provenance, tables.

The machine a benchmark runs on is often shared, and its speed drifts by 30% and more
within one run. `interleaved` therefore times every variant once per round, in an order
shuffled anew each round (PyTorch's OpenMP threads keep spinning for a while after a
parallel region and slow whatever runs right after them, so a fixed order would charge
that to one variant), and keeps every round's seconds. A time is the median over rounds
(`Timings.median`); a ratio of two variants is the median over rounds of that round's
ratio (`Timings.ratio`), so that each ratio compares two calls made under the same load.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np


class Timings(NamedTuple):
  """Seconds per call of each variant, one entry per timed round (in round order)."""

  seconds: Mapping[Hashable, Sequence[float]]

  def median(self, name: Hashable) -> float:
    """Median seconds per call of ``name`` over the rounds."""
    return statistics.median(self.seconds[name])

  def ratio(self, name: Hashable, reference: Hashable) -> float:
    """Median over rounds of ``name``'s seconds divided by ``reference``'s in that round."""
    return statistics.median(self.ratios(name, reference))

  def ratios(self, name: Hashable, reference: Hashable) -> list[float]:
    """``name``'s seconds divided by ``reference``'s, one per round (the spread is the noise)."""
    pairs = zip(self.seconds[name], self.seconds[reference], strict=True)
    return [a / b for a, b in pairs]


def interleaved(
  runs: Mapping[Hashable, Callable[[], Any]],
  rounds: int,
  *,
  warmup: int = 0,
  seed: int = 0,
  clock: Callable[[], float] = time.perf_counter,
) -> Timings:
  """Times each zero-argument callable once per round, in a shuffled order each round.

  Args:
    runs: the variants, each blocking until its result is ready.
    rounds: timed rounds (at least 1).
    warmup: untimed rounds first (compilation, caches, allocator).
    seed: for the order within each round.
    clock: seconds now; a fake one in tests.

  Returns:
    The per-round seconds of every variant.

  Raises:
    ValueError: for no variants, ``rounds < 1`` or ``warmup < 0``.
  """
  if not runs or rounds < 1 or warmup < 0:
    raise ValueError(f"{len(runs)} runs, rounds={rounds}, warmup={warmup}: expected >0, >=1, >=0.")
  keys = list(runs)
  for _ in range(warmup):
    for run in runs.values():
      run()
  times: dict[Hashable, list[float]] = {k: [] for k in keys}
  order = np.random.default_rng(seed)
  for _ in range(rounds):
    for i in order.permutation(len(keys)):
      t0 = clock()
      runs[keys[i]]()
      times[keys[i]].append(clock() - t0)
  return Timings(times)


def compiled_call(f: Callable, *args: Any) -> Callable[[], Any]:
  """A zero-argument call of ``f(*args)`` that blocks on its result, called once (compiled)."""
  import jax

  run = lambda: jax.block_until_ready(f(*args))  # noqa: E731
  run()
  return run


def compile_run(fwd: Callable, params: Any, xs: Any, mode: str) -> Callable[[], Any]:
  """`compiled_call` of ``jit(fwd)(params, xs)`` (``mode="fwd"``) or, for ``"fwd+bwd"``, of
  the jitted gradient of its summed outputs with respect to the params and the inputs."""
  import jax
  import jax.numpy as jnp

  if mode == "fwd":
    return compiled_call(jax.jit(fwd), params, xs)
  grad = jax.grad(lambda p, x: jnp.sum(fwd(p, x)), argnums=(0, 1))
  return compiled_call(jax.jit(grad), params, xs)


def provenance(rounds: int, *, quick: bool = False) -> dict[str, Any]:
  """Where, when and how a row was measured; stored in the row, kept when rows are merged."""
  import jax
  import torch

  return dict(
    processor=cpu_model(),
    cpus=os.cpu_count(),
    platform=platform.platform(),
    backend=jax.default_backend(),
    jax=jax.__version__,
    torch=torch.__version__,
    torch_threads=torch.get_num_threads(),
    rounds=rounds,
    quick=quick,
    date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
  )


def cpu_model() -> str:
  """The CPU's model name (from /proc/cpuinfo on Linux, which platform.processor() lacks)."""
  cpuinfo = Path("/proc/cpuinfo")
  if cpuinfo.exists():
    lines = [ln for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
    if lines:
      return lines[0].split(":", 1)[1].strip()
  return platform.processor() or platform.machine()


def markdown_table(head: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "") -> str:
  """A markdown table; ``align`` has one letter per column, ``r`` right-aligned, else left."""
  rule = ["---:" if a == "r" else "---" for a in align.ljust(len(head), "l")]
  lines = [head, rule, *([str(c) for c in r] for r in rows)]
  return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)
