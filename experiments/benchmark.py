"""`make bench`: jaxrnn against PyTorch, flax, equinox and haiku, side by side in one process.

For LSTM and GRU, configs S (B=1, T=512, I=32, H=128), M (B=32, T=128, I=128, H=256)
and L (B=64, T=256, I=256, H=512), forward and forward+backward (the gradient of the
summed outputs with respect to the params and the inputs). Every implementation is
compiled (or warmed up) first, then timed in interleaved rounds: round r times each
implementation once, so that the machine's load drifts over all of them alike. The
median over rounds is reported, with the ratio to PyTorch and to the best JAX peer, and
the GFLOP/s as a fraction of a large float32 matmul's GFLOP/s (the practical ceiling of
this machine), which is timed in the same interleaved rounds as the rows it divides.

Writes results/benchmark.json and results/benchmark.png.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jaxrnn
from jaxrnn.scan import default_unroll, remat_chunk

CONFIGS = {
  "S": dict(B=1, T=512, I=32, H=128),
  "M": dict(B=32, T=128, I=128, H=256),
  "L": dict(B=64, T=256, I=256, H=512),
}
TINY = {"tiny": dict(B=2, T=8, I=4, H=8)}
GATES = {"lstm": 4, "gru": 3}


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
  xs = jax.random.normal(k_x, (B, T, I), jnp.float32)
  if mode == "fwd":
    f = jax.jit(fwd)
  else:
    f = jax.jit(jax.grad(lambda p, x: jnp.sum(fwd(p, x)), argnums=(0, 1)))
  run = lambda: jax.block_until_ready(f(params, xs))  # noqa: E731
  run()  # compile
  return run


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


def with_ceiling(runs: dict[str, Callable], rounds: int) -> tuple[dict[str, float], float]:
  """`interleaved` medians of ``runs``, and the matmul ceiling (GFLOP/s) timed in the same rounds.

  The machine is shared: its speed drifts by 30% and more within one benchmark, so a
  ceiling measured once at the start can be 'exceeded' by a later row. Timing the
  ceiling in every group's rounds keeps each percentage a ratio of two numbers
  measured under the same load.
  """
  med = interleaved({**runs, "_ceiling": ceiling_run()}, rounds)
  return med, 2.0 * CEILING_N**3 / med.pop("_ceiling") / 1e9


def interleaved(runs: dict[str, Callable], rounds: int, seed: int = 0) -> dict[str, float]:
  """Median seconds per call of each callable, timed in interleaved rounds.

  The order within each round is shuffled: PyTorch's OpenMP threads keep spinning for a
  while after a parallel region, which slows whatever runs right after it, so a fixed
  order would charge that to one implementation.
  """
  times = {k: [] for k in runs}
  rng = np.random.default_rng(seed)
  keys = list(runs)
  for _ in range(rounds):
    for i in rng.permutation(len(keys)):
      k, run = keys[i], runs[keys[i]]
      t0 = time.perf_counter()
      run()
      times[k].append(time.perf_counter() - t0)
  return {k: statistics.median(v) for k, v in times.items()}


def speed_table(configs, kinds, modes, rounds, peers):
  rows = []
  for kind in kinds:
    for cname, cfg in configs.items():
      for mode in modes:
        runs = {name: build_jax(name, kind, mode, cfg) for name in ["jaxrnn", *peers]}
        runs["torch"] = build_torch(kind, mode, cfg)
        med, ceiling = with_ceiling(runs, rounds)
        fl = flops(kind, **cfg) * (1 if mode == "fwd" else 3)
        best_peer = min(peers, key=lambda p: med[p]) if peers else None
        for name, sec in med.items():
          row = dict(
            kind=kind,
            config=cname,
            mode=mode,
            impl=name,
            ms=sec * 1e3,
            vs_torch=sec / med["torch"],
            vs_best_jax_peer=(sec / med[best_peer]) if best_peer else None,
            best_jax_peer=best_peer,
            gflops=fl / sec / 1e9,
            ceiling_gflops=ceiling,
            ceiling_fraction=fl / sec / 1e9 / ceiling,
            **cfg,
          )
          rows.append(row)
        line = "  ".join(f"{n}={med[n] * 1e3:8.2f}" for n in med)
        print(f"{kind:4} {cname} {mode:7} ms: {line}  (ceiling {ceiling:.0f} GFLOP/s)", flush=True)
  return rows


def unroll_table(rounds: int, tiny: bool):
  """Evidence for `jaxrnn.scan`'s per-backend default: LSTM on M for several unroll factors."""
  cfg = TINY["tiny"] if tiny else CONFIGS["M"]
  B, T, I, H = cfg["B"], cfg["T"], cfg["I"], cfg["H"]
  cell = jaxrnn.lstm(H)
  params = cell.init(jax.random.key(0), I)
  xs = jax.random.normal(jax.random.key(1), (B, T, I))
  runs = {}
  for u in (1, 4) if tiny else (1, 2, 4, 8):
    fwd = jax.jit(lambda p, x, u=u: jaxrnn.scan(cell, p, x, unroll=u)[1])
    grad = jax.jit(
      jax.grad(lambda p, x, u=u: jnp.sum(jaxrnn.scan(cell, p, x, unroll=u)[1]), argnums=(0, 1))
    )
    for mode, f in (("fwd", fwd), ("fwd+bwd", grad)):
      run = lambda f=f: jax.block_until_ready(f(params, xs))  # noqa: E731
      run()
      runs[(u, mode)] = run
  med = interleaved(runs, rounds)
  rows = [dict(unroll=u, mode=m, ms=sec * 1e3) for (u, m), sec in med.items()]
  for r in rows:
    r["vs_unroll_1"] = r["ms"] / next(
      q["ms"] for q in rows if q["unroll"] == 1 and q["mode"] == r["mode"]
    )
    print(f"unroll={r['unroll']} {r['mode']:7} {r['ms']:8.2f} ms  {r['vs_unroll_1']:.2f}x")
  return rows


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
      f = jax.jit(jax.grad(loss, argnums=(0, 1)))
      compiled = f.lower(params, xs).compile()
      m = compiled.memory_analysis()
      mem[remat] = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
      run = lambda c=compiled, x=xs: jax.block_until_ready(c(params, x))  # noqa: E731
      run()
      runs[remat] = run
    med = interleaved(runs, reps)
    row = dict(
      T=T,
      B=B,
      H=H,
      I=I,
      plain_mb=mem[None] / 2**20,
      remat_mb=mem[True] / 2**20,
      memory_ratio=mem[True] / mem[None],
      plain_s=med[None],
      remat_s=med[True],
      time_ratio=med[True] / med[None],
      chunk=remat_chunk(True, T),
    )
    rows.append(row)
    print(
      f"T={T:5d}: peak {row['plain_mb']:9.1f} MiB -> {row['remat_mb']:7.1f} MiB "
      f"({row['memory_ratio']:.3f}x), time {row['plain_s']:.3f} s -> {row['remat_s']:.3f} s "
      f"({row['time_ratio']:.2f}x)",
      flush=True,
    )
  return rows


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
    rows += _breakdown_config(cname, rounds, **cfg)
  return rows


def _breakdown_config(cname, rounds, B, T, I, H):
  from jaxrnn.cells import fused
  from jaxrnn.cells.base import LSTMCarry

  rows = []
  cell = jaxrnn.lstm(H)
  params = cell.init(jax.random.key(0), I)
  xs = jax.random.normal(jax.random.key(1), (T, B, I))
  carry = cell.initial_carry(params, (B,))
  unroll = default_unroll()
  fwd = jax.jit(lambda p, x: jaxrnn.scan(cell, p, x, time_major=True)[1])
  fwd_save = jax.jit(lambda p, x: fused._lstm_fwd(p, carry, x, None, False, unroll))
  residuals = fwd_save(params, xs)[1]
  cts = (jax.tree.map(jnp.ones_like, carry), jnp.ones((T, B, H)))
  bwd = jax.jit(lambda r, c: fused._lstm_bwd(False, unroll, r, c))
  dz = jnp.full((T * B, 4 * H), 0.01)
  h_prev = residuals[3][0].reshape(T * B, H)

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
      acts = fused._lstm_gates(z + jnp.tile(c.h, (1, 4)))
      i, f, g, o = jnp.split(acts, 4, axis=-1)
      c_new = f * c.c + i * g
      return LSTMCarry(o * jnp.tanh(c_new), c_new), None

    return lax.scan(body, c, None, length=T, unroll=unroll)[0]

  z0 = jax.random.normal(jax.random.key(2), (B, 4 * H))
  h0 = jax.random.normal(jax.random.key(3), (B, H))
  calls = {
    "fwd": lambda: fwd(params, xs),
    "fwd_save": lambda: fwd_save(params, xs),
    "bwd": lambda: bwd(residuals, cts),
    "bwd_matmuls": lambda: bwd_matmuls(params, xs, h_prev, dz),
    "recurrent_matmul": lambda: recurrent_matmul(params, h0),
    "gate_math": lambda: gate_math(z0, carry),
  }
  runs = {k: (lambda f=f: jax.block_until_ready(f())) for k, f in calls.items()}
  for run in runs.values():
    run()
  med, ceiling = with_ceiling(runs, rounds)
  fl = {
    "fwd": flops("lstm", B, T, I, H),
    "fwd_save": flops("lstm", B, T, I, H),
    "bwd": 2 * flops("lstm", B, T, I, H),
    "bwd_matmuls": 2.0 * T * B * 4 * H * (I + H + I),
    "recurrent_matmul": 2.0 * T * B * H * 4 * H,
    "gate_math": 0.0,
  }
  for part, sec in med.items():
    gf = fl[part] / sec / 1e9
    row = dict(config=cname, part=part, ms=sec * 1e3, gflops=gf, ceiling_gflops=ceiling)
    row["ceiling_fraction"] = gf / ceiling
    row["ns_per_step"] = sec / T * 1e9
    rows.append(row)
    print(
      f"breakdown {cname} {part:16} {row['ms']:9.2f} ms  {gf:6.1f} GFLOP/s "
      f"({row['ceiling_fraction']:.0%} of ceiling)",
      flush=True,
    )
  return rows


def breakdown_markdown(rows) -> str:
  head = "| config | part | ms | GFLOP/s | % of matmul ceiling | us per time step |"
  lines = [head, "|---|---|---:|---:|---:|---:|"]
  for r in rows:
    gf = f"{r['gflops']:.0f}" if r["gflops"] else "-"
    pct = f"{r['ceiling_fraction']:.0%}" if r["gflops"] else "-"
    us = r["ns_per_step"] / 1e3
    lines.append(f"| {r['config']} | {r['part']} | {r['ms']:.2f} | {gf} | {pct} | {us:.0f} |")
  return "\n".join(lines)


def machine() -> dict:
  import torch

  cpu = platform.processor() or platform.machine()
  cpuinfo = Path("/proc/cpuinfo")
  if cpuinfo.exists():  # Linux: the CPU's model name, which platform.processor() lacks
    lines = [ln for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
    cpu = lines[0].split(":", 1)[1].strip() if lines else cpu
  return dict(
    platform=platform.platform(),
    processor=cpu,
    cpus=os.cpu_count(),
    jax=jax.__version__,
    jax_backend=jax.default_backend(),
    jax_devices=[str(d) for d in jax.devices()],
    torch=torch.__version__,
    torch_threads=torch.get_num_threads(),
  )


def markdown(rows) -> str:
  out = [
    "| cell | config | pass | jaxrnn ms | PyTorch ms | best JAX peer ms | vs PyTorch "
    "| vs best peer | jaxrnn % of matmul ceiling |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  by = {}
  for r in rows:
    by.setdefault((r["kind"], r["config"], r["mode"]), {})[r["impl"]] = r
  for (kind, cname, mode), d in by.items():
    j, t = d["jaxrnn"], d["torch"]
    peer = d.get(j["best_jax_peer"]) if j["best_jax_peer"] else None
    out.append(
      f"| {kind} | {cname} | {mode} | {j['ms']:.2f} | {t['ms']:.2f} | "
      + (f"{peer['ms']:.2f} ({peer['impl']})" if peer else "-")
      + f" | {j['vs_torch']:.2f}x | "
      + (f"{j['vs_best_jax_peer']:.2f}x" if peer else "-")
      + f" | {100 * j['ceiling_fraction']:.0f}% |"
    )
  return "\n".join(out)


def remat_markdown(rows) -> str:
  out = [
    "| T | plain peak MiB | remat peak MiB | memory ratio | plain s | remat s | time ratio |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    out.append(
      f"| {r['T']} | {r['plain_mb']:.1f} | {r['remat_mb']:.1f} | {r['memory_ratio']:.3f} "
      f"| {r['plain_s']:.3f} | {r['remat_s']:.3f} | {r['time_ratio']:.2f} |"
    )
  return "\n".join(out)


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


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default="S,M,L")
  parser.add_argument("--kinds", default="lstm,gru")
  parser.add_argument("--modes", default="fwd,fwd+bwd")
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--peers", default="flax,equinox,haiku")
  parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (tests)")
  parser.add_argument("--out", default="results")
  parser.add_argument("--remat-lengths", default="1024,4096,8192")
  parser.add_argument(
    "--skip",
    default="",
    help="comma list of sections to skip: speed,breakdown,unroll,remat,streaming",
  )
  args = parser.parse_args(argv)
  configs = TINY if args.tiny else {c: CONFIGS[c] for c in args.configs.split(",")}
  peers = [p for p in args.peers.split(",") if p]
  skip = set(args.skip.split(","))
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  # Sections skipped in this run keep their numbers from the last run in OUT.
  previous = out / "benchmark.json"
  partial = skip - {""} or args.kinds != "lstm,gru" or args.configs != "S,M,L"
  result = json.loads(previous.read_text()) if previous.exists() and partial else {}
  result.update(machine=machine(), rounds=args.rounds)
  if "speed" not in skip:
    rows = speed_table(configs, args.kinds.split(","), args.modes.split(","), args.rounds, peers)
    key = lambda r: (r["kind"], r["config"], r["mode"])  # noqa: E731
    measured = {key(r) for r in rows}
    kept = [r for r in result.get("speed", []) if key(r) not in measured]
    rows = kept + rows  # rows of kinds/configs not measured now keep their last numbers
    result["speed"] = rows
    result.pop("matmul_gflops", None)  # older runs: one ceiling measured at the start
    plot(rows, out / "benchmark.png")
  if "breakdown" not in skip:
    result["breakdown"] = breakdown_table(configs, args.rounds)
  if "unroll" not in skip:
    result["unroll"] = unroll_table(args.rounds, args.tiny)
  if "remat" not in skip:
    lengths = [16, 64] if args.tiny else [int(t) for t in args.remat_lengths.split(",")]
    B, H, I = (2, 8, 4) if args.tiny else (32, 256, 32)
    result["remat"] = remat_table(lengths, B, H, I, 2 if args.tiny else 3)
  if "streaming" not in skip:
    from experiments.bench_streaming import streaming_latency

    result["streaming"] = streaming_latency(
      hidden_sizes=(8,) if args.tiny else (128, 512), **({"repeats": 20} if args.tiny else {})
    )
  from experiments.bench_streaming import table as streaming_markdown

  md = []
  if "speed" in result:
    ceilings = [r["ceiling_gflops"] for r in result["speed"] if "ceiling_gflops" in r] or [0.0]
    md += [
      f"Matmul ceiling (2048x2048 float32, jax), timed in every row's rounds: median "
      f"{statistics.median(ceilings):.0f} GFLOP/s, {min(ceilings):.0f} to {max(ceilings):.0f}.",
      "",
    ]
    md += [markdown(result["speed"])]
  if "breakdown" in result:
    md += ["", breakdown_markdown(result["breakdown"])]
  if "remat" in result:
    md += ["", remat_markdown(result["remat"])]
  if "streaming" in result:
    md += ["", streaming_markdown(result["streaming"])]
  (out / "benchmark.json").write_text(json.dumps(result, indent=1, default=str))
  (out / "benchmark.md").write_text("\n".join(md) + "\n")
  print("\n".join(md))
  return result


if __name__ == "__main__":
  main()
