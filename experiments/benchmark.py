"""`make bench`: jaxrnn against PyTorch, flax, equinox and haiku, side by side in one process.

A set of sections, each timed by the one shared timer `experiments.timing.interleaved`
(every variant is compiled or warmed up first, then each round times every variant once,
in a shuffled order, so that the machine's load drifts over all of them alike; a time is
the median over rounds, a ratio the median over rounds of that round's ratio):

- ``speed``: LSTM and GRU at S (B=1, T=512, I=32, H=128), M (B=32, T=128, I=128, H=256)
  and L (B=64, T=256, I=256, H=512), forward and forward+backward (the gradient of the
  summed outputs with respect to the params and the inputs), with the ratio to PyTorch
  and to the best JAX peer, and the GFLOP/s as a fraction of a 2048x2048 float32
  matmul's (the practical ceiling), timed in the same rounds as the rows it divides;
- ``breakdown``: where the time of jaxrnn's LSTM goes (forward, backward, their matmuls);
- ``unroll``: the LSTM on M for several ``unroll`` factors (evidence for the default);
- ``remat``: peak memory and time of the LSTM gradient with and without ``remat``;
- ``streaming``: one `jaxrnn.stream` step at B=1 (see `experiments.bench_streaming`).
- ``cells``: every cell at M beside the LSTM, the GRU and flax's MGU; ``min_cells``: the
  linear cells (minGRU, minLSTM, LRU, RG-LRU, S5) at T=1024 and 4096, associative scan,
  sequential loop and step loop, beside the LSTM, memax's LRU, recurrentgemma's RG-LRU, the
  bare recurrence's floors and each cell's projections (see `experiments.bench_cells` and
  `experiments.bench_linear`);
- ``mamba_mlstm``: Mamba and the mLSTM (chunkwise and quadratic) at T=1024 and 4096 beside
  minGRU, each with XLA's memory of its compiled program; a program above
  ``--memory-budget`` GiB is reported, not run (see `experiments.bench_linear.block_table`).

Writes OUT/benchmark.json, OUT/benchmark.md and OUT/benchmark.png (OUT is ``results/``
by default). Every row carries its own ``provenance`` (CPU model, CPU count, backend,
jax and torch versions, rounds, date, quick or not). A run merges into OUT's
benchmark.json: rows it measures replace the rows with the same key (a speed group, a
breakdown or unroll config, a remat length, a streaming hidden size), every other row
keeps its numbers and its provenance (``--fresh`` starts from nothing); ``--skip`` leaves
whole sections as they were. ``--quick`` is a seconds-long smoke run at tiny sizes: it
writes to a new temporary folder unless ``--out`` names one, and refuses ``results/``
and any folder whose benchmark.json holds rows of a full run, so that a quick run never
overwrites or mixes into measured numbers.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import tempfile
from collections.abc import Callable, Hashable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jaxrnn
from experiments import bench_cells, bench_linear, bench_streaming
from experiments.timing import (
  Timings,
  compile_run,
  compiled_call,
  interleaved,
  markdown_table,
  provenance,
)
from jaxrnn.scan import default_unroll, remat_chunk

CONFIGS = {
  "S": dict(B=1, T=512, I=32, H=128),
  "M": dict(B=32, T=128, I=128, H=256),
  "L": dict(B=64, T=256, I=256, H=512),
}
QUICK = {"quick": dict(B=2, T=8, I=4, H=8)}
GATES = {"lstm": 4, "gru": 3}
DEFAULT_OUT = "results"


def flops(kind: str, B: int, T: int, I: int, H: int) -> float:
  """Forward multiply-adds of the gate matmuls, times 2 (elementwise work is ignored)."""
  return 2.0 * B * T * (I + H) * GATES[kind] * H


# ----------------------------------------------------------------------------- jaxrnn


def jaxrnn_impl(kind, B, T, I, H, key):
  cell = jaxrnn.lstm(H) if kind == "lstm" else jaxrnn.gru(H)
  params = cell.init(key, I)

  def fwd(params, xs):
    return jaxrnn.scan(cell, params, xs)[1]

  return fwd, params


# ----------------------------------------------------------------------------- peers


def flax_impl(kind, B, T, I, H, key):
  import flax.linen as nn

  cell = nn.OptimizedLSTMCell(H) if kind == "lstm" else nn.GRUCell(H)
  model = nn.RNN(cell)
  params = model.init(key, jnp.zeros((B, T, I)))

  def fwd(params, xs):
    return model.apply(params, xs)

  return fwd, params


def equinox_impl(kind, B, T, I, H, key):
  import equinox as eqx

  cell = eqx.nn.LSTMCell(I, H, key=key) if kind == "lstm" else eqx.nn.GRUCell(I, H, key=key)
  params, static = eqx.partition(cell, eqx.is_array)

  def fwd(params, xs):
    c = eqx.combine(params, static)
    step1 = jax.vmap(c)  # over the batch

    def body(state, x):
      state = step1(x, state)
      h = state[0] if kind == "lstm" else state
      return state, h

    z = jnp.zeros((xs.shape[0], H), xs.dtype)
    init = (z, z) if kind == "lstm" else z
    _, hs = jax.lax.scan(body, init, jnp.swapaxes(xs, 0, 1))
    return jnp.swapaxes(hs, 0, 1)

  return fwd, params


def haiku_impl(kind, B, T, I, H, key):
  import haiku as hk

  def f(xs):
    core = hk.LSTM(H) if kind == "lstm" else hk.GRU(H)
    hs, _ = hk.dynamic_unroll(core, xs, core.initial_state(xs.shape[0]), time_major=False)
    return hs

  model = hk.without_apply_rng(hk.transform(f))
  params = model.init(key, jnp.zeros((B, T, I)))
  return model.apply, params


JAX_IMPLS = {"jaxrnn": jaxrnn_impl, "flax": flax_impl, "equinox": equinox_impl, "haiku": haiku_impl}


def build_jax(name, kind, mode, cfg, seed=0):
  B, T, I, H = cfg["B"], cfg["T"], cfg["I"], cfg["H"]
  k_p, k_x = jax.random.split(jax.random.key(seed))
  fwd, params = JAX_IMPLS[name](kind, B, T, I, H, k_p)
  return compile_run(fwd, params, jax.random.normal(k_x, (B, T, I), jnp.float32), mode)


def build_torch(kind, mode, cfg, seed=0):
  import torch

  B, T, I, H = cfg["B"], cfg["T"], cfg["I"], cfg["H"]
  torch.manual_seed(seed)
  m = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(I, H, batch_first=True)
  x = torch.randn(B, T, I)
  if mode == "fwd":

    def run():
      with torch.no_grad():
        return m(x)[0]

  else:
    xg = x.clone().requires_grad_(True)

    def run():
      m.zero_grad(set_to_none=True)
      xg.grad = None
      m(xg)[0].sum().backward()
      return xg.grad

  run()
  return run


CEILING_N = 2048
CEILING_FLOPS = 2.0 * CEILING_N**3


@functools.cache
def ceiling_run(n: int = CEILING_N) -> Callable:
  """A compiled ``n x n`` float32 matmul: the practical ceiling, timed among the rows.

  Built once per process; every group's rounds time the same compiled call.
  """
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  run = lambda: jax.block_until_ready(f(a))  # noqa: E731
  run()
  return run


def with_ceiling(runs: dict[str, Callable], rounds: int) -> Timings:
  """`interleaved` timings of ``runs`` and of the matmul ceiling (as ``"_ceiling"``).

  The machine is shared: its speed drifts by 30% and more within one benchmark, so a
  ceiling measured once at the start can be 'exceeded' by a later row. Timing the
  ceiling in every group's rounds keeps each percentage a ratio of two numbers
  measured under the same load.
  """
  return interleaved({**runs, "_ceiling": ceiling_run()}, rounds)


def rate_fields(timings: Timings, name: Hashable, fl: float) -> dict[str, float]:
  """``ms``, ``gflops``, ``ceiling_gflops`` and ``ceiling_fraction`` of ``name`` (``fl`` FLOPs).

  ``ceiling_fraction`` is the median over rounds of that round's GFLOP/s over the
  ceiling's, i.e. ``fl / CEILING_FLOPS`` times the per-round time ratio ceiling / row.
  """
  sec = timings.median(name)
  return dict(
    ms=sec * 1e3,
    gflops=fl / sec / 1e9,
    ceiling_gflops=CEILING_FLOPS / timings.median("_ceiling") / 1e9,
    ceiling_fraction=fl / CEILING_FLOPS * timings.ratio("_ceiling", name),
  )


# ----------------------------------------------------------------------------- speed


def speed_table(configs, kinds, modes, rounds, peers):
  """One group of rows per (kind, config, mode): every implementation timed together."""
  rows = []
  for kind in kinds:
    for cname, cfg in configs.items():
      for mode in modes:
        runs = {name: build_jax(name, kind, mode, cfg) for name in ["jaxrnn", *peers]}
        runs["torch"] = build_torch(kind, mode, cfg)
        group = speed_rows(kind, cname, mode, cfg, with_ceiling(runs, rounds), peers)
        line = "  ".join(f"{r['impl']}={r['ms']:8.2f}" for r in group)
        ceiling = group[0]["ceiling_gflops"]
        print(f"{kind:4} {cname} {mode:7} ms: {line}  (ceiling {ceiling:.0f} GFLOP/s)", flush=True)
        rows += group
  return rows


def speed_rows(kind, cname, mode, cfg, timings: Timings, peers) -> list[dict]:
  """The rows of one speed group from its timings (``"torch"``, peers, ``"_ceiling"``...)."""
  fl = flops(kind, **cfg) * (1 if mode == "fwd" else 3)
  best_peer = min(peers, key=timings.median) if peers else None
  rows = []
  for name in timings.seconds:
    if name == "_ceiling":
      continue
    rows.append(
      dict(
        kind=kind,
        config=cname,
        mode=mode,
        impl=name,
        vs_torch=timings.ratio(name, "torch"),
        vs_best_jax_peer=timings.ratio(name, best_peer) if best_peer else None,
        best_jax_peer=best_peer,
        **rate_fields(timings, name, fl),
        **cfg,
      )
    )
  return rows


def speed_markdown(rows) -> str:
  head = ["cell", "config", "pass", "jaxrnn ms", "PyTorch ms", "best JAX peer ms", "vs PyTorch"]
  head += ["vs best peer", "jaxrnn % of matmul ceiling"]
  by = {}
  for r in rows:
    by.setdefault((r["kind"], r["config"], r["mode"]), {})[r["impl"]] = r
  body = []
  for (kind, cname, mode), d in by.items():
    j, t = d["jaxrnn"], d["torch"]
    peer = d.get(j["best_jax_peer"]) if j["best_jax_peer"] else None
    body.append(
      [kind, cname, mode, f"{j['ms']:.2f}", f"{t['ms']:.2f}"]
      + [f"{peer['ms']:.2f} ({peer['impl']})" if peer else "-", f"{j['vs_torch']:.2f}x"]
      + [f"{j['vs_best_jax_peer']:.2f}x" if peer else "-", f"{j['ceiling_fraction']:.0%}"]
    )
  ceilings = [r["ceiling_gflops"] for r in rows] or [0.0]
  note = (
    f"Matmul ceiling ({CEILING_N}x{CEILING_N} float32, jax), timed in every row's rounds: "
    f"median {statistics.median(ceilings):.0f} GFLOP/s, {min(ceilings):.0f} to "
    f"{max(ceilings):.0f}.\n\n"
  )
  return note + markdown_table(head, body, "lll" + "r" * 6)


# ----------------------------------------------------------------------------- breakdown


def _lstm_internals() -> SimpleNamespace:
  """The private jaxrnn pieces the breakdown times: the one place that imports them."""
  import importlib

  lstm = importlib.import_module("jaxrnn.cells.lstm")  # the module, not jaxrnn.cells.lstm()
  return SimpleNamespace(
    fwd=lstm.sequence.fwd, bwd=lstm.sequence.bwd, gates=lstm.gates, carry=lstm.LSTMCarry
  )


def breakdown_table(configs, rounds: int):
  """Where the time of jaxrnn's LSTM goes on this backend: evidence for the README.

  Each part is its own compiled function, timed interleaved with the others:
  ``fwd`` (the forward pass), ``fwd_save`` (the custom-VJP forward, which also writes the
  gate activations and carries the backward needs), ``bwd`` (the hand-written backward),
  ``bwd_matmuls`` (its three weight/input-gradient matmuls over all ``T*B`` rows alone),
  ``recurrent_matmul`` (a `lax.scan` of ``T`` steps of only ``h @ w_hh``, the floor of any
  scan-based forward) and ``gate_math`` (``T`` steps of only the gate elementwise work).
  """
  rows = []
  for cname, cfg in configs.items():
    timings = with_ceiling(_breakdown_runs(**cfg), rounds)
    rows += breakdown_rows(cname, cfg, timings)
  return rows


def _breakdown_runs(B, T, I, H) -> dict[str, Callable[[], Any]]:
  k = _lstm_internals()
  cell = jaxrnn.lstm(H)
  params = cell.init(jax.random.key(0), I)
  xs = jax.random.normal(jax.random.key(1), (T, B, I))
  carry = cell.initial_carry(params, (B,))
  unroll = default_unroll()
  fwd = jax.jit(lambda p, x: jaxrnn.scan(cell, p, x, time_major=True)[1])
  fwd_save = jax.jit(lambda p, x: k.fwd(p, carry, x, None, False, unroll))
  residuals = fwd_save(params, xs)[1]
  cts = (jax.tree.map(jnp.ones_like, carry), jnp.ones((T, B, H)))
  bwd = jax.jit(lambda r, c: k.bwd(False, unroll, r, c))
  dz = jnp.full((T * B, 4 * H), 0.01)
  h_prev = residuals[4][0].h.reshape(
    T * B, H
  )  # (params, xs, mask, resets, saved); saved: (carries in, gate activations)

  @jax.jit
  def bwd_matmuls(p, x, h_prev, dz):
    x = x.reshape(T * B, I)
    return x.T @ dz, h_prev.T @ dz, dz @ p.w_ih.T, jnp.sum(dz, axis=0)

  @jax.jit
  def recurrent_matmul(p, h):
    def body(h, _):  # every gate column feeds the next step, so nothing is dead code
      z = h @ p.w_hh
      return z[:, :H] + z[:, H : 2 * H] + z[:, 2 * H : 3 * H] + z[:, 3 * H :], None

    return lax.scan(body, h, None, length=T, unroll=unroll)[0]

  @jax.jit
  def gate_math(z, c):
    def body(c, _):
      i, f, g, o = jnp.split(k.gates(z + jnp.tile(c.h, (1, 4))), 4, axis=-1)
      c_new = f * c.c + i * g
      return k.carry(o * jnp.tanh(c_new), c_new), None

    return lax.scan(body, c, None, length=T, unroll=unroll)[0]

  z0 = jax.random.normal(jax.random.key(2), (B, 4 * H))
  h0 = jax.random.normal(jax.random.key(3), (B, H))
  return dict(
    fwd=compiled_call(fwd, params, xs),
    fwd_save=compiled_call(fwd_save, params, xs),
    bwd=compiled_call(bwd, residuals, cts),
    bwd_matmuls=compiled_call(bwd_matmuls, params, xs, h_prev, dz),
    recurrent_matmul=compiled_call(recurrent_matmul, params, h0),
    gate_math=compiled_call(gate_math, z0, carry),
  )


def breakdown_flops(B, T, I, H) -> dict[str, float]:
  """The matmul FLOPs of each breakdown part (elementwise work counts 0)."""
  return {
    "fwd": flops("lstm", B, T, I, H),
    "fwd_save": flops("lstm", B, T, I, H),
    "bwd": 2 * flops("lstm", B, T, I, H),
    "bwd_matmuls": 2.0 * T * B * 4 * H * (I + H + I),
    "recurrent_matmul": 2.0 * T * B * H * 4 * H,
    "gate_math": 0.0,
  }


def breakdown_rows(cname, cfg, timings: Timings) -> list[dict]:
  """The rows of one breakdown config from its timings."""
  rows = []
  for part, fl in breakdown_flops(**cfg).items():
    row = dict(config=cname, part=part, **rate_fields(timings, part, fl))
    row["ns_per_step"] = timings.median(part) / cfg["T"] * 1e9
    rows.append(row)
    print(
      f"breakdown {cname} {part:16} {row['ms']:9.2f} ms  {row['gflops']:6.1f} GFLOP/s "
      f"({row['ceiling_fraction']:.0%} of ceiling)",
      flush=True,
    )
  return rows


def breakdown_markdown(rows) -> str:
  head = ["config", "part", "ms", "GFLOP/s", "% of matmul ceiling", "us per time step"]
  body = [
    [r["config"], r["part"], f"{r['ms']:.2f}"]
    + ([f"{r['gflops']:.0f}", f"{r['ceiling_fraction']:.0%}"] if r["gflops"] else ["-", "-"])
    + [f"{r['ns_per_step'] / 1e3:.0f}"]
    for r in rows
  ]
  return markdown_table(head, body, "llrrrr")


# ----------------------------------------------------------------------------- unroll


def unroll_table(rounds: int, quick: bool):
  """Evidence for `jaxrnn.scan`'s per-backend default: LSTM on M for several unroll factors."""
  cname, cfg = next(iter(QUICK.items())) if quick else ("M", CONFIGS["M"])
  B, T, I, H = cfg["B"], cfg["T"], cfg["I"], cfg["H"]
  cell = jaxrnn.lstm(H)
  params = cell.init(jax.random.key(0), I)
  xs = jax.random.normal(jax.random.key(1), (B, T, I))
  runs = {}
  for u in (1, 4) if quick else (1, 2, 4, 8):
    loss = lambda p, x, u=u: jnp.sum(jaxrnn.scan(cell, p, x, unroll=u)[1])  # noqa: E731
    fwd = jax.jit(lambda p, x, u=u: jaxrnn.scan(cell, p, x, unroll=u)[1])
    runs[(u, "fwd")] = compiled_call(fwd, params, xs)
    runs[(u, "fwd+bwd")] = compiled_call(jax.jit(jax.grad(loss, argnums=(0, 1))), params, xs)
  rows = unroll_rows(cname, interleaved(runs, rounds))
  for r in rows:
    print(f"unroll={r['unroll']} {r['mode']:7} {r['ms']:8.2f} ms  {r['vs_unroll_1']:.2f}x")
  return rows


def unroll_rows(cname, timings: Timings) -> list[dict]:
  """Rows from timings keyed ``(unroll, mode)``; ``vs_unroll_1`` against ``(1, mode)``."""
  return [
    dict(config=cname, unroll=u, mode=m, ms=timings.median((u, m)) * 1e3)
    | dict(vs_unroll_1=timings.ratio((u, m), (1, m)))
    for u, m in timings.seconds
  ]


# ----------------------------------------------------------------------------- remat


def remat_table(lengths, B, H, I, reps):
  """Peak memory (XLA's buffer assignment) and time of the LSTM gradient, with and without remat."""
  cell = jaxrnn.lstm(H)
  params = cell.init(jax.random.key(0), I)
  rows = []
  for T in lengths:
    xs = jax.random.normal(jax.random.key(1), (B, T, I))
    runs, mem = {}, {}
    for remat in (None, True):
      loss = lambda p, x, r=remat: jnp.sum(jaxrnn.scan(cell, p, x, remat=r)[1])  # noqa: E731
      compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, xs).compile()
      m = compiled.memory_analysis()
      mem[remat] = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
      runs[remat] = compiled_call(compiled, params, xs)
    row = remat_row(T, B, H, I, mem, interleaved(runs, reps))
    rows.append(row)
    print(
      f"T={T:5d}: peak {row['plain_mb']:9.1f} MiB -> {row['remat_mb']:7.1f} MiB "
      f"({row['memory_ratio']:.3f}x), time {row['plain_s']:.3f} s -> {row['remat_s']:.3f} s "
      f"({row['time_ratio']:.2f}x)",
      flush=True,
    )
  return rows


def remat_row(T, B, H, I, mem: dict, timings: Timings) -> dict:
  """One remat row from the bytes and timings keyed ``None`` (plain) and ``True`` (remat)."""
  return dict(
    T=T,
    B=B,
    H=H,
    I=I,
    plain_mb=mem[None] / 2**20,
    remat_mb=mem[True] / 2**20,
    memory_ratio=mem[True] / mem[None],
    plain_s=timings.median(None),
    remat_s=timings.median(True),
    time_ratio=timings.ratio(True, None),
    chunk=remat_chunk(True, T),
  )


def remat_markdown(rows) -> str:
  head = ["T", "plain peak MiB", "remat peak MiB", "memory ratio", "plain s", "remat s"]
  body = [
    [r["T"], f"{r['plain_mb']:.1f}", f"{r['remat_mb']:.1f}", f"{r['memory_ratio']:.3f}"]
    + [f"{r['plain_s']:.3f}", f"{r['remat_s']:.3f}", f"{r['time_ratio']:.2f}"]
    for r in rows
  ]
  return markdown_table([*head, "time ratio"], body, "r" * 7)


# ----------------------------------------------------------------------------- sections


class Section(NamedTuple):
  """A benchmark section: ``run(args) -> (rows, rounds)``, the key rows merge by, a table."""

  run: Callable[[argparse.Namespace], tuple[list[dict], int]]
  key: Callable[[dict], Hashable]
  markdown: Callable[[list[dict]], str]


def _speed(a):
  configs = QUICK if a.quick else {c: CONFIGS[c] for c in a.configs.split(",")}
  peers = [p for p in a.peers.split(",") if p]
  return speed_table(configs, a.kinds.split(","), a.modes.split(","), a.rounds, peers), a.rounds


def _breakdown(a):
  configs = QUICK if a.quick else {c: CONFIGS[c] for c in a.configs.split(",")}
  return breakdown_table(configs, a.rounds), a.rounds


def _remat(a):
  lengths = [16, 64] if a.quick else [int(t) for t in a.remat_lengths.split(",")]
  reps = 2 if a.quick else 3
  return remat_table(lengths, *((2, 8, 4) if a.quick else (32, 256, 32)), reps), reps


def _streaming(a):
  repeats = 20 if a.quick else 2000
  return bench_streaming.streaming_latency((8,) if a.quick else (128, 512), repeats), repeats


def _cells(a):
  return bench_cells.cells_table(a.rounds, a.quick), a.rounds


def _min_cells(a):
  rounds = 2 if a.quick else a.long_rounds
  return bench_cells.min_table(rounds, a.quick), rounds


def _mamba_mlstm(a):
  rounds = 2 if a.quick else a.long_rounds
  return bench_linear.block_table(rounds, a.quick, a.memory_budget, a.block_batch), rounds


SECTIONS = {
  "speed": Section(_speed, lambda r: (r["kind"], r["config"], r["mode"]), speed_markdown),
  "breakdown": Section(_breakdown, lambda r: r["config"], breakdown_markdown),
  "unroll": Section(
    lambda a: (unroll_table(a.rounds, a.quick), a.rounds), lambda r: r.get("config", "M"), None
  ),
  "remat": Section(_remat, lambda r: (r["T"], r["B"], r["H"], r["I"]), remat_markdown),
  "streaming": Section(_streaming, lambda r: r["hidden_size"], bench_streaming.table),
  "cells": Section(
    _cells, lambda r: (r["config"], r["variant"], r["mode"]), bench_cells.cells_markdown
  ),
  "min_cells": Section(
    _min_cells, lambda r: (r["T"], r["variant"], r["mode"]), bench_cells.min_markdown
  ),
  "mamba_mlstm": Section(
    _mamba_mlstm,
    lambda r: (r["T"], r["B"], r["variant"], r["mode"]),
    bench_linear.block_markdown,
  ),
}


# ----------------------------------------------------------------------------- results


def output_dir(out: str | None, quick: bool) -> Path:
  """OUT: ``out``, else ``results/`` for a full run and a new temporary folder for a quick one.

  Raises:
    ValueError: for a quick run into ``results/``.
  """
  if out is None:
    return Path(tempfile.mkdtemp(prefix="jaxrnn-bench-quick-")) if quick else Path(DEFAULT_OUT)
  if quick and Path(out).resolve() == Path(DEFAULT_OUT).resolve():
    raise ValueError(f"--quick writes smoke-test rows: not into {DEFAULT_OUT}/, give another --out")
  return Path(out)


def load_previous(path: Path, *, quick: bool) -> dict[str, list[dict]]:
  """The sections of an earlier run saved at ``path``, every row with its provenance.

  Rows saved before rows carried a provenance get the file's old ``machine`` and
  ``rounds`` header, marked ``inferred``. A full run drops the rows of quick runs.

  Raises:
    ValueError: for a quick run, where ``path`` holds rows of a full run.
  """
  if not path.exists():
    return {}
  saved = json.loads(path.read_text())
  m = saved.get("machine", {})
  header = dict(processor=m.get("processor"), cpus=m.get("cpus"), backend=m.get("jax_backend"))
  header.update(jax=m.get("jax"), torch=m.get("torch"), rounds=saved.get("rounds"), date=None)
  sections = {}
  for name in SECTIONS:
    rows = [r if "provenance" in r else _with_header(r, header) for r in saved.get(name, [])]
    measured = [r for r in rows if not r["provenance"].get("quick")]
    if quick and measured:
      raise ValueError(f"{path} holds {name} rows of a full run: a --quick run keeps out of it")
    sections[name] = rows if quick else measured
  return {k: v for k, v in sections.items() if v}


def _with_header(row: dict, header: dict) -> dict:
  """A row saved before provenance, with its file's header (a streaming row has its repeats)."""
  rounds = row.get("repeats", header["rounds"])
  return {**row, "provenance": header | dict(rounds=rounds, inferred=True)}


def merge_rows(old: list[dict], new: list[dict], key: Callable[[dict], Hashable]) -> list[dict]:
  """``old`` without the rows whose key ``new`` has, then ``new``: each row keeps its own fields."""
  fresh = {key(r) for r in new}
  return [r for r in old if key(r) not in fresh] + new


def run_sections(args, previous: dict[str, list[dict]]) -> dict[str, list[dict]]:
  """Runs every section not in ``args.skip``, stamps its rows and merges them into ``previous``."""
  skip = set(args.skip.split(","))
  result = dict(previous)
  for name, section in SECTIONS.items():
    if name in skip:
      continue
    rows, rounds = section.run(args)
    stamp = provenance(rounds, quick=args.quick)
    rows = [{**r, "provenance": stamp} for r in rows]
    result[name] = merge_rows(result.get(name, []), rows, section.key)
  return result


def provenance_markdown(result: dict[str, list[dict]]) -> str:
  """One line per distinct provenance: which sections' rows it measured, where, when, how."""
  groups: dict[str, dict[str, int]] = {}
  for name, rows in result.items():
    for r in rows:
      counts = groups.setdefault(json.dumps(r["provenance"], sort_keys=True), {})
      counts[name] = counts.get(name, 0) + 1
  lines = ["Rows measured:"]
  for p, counts in groups.items():
    p = json.loads(p)
    what = ", ".join(f"{n} ({k} rows)" for n, k in counts.items())
    date = p.get("date") or "undated"
    quick = ", QUICK smoke run" if p.get("quick") else ""
    quick += ", inferred from an old file's header" if p.get("inferred") else ""
    lines.append(
      f"- {what}: {p.get('processor')}, {p.get('cpus')} CPUs, {p.get('backend')}, jax "
      f"{p.get('jax')}, torch {p.get('torch')}, {p.get('rounds')} rounds, {date}{quick}"
    )
  return "\n".join(lines)


def write_results(out: Path, result: dict[str, list[dict]]) -> str:
  """Writes OUT/benchmark.json, .md and (with speed rows) .png; returns the markdown."""
  out.mkdir(parents=True, exist_ok=True)
  md = [provenance_markdown(result)]
  for name, section in SECTIONS.items():
    if result.get(name) and section.markdown:
      md.append(section.markdown(result[name]))
  if result.get("speed"):
    plot(result["speed"], out / "benchmark.png")
  (out / "benchmark.json").write_text(json.dumps(result, indent=1, default=str))
  (out / "benchmark.md").write_text("\n\n".join(md) + "\n")
  return "\n\n".join(md)


def plot(rows, path):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  groups = sorted({(r["kind"], r["config"], r["mode"]) for r in rows})
  impls = ["jaxrnn", "torch", "flax", "equinox", "haiku"]
  impls = [i for i in impls if any(r["impl"] == i for r in rows)]
  fig, ax = plt.subplots(figsize=(max(8, len(groups) * 1.2), 4.5))
  width = 0.8 / len(impls)
  for k, impl in enumerate(impls):
    vals = []
    for g in groups:
      match = [r for r in rows if (r["kind"], r["config"], r["mode"]) == g and r["impl"] == impl]
      vals.append(match[0]["vs_torch"] if match else np.nan)
    ax.bar(np.arange(len(groups)) + k * width, vals, width, label=impl)
  ax.axhline(1.0, color="k", lw=0.8)
  ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2)
  ax.set_xticklabels([f"{a}\n{b} {c}" for a, b, c in groups])
  ax.set_ylabel("time / PyTorch time (lower is faster)")
  ax.set_title("jaxrnn vs PyTorch and JAX peers, CPU, median of interleaved rounds")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def parse_args(argv=None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--configs", default="S,M,L")
  p.add_argument("--kinds", default="lstm,gru")
  p.add_argument("--modes", default="fwd,fwd+bwd")
  p.add_argument("--rounds", type=int, default=7)
  p.add_argument("--peers", default="flax,equinox,haiku")
  p.add_argument(
    "--quick",
    "--tiny",
    action="store_true",
    help="a seconds-long smoke run at tiny sizes, into a new temporary folder unless --out "
    "is given; never into results/ (--tiny: deprecated alias)",
  )
  p.add_argument("--out", help=f"default: {DEFAULT_OUT}/ (a temporary folder with --quick)")
  p.add_argument("--fresh", action="store_true", help="drop OUT's earlier rows instead of merging")
  p.add_argument("--remat-lengths", default="1024,4096,8192")
  p.add_argument(
    "--long-rounds", type=int, default=3, help="rounds of the min_cells and mamba_mlstm sections"
  )
  p.add_argument(
    "--memory-budget",
    type=float,
    default=bench_linear.MEMORY_BUDGET_GIB,
    help="GiB: a mamba_mlstm program whose compiled memory exceeds it is not run",
  )
  p.add_argument(
    "--block-batch",
    type=int,
    default=bench_linear.BLOCK_SIZES["B"],
    help="B of the mamba_mlstm section (its rows are kept per B)",
  )
  p.add_argument("--skip", default="", help=f"comma list of sections to skip: {','.join(SECTIONS)}")
  return p, p.parse_args(argv)


def main(argv=None):
  parser, args = parse_args(argv)
  try:
    out = output_dir(args.out, args.quick)
    previous = load_previous(out / "benchmark.json", quick=args.quick)  # checks before timing
  except ValueError as e:
    parser.error(str(e))
  result = run_sections(args, {} if args.fresh else previous)
  print(write_results(out, result))
  print(f"wrote {out}/benchmark.json, .md, .png")
  return result


if __name__ == "__main__":
  main()
