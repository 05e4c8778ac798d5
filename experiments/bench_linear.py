"""The linear cells' peers and floors in `make bench`'s ``min_cells`` section (issue 24).

`experiments.bench_cells` times these variants beside jaxrnn's cells, in the same rounds:

- peers (`PEERS`): memax's LRU for ``lru``; recurrentgemma's JAX ``RGLRU`` layer for
  ``rg_lru``, with both of its native scans (``ScanType.LINEAR_NATIVE``, a `lax.scan`, and
  ``ASSOCIATIVE_NATIVE``, a `lax.associative_scan`); a cell is compared with the faster of
  its peers at each length and mode (`best_peer`);
- floors (`FLOORS`): the bare recurrence ``h_t = a_t * h_{t-1} + b_t`` on ``(B, T, H)``
  float32 arrays, by `lax.scan` (over the time axis, the transposes to and from time-major
  included, as a batch-major cell needs them) and by `lax.associative_scan` (along axis 1),
  differentiated by JAX's autodiff;
- projections (`PROJECTIONS`): each linear cell's own matmuls (its input projections and,
  for ``lru`` and ``s5``, its readout ``C``) timed as plain matmuls, with no recurrence and
  no elementwise work; forward+backward is the forward matmuls and their VJP with a random
  cotangent (`vjp_run`), so nothing is dead code.

``"{kind} floor+proj"`` (`with_floor_sums`) is the per-round sum of the `lax.scan` floor and
the kind's projections, timed in the same round: what a cell must at least do. Targets
(`FLOOR_TARGET`): each linear cell's default path within 3x of it, forward+backward.

`make bench`'s ``mamba_mlstm`` section (`block_table`, issue 25) times the two cells whose
state is wider than their output, at the same B, I = H and T: ``mamba`` (the paper's
expansion 2 and state 16: a ``(B, T, 2 H * 16)`` recurrence), ``mlstm`` (4 heads, its
default chunkwise form) and ``mlstm parallel`` (one chunk of T: the quadratic form, a
``(B, 4, T, T)`` decay matrix), beside ``min_gru`` (its default path) timed in the same
rounds. Each program's memory is read from XLA before it runs (`compile_with_memory`:
temp + argument + output bytes of the compiled program); one above the budget is reported
as not run, with what it needs. No JAX peer is timed: the floor+proj ratio does not fit
(mamba's recurrence is 32x the floor's width, mlstm's is no elementwise recurrence), so a
row has its milliseconds and its ratio to min_gru in the same round and mode.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

import jaxrnn
from experiments.timing import Timings, compile_run, compiled_call, interleaved, markdown_table
from jaxrnn.cells import linear_scan

LINEAR_KINDS = ("min_gru", "min_lstm", "lru", "rg_lru", "s5")
FLOOR = "floor lax.scan"  # the floor of the targets
FLOOR_TARGET = 3.0  # a cell at most this x (floor + its projections), forward+backward
RG_HEAD_WIDTH = 256  # recurrentgemma's released models: 2560 / 10 and 4096 / 16 heads


def rg_heads(H: int) -> int:
  """``rg_lru``'s ``num_heads`` at width ``H``: heads of `RG_HEAD_WIDTH` (at least one)."""
  return max(1, H // RG_HEAD_WIDTH)


# ----------------------------------------------------------------------------- peers


def memax_lru(cfg, key):
  """memax's LRU (equinox, its own associative scan) with N = H = I, vmapped over the batch
  (the peer of ``lru``); the gradient is with respect to its eight weights."""
  import equinox as eqx
  from memax.equinox.semigroups.lru import LRU

  with jax.numpy_dtype_promotion("standard"):  # memax mixes dtypes implicitly
    model = LRU(cfg["H"], cfg["H"], key)
  fields = lambda m: (m.nu_log, m.theta_log, m.gamma_log, m.B_re, m.B_im, m.C_re, m.C_im, m.D)  # noqa: E731

  def fwd(weights, xs):
    with jax.numpy_dtype_promotion("standard"):
      m = eqx.tree_at(fields, model, weights)
      row = lambda x: m(m.initialize_carry(), (x, jnp.zeros(x.shape[0], bool)))[1]  # noqa: E731
      return jax.vmap(row)(xs)

  return fwd, fields(model), "memax (lax.associative_scan, autodiff)"


def recurrentgemma_rglru(cfg, key, scan_type: str):
  """recurrentgemma's ``RGLRU`` layer (flax linen) of width H with `rg_heads` heads and
  ``scan_type`` (a ``recurrentgemma.common.ScanType`` name), ``segment_pos`` ``arange(T)``
  on every row (one segment, as jaxrnn's default carry); gradient: its params and inputs."""
  from recurrentgemma.common import ScanType
  from recurrentgemma.jax.layers import RGLRU

  if cfg["I"] != cfg["H"]:
    raise ValueError(f"I={cfg['I']}, H={cfg['H']}: recurrentgemma's RGLRU maps H to H.")
  layer = RGLRU(width=cfg["H"], num_heads=rg_heads(cfg["H"]), scan_type=ScanType[scan_type])
  pos = jnp.broadcast_to(jnp.arange(cfg["T"]), (cfg["B"], cfg["T"]))

  def fwd(variables, xs):
    with jax.numpy_rank_promotion("allow"):  # its BlockDiagonalLinear broadcasts b's rank
      return layer.apply(variables, xs, pos, return_cache=False)[0]

  with jax.numpy_rank_promotion("allow"):
    variables = layer.init(key, jnp.zeros((cfg["B"], cfg["T"], cfg["H"])), pos)
  scan = "lax.scan" if scan_type == "LINEAR_NATIVE" else "lax.associative_scan"
  return fwd, variables, f"recurrentgemma ({scan}, autodiff)"


RG_SCANS = {"recurrentgemma_linear": "LINEAR_NATIVE", "recurrentgemma_assoc": "ASSOCIATIVE_NATIVE"}
PEERS: dict[str, tuple[str, ...]] = {"lru": ("memax_lru",), "rg_lru": tuple(RG_SCANS)}


def peer_variants(kinds) -> dict[str, Callable]:
  """The peers of ``kinds`` (`PEERS`), by name."""
  builds: dict[str, Callable] = {"memax_lru": memax_lru}
  for name, scan_type in RG_SCANS.items():
    builds[name] = functools.partial(recurrentgemma_rglru, scan_type=scan_type)
  return {p: builds[p] for kind in kinds for p in PEERS.get(kind, ())}


def best_peer(timings: Timings, kind: str, mode: str) -> str | None:
  """``kind``'s fastest peer in ``mode`` (the smallest median), None if none was timed."""
  timed = [p for p in PEERS.get(kind, ()) if (p, mode) in timings.seconds]
  return min(timed, key=lambda p: timings.median((p, mode)), default=None)


# ----------------------------------------------------------------------------- floors


def _recurrence_inputs(cfg, key):
  """``a`` in (0, 1), ``(B, T, H)`` float32; the inputs ``xs`` are ``b`` (needs I == H)."""
  if cfg["I"] != cfg["H"]:
    raise ValueError(f"I={cfg['I']}, H={cfg['H']}: the floors read the inputs as b.")
  return jax.nn.sigmoid(jax.random.normal(key, (cfg["B"], cfg["T"], cfg["H"])))


def scan_floor(cfg, key):
  """``h_t = a_t h_{t-1} + b_t`` by `lax.scan`, batch-major in and out."""

  def fwd(a, b):
    def body(h, ab):
      h = ab[0] * h + ab[1]
      return h, h

    at, bt = jnp.swapaxes(a, 0, 1), jnp.swapaxes(b, 0, 1)
    return jnp.swapaxes(lax.scan(body, jnp.zeros_like(at[0]), (at, bt))[1], 0, 1)

  return fwd, _recurrence_inputs(cfg, key), "bare lax.scan (autodiff)"


def associative_floor(cfg, key):
  """``h_t = a_t h_{t-1} + b_t`` by `lax.associative_scan` along the time axis."""

  def combine(first, second):
    return first[0] * second[0], second[0] * first[1] + second[1]

  def fwd(a, b):
    return lax.associative_scan(combine, (a, b), axis=1)[1]

  return fwd, _recurrence_inputs(cfg, key), "bare lax.associative_scan (autodiff)"


FLOORS = {FLOOR: scan_floor, "floor associative_scan": associative_floor}


# ----------------------------------------------------------------------------- projections


def _chain(I: int, H: int, kind: str) -> list[tuple[int, int, int]]:
  """``kind``'s matmuls in order, each ``(in, out, heads)`` (block-diagonal over ``heads``):
  the input projection to H where I != H, the input side, the readout (``lru``: N = H,
  complex B and C; ``s5``: P = H, P / 2 complex states with conjugate symmetry)."""
  first = [(I, H, 1)] if I != H and kind in ("lru", "rg_lru", "s5") else []
  return (
    first
    + {
      "min_gru": [(I, 2 * H, 1)],  # z and the candidate
      "min_lstm": [(I, 3 * H, 1)],  # f, i and the candidate
      "lru": [(H, 2 * H, 1), (2 * H, H, 1)],  # u B (re, im); Re(C h) from (re, im)
      "rg_lru": [(H, 2 * H, rg_heads(H))],  # the a and x gates, block-diagonal
      "s5": [(H, H, 1), (H, H, 1)],  # u B~ (P/2 re, P/2 im); 2 Re(C~ h)
    }[kind]
  )


def projections(kind: str):
  """A build of ``kind``'s matmuls alone: ``x`` through `_chain`'s weights."""

  def build(cfg, key):
    chain = _chain(cfg["I"], cfg["H"], kind)
    keys = jax.random.split(key, len(chain))
    ws = [
      jax.random.normal(k, (n, i // n, o // n)) / i**0.5
      for k, (i, o, n) in zip(keys, chain, strict=True)
    ]

    def fwd(ws, xs):
      y = xs
      for w in ws:
        blocks = y.reshape(*y.shape[:-1], w.shape[0], w.shape[1])
        y = jnp.einsum("btki,kio->btko", blocks, w).reshape(*y.shape[:-1], -1)
      return y

    widths = " -> ".join([str(chain[0][0])] + [str(o) for _, o, _ in chain])
    return fwd, ws, f"matmuls only ({widths})"

  build.run = vjp_run
  return build


def vjp_run(fwd: Callable, params: Any, xs: jax.Array, mode: str) -> Callable[[], Any]:
  """Like `compile_run`, but forward+backward returns the outputs and their VJP with a random
  cotangent (a gradient of a sum alone would drop the last matmul's forward as dead code)."""
  if mode == "fwd":
    return compile_run(fwd, params, xs, mode)

  def fwd_bwd(p, x, cotangent):
    y, pullback = jax.vjp(fwd, p, x)
    return y, pullback(cotangent)

  cotangent = jax.random.normal(jax.random.key(1), jax.eval_shape(fwd, params, xs).shape)
  return compiled_call(jax.jit(fwd_bwd), params, xs, cotangent)


def floor_variants(kinds) -> dict[str, Callable]:
  """Both floors and the projections of each linear kind among ``kinds``."""
  out = dict(FLOORS)
  return out | {f"{k} proj": projections(k) for k in kinds if k in LINEAR_KINDS}


def with_floor_sums(timings: Timings, kernels: dict[str, str]) -> Timings:
  """``timings`` with ``("{kind} floor+proj", mode)``: per round, `FLOOR`'s seconds plus
  the kind's projections' (both timed in that round); ``kernels`` gets their description."""
  seconds = dict(timings.seconds)
  for name, mode in timings.seconds:
    if name.endswith(" proj") and (FLOOR, mode) in timings.seconds:
      kind = name[: -len(" proj")]
      pairs = zip(timings.seconds[(FLOOR, mode)], timings.seconds[(name, mode)], strict=True)
      seconds[(f"{kind} floor+proj", mode)] = [f + p for f, p in pairs]
      kernels[f"{kind} floor+proj"] = f"sum per round: {FLOOR} + {kind} proj"
  return Timings(seconds)


# ----------------------------------------------------------------------------- mamba, mlstm

BLOCK_SIZES, BLOCK_LENGTHS = dict(B=32, I=256, H=256), (1024, 4096)
QUICK_BLOCK_SIZES, QUICK_BLOCK_LENGTHS = dict(B=2, I=8, H=8), (16,)
MLSTM_HEADS = 4  # xlstm's default
BLOCK_REFERENCE = "min_gru"
MEMORY_BUDGET_GIB = 8.0  # the default of `make bench`'s --memory-budget
GIB = 2**30
BLOCKS: dict[str, Callable[[int, int], Any]] = {  # (H, T) -> cell
  "mamba": lambda H, T: jaxrnn.mamba(H, expand=2, state_size=16),
  "mlstm": lambda H, T: jaxrnn.mlstm(H, num_heads=MLSTM_HEADS),
  "mlstm parallel": lambda H, T: jaxrnn.mlstm(H, num_heads=MLSTM_HEADS, chunk_size=T),
  BLOCK_REFERENCE: lambda H, T: jaxrnn.min_gru(H),
}


def block_kernel(name: str, cell: Any) -> str:
  """What `jaxrnn.scan` runs for ``BLOCKS[name]`` on its default path."""
  if name == "mlstm parallel":
    return "chunkwise, one chunk of T (quadratic), autodiff"
  if name == "mlstm":
    return f"chunkwise, chunks of {dict(cell.config)['chunk_size']}, autodiff"
  if name == "mamba":
    return f"linear scan in chunks of {dict(cell.config)['chunk_size']}, {linear_scan.method()}"
  return f"linear scan, {linear_scan.method()}"


def compile_with_memory(fwd: Callable, params: Any, xs: jax.Array, mode: str):
  """``(compiled, args, bytes)``: ``jit(fwd)`` (``"fwd"``) or the gradient of its summed
  outputs with respect to the params and inputs (``"fwd+bwd"``, as `compile_run`) compiled,
  not run, and its memory from XLA's ``memory_analysis``: ``dict(temp, argument, output,
  total, xla_peak)``, ``total`` the sum of the first three."""
  f = fwd if mode == "fwd" else jax.grad(lambda p, x: jnp.sum(fwd(p, x)), argnums=(0, 1))
  compiled = jax.jit(f).lower(params, xs).compile()
  m = compiled.memory_analysis()
  parts = dict(
    temp=m.temp_size_in_bytes, argument=m.argument_size_in_bytes, output=m.output_size_in_bytes
  )
  return (
    compiled,
    (params, xs),
    parts | dict(total=sum(parts.values()), xla_peak=m.peak_memory_in_bytes),
  )


def block_variants(T: int) -> dict[str, Callable[[int], Any]]:
  """`BLOCKS` at length ``T``, each a factory of H; without ``mlstm parallel`` where ``T`` is
  at most the mLSTM's chunk size (one chunk already: the ``mlstm`` row's program)."""
  chunk = dict(jaxrnn.mlstm(MLSTM_HEADS, num_heads=MLSTM_HEADS).config)["chunk_size"]
  return {
    name: functools.partial(factory, T=T)
    for name, factory in BLOCKS.items()
    if name != "mlstm parallel" or T > chunk
  }


def block_runs(cfg: dict, budget_bytes: float, seed: int = 0):
  """``(runs, kernels, memory)`` at ``cfg``: every `block_variants` variant and mode
  compiled and its memory read; those within ``budget_bytes`` run once (warm), in ``runs``."""
  k_p, k_x = jax.random.split(jax.random.key(seed))
  xs = jax.random.normal(k_x, (cfg["B"], cfg["T"], cfg["I"]))
  runs, kernels, memory = {}, {}, {}
  for name, factory in block_variants(cfg["T"]).items():
    cell = factory(cfg["H"])
    params = jax.jit(cell.init, static_argnums=1)(k_p, cfg["I"])  # one compile, not one per op
    kernels[name] = block_kernel(name, cell)
    fwd = functools.partial(lambda cell, p, x: jaxrnn.scan(cell, p, x)[1], cell)
    for mode in ("fwd", "fwd+bwd"):
      compiled, args, memory[(name, mode)] = compile_with_memory(fwd, params, xs, mode)
      if memory[(name, mode)]["total"] <= budget_bytes:
        runs[(name, mode)] = compiled_call(compiled, *args)
  return runs, kernels, memory


def block_rows(cfg: dict, timings: Timings, kernels: dict, memory: dict, budget_bytes: float):
  """One row per (variant, mode): its memory, and either its milliseconds, per-round
  seconds and ``vs_min_gru`` (the median over rounds of its time over `BLOCK_REFERENCE`'s
  in the same mode and round, with the per-round range) or ``not_run``."""
  rows = []
  for (name, mode), mem in memory.items():
    row = dict(variant=name, mode=mode, kernel=kernels[name], **cfg, memory=mem)
    row |= dict(memory_gib=mem["total"] / GIB, budget_gib=budget_bytes / GIB)
    key, ref = (name, mode), (BLOCK_REFERENCE, mode)
    if key not in timings.seconds:
      rows.append(row | dict(ms=None, not_run=f"needs {mem['total'] / GIB:.1f} GiB"))
      continue
    row |= dict(ms=timings.median(key) * 1e3, round_s=list(timings.seconds[key]))
    if ref in timings.seconds and name != BLOCK_REFERENCE:
      ratios = timings.ratios(key, ref)
      row |= dict(vs_min_gru=timings.ratio(key, ref), vs_min_gru_range=[min(ratios), max(ratios)])
    rows.append(row)
  return rows


def block_table(
  rounds: int, quick: bool, budget_gib: float = MEMORY_BUDGET_GIB, batch: int | None = None
) -> list[dict]:
  """The ``mamba_mlstm`` section: at each length, `block_runs` timed in one set of rounds
  (``batch``: B instead of `BLOCK_SIZES`'s, on a full run)."""
  rows, budget = [], budget_gib * GIB
  for T in QUICK_BLOCK_LENGTHS if quick else BLOCK_LENGTHS:
    cfg = dict(QUICK_BLOCK_SIZES if quick else dict(BLOCK_SIZES, B=batch or BLOCK_SIZES["B"]), T=T)
    runs, kernels, memory = block_runs(cfg, budget)
    timings = interleaved(runs, rounds) if runs else Timings({})
    group = block_rows(cfg, timings, kernels, memory, budget)
    for r in group:
      took = "not run" if r["ms"] is None else f"{r['ms']:9.2f} ms"
      ratio = f"  {r['vs_min_gru']:.2f}x min_gru" if "vs_min_gru" in r else ""
      print(
        f"mamba_mlstm T={T} B={cfg['B']} {r['variant']:15} {r['mode']:7} {took}{ratio}  "
        f"{r['memory_gib']:.2f} GiB",
        flush=True,
      )
    rows += group
  return rows


def _block_cell(r: dict | None, what: str) -> str:
  """A table cell of row ``r``: its ms or ratio, or "not run (needs X GiB)"."""
  if r is None:
    return "-"
  if r["ms"] is None:
    return f"not run (needs {r['memory_gib']:.1f} GiB)" if what == "ms" else "-"
  if what == "ms":
    return f"{r['ms']:.1f}"
  if "vs_min_gru" not in r:
    return "-"
  lo, hi = r["vs_min_gru_range"]
  return f"{r['vs_min_gru']:.2f}x ({lo:.2f}-{hi:.2f})"


def block_markdown(rows: list[dict]) -> str:
  """The ``mamba_mlstm`` table: one line per (T, B, variant), both modes, memory in GiB."""
  head = ["T", "B", "variant", "kernel", "fwd ms", "fwd+bwd ms", "fwd / min_gru fwd"]
  head += ["fwd+bwd / min_gru fwd+bwd", "fwd GiB", "fwd+bwd GiB"]
  by: dict[tuple, dict[str, dict]] = {}
  for r in rows:
    by.setdefault((r["T"], r["B"], r["variant"]), {})[r["mode"]] = r
  body = []
  for (T, B, name), d in by.items():
    f, b = d.get("fwd"), d.get("fwd+bwd")
    gib = lambda r: "-" if r is None else f"{r['memory_gib']:.2f}"  # noqa: E731
    body.append(
      [T, B, name, (f or b)["kernel"], _block_cell(f, "ms"), _block_cell(b, "ms")]
      + [_block_cell(f, "ratio"), _block_cell(b, "ratio"), gib(f), gib(b)]
    )
  budget = rows[0]["budget_gib"] if rows else MEMORY_BUDGET_GIB
  note = (
    "Memory: XLA's memory_analysis of each compiled program, temp + argument + output bytes, "
    f"read before running; a program above the budget ({budget:g} GiB) is not run.\n\n"
  )
  return note + markdown_table(head, body, "rrll" + "r" * 6)
