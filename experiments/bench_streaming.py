"""Streaming latency at batch size 1: one `jaxrnn.stream` LSTM step against `torch.nn.LSTMCell`.

Online inference (speech, control, a chat token at a time) runs one step per input as it
arrives, so what counts is the wall time of one step at B=1, not throughput. For each
hidden size H (input size I = H), in one process:

- ``jaxrnn_jit``: ``jax.jit(stream.step, donate_argnums=1)``, the state donated so XLA
  updates it in place, params and x already on the device;
- ``jaxrnn_aot``: the same step compiled ahead of time (``.lower(...).compile()``),
  which skips jit's cache lookup on each call;
- ``jaxrnn_numpy_io``: the AOT step fed a NumPy x and read back as NumPy (the host
  round trip a server pays; passing NumPy straight to the call is cheaper than a
  separate ``jnp.asarray``, which is a dispatch of its own);
- ``torch``: ``torch.nn.LSTMCell`` under ``torch.inference_mode()``, the state
  threaded through as a tuple;
- ``dispatch_floor``: a jitted ``x + 1`` on a ``(1, 4)`` array, the least a jax call
  costs here.

Each is warmed up, then timed by `experiments.timing.interleaved` (the timer every
benchmark section shares: each round times every variant once, in a shuffled order, each
call blocked on until its output is ready). Reported: the median over rounds in ms per
step, and the ratio of the AOT (and the jit) step to torch, the median over rounds of
that round's ratio.

On CPU, jax dispatches a computation it does not deem cheap to a worker thread; the
hand-off costs tens of microseconds at B=1. ``jax.config.update(
"jax_cpu_enable_async_dispatch", False)``, set before jax first runs anything, runs
every computation on the calling thread instead: it roughly halves the latency of a
small step. `main` sets it (``--async-dispatch`` keeps jax's default); a caller of
`streaming_latency` gets whatever its process has, recorded in each row.

``python -m experiments.bench_streaming [--quick] [--async-dispatch] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxrnn
from experiments.timing import Timings, cpu_model, interleaved, markdown_table, provenance

VARIANTS = ("jaxrnn_jit", "jaxrnn_aot", "jaxrnn_numpy_io", "torch", "dispatch_floor")


def _variants(hidden_size: int, input_size: int, seed: int) -> dict[str, Callable[[], Any]]:
  """Zero-argument callables, one step each, that thread their own state."""
  import torch

  model = jaxrnn.recurrent(jaxrnn.lstm(hidden_size))
  params = model.init(jax.random.key(seed), input_size)
  s = jaxrnn.stream(model)
  rng = np.random.default_rng(seed)
  x_np = rng.standard_normal((1, input_size)).astype(np.float32)
  x = jnp.asarray(x_np)

  jit_step = jax.jit(s.step, donate_argnums=1)
  aot_step = jit_step.lower(params, s.init_state(params, (1,)), x).compile()
  states = {k: s.init_state(params, (1,)) for k in ("jit", "aot", "io")}

  def jaxrnn_jit():
    states["jit"], y = jit_step(params, states["jit"], x)
    y.block_until_ready()

  def jaxrnn_aot():
    states["aot"], y = aot_step(params, states["aot"], x)
    y.block_until_ready()

  def jaxrnn_numpy_io():
    states["io"], y = aot_step(params, states["io"], x_np)  # numpy in: no jnp.asarray dispatch
    np.asarray(y)

  torch.manual_seed(seed)
  cell = torch.nn.LSTMCell(input_size, hidden_size)
  x_t = torch.from_numpy(x_np.copy())
  torch_state = [(torch.zeros(1, hidden_size), torch.zeros(1, hidden_size))]

  def torch_step():
    torch_state[0] = cell(x_t, torch_state[0])

  floor_x = jnp.ones((1, 4))
  floor_fn = jax.jit(lambda a: a + 1.0)

  def dispatch_floor():
    floor_fn(floor_x).block_until_ready()

  return dict(
    jaxrnn_jit=jaxrnn_jit,
    jaxrnn_aot=jaxrnn_aot,
    jaxrnn_numpy_io=jaxrnn_numpy_io,
    torch=torch_step,
    dispatch_floor=dispatch_floor,
  )


def streaming_latency(
  hidden_sizes: Sequence[int] = (128, 512),
  repeats: int = 2000,
  *,
  warmup: int = 100,
  seed: int = 0,
  torch_threads: int | None = 1,
) -> list[dict[str, Any]]:
  """Per-step latency at B=1 of a jitted `jaxrnn.stream` LSTM step and torch's LSTMCell.

  Args:
    hidden_sizes: the H to measure; the input size is H too.
    repeats: timed rounds per size; each round times every variant once.
    warmup: untimed rounds first (compilation, caches, allocator).
    seed: for params and inputs.
    torch_threads: torch's intra-op threads while measuring (restored after); 1
      by default, as a server pins one thread per stream, and because on a busy
      machine extra threads only add noise at B=1. None keeps torch's setting.

  Returns:
    One dict per hidden size: ``hidden_size``, ``input_size``, ``batch_size`` (1),
    ``<variant>_ms`` (median ms per step) for each of `VARIANTS`, ``ratio_to_torch``
    (``jaxrnn_aot_ms / torch_ms``, below 1 is faster than torch),
    ``jit_ratio_to_torch``, ``repeats``, ``cpu_async_dispatch``, ``torch_threads``
    and ``backend``.

  Raises:
    ValueError: for an empty ``hidden_sizes`` or non-positive ``repeats``.
  """
  import torch

  if not hidden_sizes or any(int(h) < 1 for h in hidden_sizes):
    raise ValueError(f"hidden_sizes={hidden_sizes!r}: expected positive ints.")
  if repeats < 1 or warmup < 0:
    raise ValueError(f"repeats={repeats}, warmup={warmup}: expected repeats >= 1, warmup >= 0.")
  threads_before = torch.get_num_threads()
  if torch_threads is not None:
    torch.set_num_threads(torch_threads)
  try:
    rows = _measure(hidden_sizes, repeats, warmup, seed)
  finally:
    torch.set_num_threads(threads_before)
  return rows


def _measure(hidden_sizes, repeats, warmup, seed):
  import torch

  rows = []
  with torch.inference_mode():
    for h in hidden_sizes:
      timings = interleaved(_variants(int(h), int(h), seed), repeats, warmup=warmup, seed=seed)
      rows.append(latency_row(int(h), timings))
  return rows


def latency_row(hidden_size: int, timings: Timings) -> dict[str, Any]:
  """One row of `streaming_latency` from the per-round seconds of every variant."""
  import torch

  row: dict[str, Any] = dict(hidden_size=hidden_size, input_size=hidden_size, batch_size=1)
  for k in VARIANTS:
    row[f"{k}_ms"] = timings.median(k) * 1e3
  row["ratio_to_torch"] = timings.ratio("jaxrnn_aot", "torch")
  row["jit_ratio_to_torch"] = timings.ratio("jaxrnn_jit", "torch")
  row.update(
    repeats=len(timings.seconds["torch"]),
    cpu_async_dispatch=bool(jax.config.values["jax_cpu_enable_async_dispatch"]),
    torch_threads=torch.get_num_threads(),
    backend=jax.default_backend(),
  )
  return row


def table(rows: list[dict[str, Any]]) -> str:
  """The rows as a markdown table."""
  head = ["H", *(f"{v} ms" for v in VARIANTS), "aot / torch", "jit / torch"]
  body = [
    [r["hidden_size"], *(f"{r[f'{v}_ms']:.4f}" for v in VARIANTS)]
    + [f"{r['ratio_to_torch']:.2f}", f"{r['jit_ratio_to_torch']:.2f}"]
    for r in rows
  ]
  return markdown_table(head, body, "r" * len(head))


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  """Prints the latency table (and writes it as JSON with ``--json``)."""
  p = argparse.ArgumentParser(prog="python -m experiments.bench_streaming", description=__doc__)
  p.add_argument("--hidden-sizes", type=int, nargs="+", default=[128, 512])
  p.add_argument("--repeats", type=int, default=2000)
  p.add_argument("--quick", action="store_true", help="100 repeats, H=8: a smoke test")
  p.add_argument(
    "--async-dispatch",
    action="store_true",
    help="keep jax's asynchronous CPU dispatch (by default it is turned off, as for serving)",
  )
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", help="also write the rows to this JSON file")
  args = p.parse_args(argv)
  if not args.async_dispatch:
    jax.config.update("jax_cpu_enable_async_dispatch", False)  # before jax runs anything
  sizes, repeats = ([8], 100) if args.quick else (args.hidden_sizes, args.repeats)
  rows = streaming_latency(sizes, repeats, seed=args.seed)
  for row in rows:
    row["provenance"] = provenance(repeats, quick=args.quick)
  print(
    f"Streaming LSTM step, B=1, I=H, median of {repeats} interleaved rounds; "
    f"{cpu_model()}, jax {jax.__version__} "
    f"({jax.default_backend()}, async dispatch {rows[0]['cpu_async_dispatch']}), "
    f"torch threads {rows[0]['torch_threads']}"
  )
  print(table(rows))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=2)
  return rows


if __name__ == "__main__":
  main()
