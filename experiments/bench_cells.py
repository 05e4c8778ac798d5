"""`make bench`'s cell sections: every cell beside the LSTM and GRU; the min cells at long T.

- ``cells``: each cell, forward and forward+backward (the gradient of the summed outputs
  with respect to the params and the inputs) at M (B=32, T=128, I=128, H=256), every
  variant timed in the same interleaved rounds (`experiments.timing.interleaved`), with
  the ratio to jaxrnn's LSTM and GRU (the median over rounds of that round's ratio, and
  the range of the per-round ratios: the noise). Beside them: the nearest JAX peer where
  one exists (``flax_mgu``: `flax.linen.MGUCell` under `flax.linen.RNN`), and jaxrnn's LSTM
  through its step loop (``lstm_step_loop``, ``impl="step"``), which is what a cell without
  a hand-written whole-sequence kernel runs: the cost of having none. Target: every
  LSTM-family variant (`LSTM_FAMILY`) within `LSTM_TARGET` x the LSTM's forward+backward.
- ``min_cells``: the linear cells (`MIN_KINDS`: minGRU, minLSTM, the LRU with N = H,
  the RG-LRU with `experiments.bench_linear.rg_heads` heads, S5 with P = H) at B=32,
  I=H=256, T=1024 and 4096 (`LONG`), each through the associative scan (the parallel
  path), the sequential loop over the precomputed coefficients and its own step loop,
  beside jaxrnn's LSTM (its fused kernel), the cells' peers (memax's LRU, recurrentgemma's
  RG-LRU with both of its scans), the bare recurrence's floors and each cell's projections
  (`experiments.bench_linear`). Targets, each on a cell's default path, forward+backward:
  minGRU at T=4096 at least `MIN_GRU_TARGET` x faster than the LSTM; the LRU at most
  `LRU_TARGET` x memax's LRU and the RG-LRU at most `RG_LRU_TARGET` x recurrentgemma's
  faster scan (issue 24); every linear cell within `FLOOR_TARGET` x the `lax.scan` floor
  plus its own projections (``"{kind} floor+proj"``).

``python -m experiments.benchmark --skip speed,breakdown,unroll,remat,streaming`` runs
only these sections.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import jax

import jaxrnn
from experiments import bench_linear
from experiments.bench_linear import FLOOR_TARGET
from experiments.timing import Timings, compile_run, interleaved, markdown_table
from jaxrnn.cells import linear_scan

M = dict(B=32, T=128, I=128, H=256)
LONG = dict(B=32, I=256, H=256)
LONG_LENGTHS = (1024, 4096)
QUICK = dict(B=2, T=8, I=4, H=8)
QUICK_LENGTHS = (16,)  # one length: the quick run is a smoke test, mostly compilation
QUICK_LONG = dict(B=2, I=8, H=8)  # min_cells' quick sizes: memax's LRU and the floors need I == H
MODES = ("fwd", "fwd+bwd")
HEADS = 4  # sLSTM's heads (xLSTM's default), where H allows

# Every registered kind but the plain RNN (measured against its peers in the main sections),
# with the arguments a kind needs beyond its hidden size.
SKIP = ("elman",)
ARGUMENTS: dict[str, Callable[[int], dict[str, Any]]] = {
  "slstm": lambda h: dict(num_heads=HEADS if h % HEADS == 0 else 1),
  "mlstm": lambda h: dict(num_heads=HEADS if h % HEADS == 0 else 1),
}
CELLS: dict[str, Callable[[int], jaxrnn.Cell]] = {
  name: functools.partial(
    lambda h, kind: kind.factory(h, **ARGUMENTS.get(kind.name, lambda h: {})(h)), kind=kind
  )
  for name, kind in jaxrnn.cells.KINDS.items()
  if name not in SKIP
}
PEERS = {"mgu": "flax_mgu"}  # a cell's nearest JAX peer among the variants
LSTM_FAMILY = ("layer_norm_lstm", "peephole_lstm", "cifg_lstm", "slstm", "min_lstm")
LSTM_TARGET = 1.3  # at most this x the LSTM's forward+backward
MIN_GRU_TARGET = 5.0  # at least this x faster than the LSTM, forward+backward at T=4096
LRU_TARGET = 0.5  # at most this x memax's LRU, forward+backward
RG_LRU_TARGET = 1.0  # at most this x recurrentgemma's faster scan, forward+backward
PEER_TARGETS = {"lru": LRU_TARGET, "rg_lru": RG_LRU_TARGET}
MIN_KINDS = bench_linear.LINEAR_KINDS
MIN_FACTORIES: dict[str, Callable[..., jaxrnn.Cell]] = {  # (hidden size, log space) -> cell
  "min_gru": lambda h, log: jaxrnn.min_gru(h, log_space=log),
  "min_lstm": lambda h, log: jaxrnn.min_lstm(h, log_space=log),
  "lru": lambda h, log: jaxrnn.lru(h, state_size=h),
  "rg_lru": lambda h, log: jaxrnn.rg_lru(h, num_heads=bench_linear.rg_heads(h)),
  "s5": lambda h, log: jaxrnn.s5(h, state_size=h),
}
Build = Callable[[dict, jax.Array], tuple[Callable, Any, str]]


# ----------------------------------------------------------------------------- variants


@contextlib.contextmanager
def linear_method(method: str | None) -> Iterator[None]:
  """`linear_scan`'s method for this backend set to ``method`` while a call is traced."""
  backend = jax.default_backend()
  old = linear_scan.METHODS.get(backend)
  if method is not None:
    linear_scan.METHODS[backend] = method
  try:
    yield
  finally:
    linear_scan.METHODS.pop(backend, None)
    if old is not None:
      linear_scan.METHODS[backend] = old


def kernel_name(cell: jaxrnn.Cell, impl: str, method: str | None) -> str:
  """What `jaxrnn.scan` runs for ``cell``: the step loop, a linear scan, or a fused kernel."""
  if impl == "step" or (cell.sequence is None and cell.coefficients is None):
    return "step loop (autodiff)"
  if cell.name in (*bench_linear.LINEAR_KINDS, "mamba") or cell.coefficients is not None:
    return f"linear scan, {method or linear_scan.method()}"
  return "fused, hand-written VJP"


def jaxrnn_variant(factory: Callable[[int], jaxrnn.Cell], impl="auto", method=None) -> Build:
  """A jaxrnn variant: ``build(cfg, key) -> (fwd, params, kernel)``, traced under ``method``."""

  def build(cfg, key):
    cell = factory(cfg["H"])
    fwd = lambda p, x: jaxrnn.scan(cell, p, x, impl=impl)[1]  # noqa: E731
    return fwd, cell.init(key, cfg["I"]), kernel_name(cell, impl, method)

  build.method = method
  return build


def flax_mgu(cfg, key):
  """`flax.linen.MGUCell` over the sequence with `flax.linen.RNN` (the peer of ``mgu``)."""
  import flax.linen as nn

  model = nn.RNN(nn.MGUCell(cfg["H"]))
  params = model.init(key, jax.numpy.zeros((cfg["B"], cfg["T"], cfg["I"])))
  return model.apply, params, "flax.linen.RNN (lax.scan, autodiff)"


def cell_variants() -> dict[str, Build]:
  """The ``cells`` section's variants: every cell, the LSTM's step loop, flax's MGU."""
  out = {name: jaxrnn_variant(f) for name, f in CELLS.items()}
  return out | {"lstm_step_loop": jaxrnn_variant(CELLS["lstm"], "step"), "flax_mgu": flax_mgu}


def min_variants(
  log_spaces=(False,), methods=linear_scan.METHOD_NAMES, kinds=MIN_KINDS, floors=True
) -> dict[str, Build]:
  """The ``min_cells`` variants: each of ``kinds`` by ``methods`` and its step loop
  (`MIN_FACTORIES`; ``log_spaces`` for minGRU and minLSTM), their peers
  (`experiments.bench_linear.PEERS`), with ``floors`` the floors and each kind's
  projections (`experiments.bench_linear`); the LSTM."""
  out = {}
  for kind in kinds:
    for log in log_spaces if kind in ("min_gru", "min_lstm") else (False,):
      name = kind + ("_log" if log else "")
      factory = functools.partial(MIN_FACTORIES[kind], log=log)
      out |= {f"{name} {m}": jaxrnn_variant(factory, method=m) for m in methods}
      out[f"{name} step"] = jaxrnn_variant(factory, "step")
  out |= bench_linear.peer_variants(kinds)
  out |= bench_linear.floor_variants(kinds) if floors else {}
  return out | {"lstm": jaxrnn_variant(CELLS["lstm"])}


def compile_variants(variants: dict[str, Build], cfg: dict, modes=None, seed=0):
  """``({(variant, mode): run}, {variant: kernel})``, every run compiled, one input ``xs``;
  ``modes`` default: `MODES`."""
  modes = MODES if modes is None else modes
  k_p, k_x = jax.random.split(jax.random.key(seed))
  xs = jax.random.normal(k_x, (cfg["B"], cfg["T"], cfg["I"]))
  runs, kernels = {}, {}
  for name, build in variants.items():
    with linear_method(getattr(build, "method", None)):
      fwd, params, kernels[name] = build(cfg, k_p)
      run = getattr(build, "run", compile_run)  # how the variant is timed
      for mode in modes:
        runs[(name, mode)] = run(fwd, params, xs, mode)
  return runs, kernels


# ----------------------------------------------------------------------------- rows


def versus(timings: Timings, key: Hashable, reference: Hashable, field: str) -> dict[str, Any]:
  """``field``: the median per-round ratio of ``key`` to ``reference``; ``field_range``: the
  smallest and largest per-round ratio (how noisy the machine was)."""
  ratios = timings.ratios(key, reference)
  return {field: timings.ratio(key, reference), f"{field}_range": [min(ratios), max(ratios)]}


def cells_rows(cname: str, cfg: dict, timings: Timings, kernels: dict[str, str]) -> list[dict]:
  """One row per (variant, mode) of the ``cells`` section from timings keyed that way."""
  rows = []
  for name, mode in timings.seconds:
    row = dict(config=cname, variant=name, mode=mode, kernel=kernels[name], **cfg)
    row |= dict(ms=timings.median((name, mode)) * 1e3, round_s=list(timings.seconds[(name, mode)]))
    row |= versus(timings, (name, mode), ("lstm", mode), "vs_lstm")
    row |= versus(timings, (name, mode), ("gru", mode), "vs_gru")
    if (PEERS.get(name), mode) in timings.seconds:
      row |= versus(timings, (name, mode), (PEERS[name], mode), "vs_peer")
    wanted = name in LSTM_FAMILY and mode == "fwd+bwd"
    row["target_met"] = row["vs_lstm"] <= LSTM_TARGET if wanted else None
    rows.append(row)
  return rows


def min_rows(T: int, cfg: dict, timings: Timings, kernels: dict[str, str]) -> list[dict]:
  """One row per (variant, mode) of the ``min_cells`` section at length ``T``.

  A cell's row (``"{kind} {method}"``, ``"{kind} step"``) has ``vs_step`` against its own
  step loop, ``vs_peer`` against its kind's faster peer (``peer``,
  `experiments.bench_linear.PEERS`) and ``vs_floor`` against ``"{kind} floor+proj"``, where
  those were timed; ``targets`` are `min_targets`, and ``target_met`` is whether all of them
  are met (None: no target).
  """
  rows = []
  for name, mode in timings.seconds:
    row = dict(variant=name, mode=mode, kernel=kernels[name], **cfg)
    row |= dict(ms=timings.median((name, mode)) * 1e3, round_s=list(timings.seconds[(name, mode)]))
    row |= versus(timings, (name, mode), ("lstm", mode), "vs_lstm")
    kind, how = name.rsplit(" ", 1) if " " in name else (name, "")
    if how in (*linear_scan.METHOD_NAMES, "step"):
      row |= _min_comparisons(timings, kind, name, mode)
    row["targets"] = min_targets(T, name, mode, row)
    row["target_met"] = all(row["targets"].values()) if row["targets"] else None
    rows.append(row)
  return rows


def _min_comparisons(timings: Timings, kind: str, name: str, mode: str) -> dict[str, Any]:
  """A cell row's ``vs_step``, ``peer`` and ``vs_peer``, ``vs_floor``, where timed."""
  out, base_kind = {}, kind.removesuffix("_log")
  references = {"vs_step": f"{kind} step", "vs_floor": f"{base_kind} floor+proj"}
  peer = bench_linear.best_peer(timings, base_kind, mode)
  references |= {"vs_peer": peer} if peer else {}
  out |= dict(peer=peer) if peer else {}
  for field, reference in references.items():
    if (reference, mode) in timings.seconds:
      out |= versus(timings, (name, mode), (reference, mode), field)
  return out


def min_targets(T: int, name: str, mode: str, row: dict) -> dict[str, bool]:
  """The targets a ``min_cells`` row carries, each met or not: on a cell's default path
  (`linear_scan.method`), forward+backward, minGRU >= `MIN_GRU_TARGET` x faster than the
  LSTM at T=4096, `PEER_TARGETS` against the faster peer, and `FLOOR_TARGET` x its floor
  plus projections."""
  kind, _, how = name.rpartition(" ")
  if mode != "fwd+bwd" or how != linear_scan.method():
    return {}
  targets = {}
  if kind == "min_gru" and T == 4096:
    targets[f"LSTM / it >= {MIN_GRU_TARGET:g}x"] = 1 / row["vs_lstm"] >= MIN_GRU_TARGET
  if kind in PEER_TARGETS and "vs_peer" in row:
    targets[f"peer <= {PEER_TARGETS[kind]:g}x"] = row["vs_peer"] <= PEER_TARGETS[kind]
  if "vs_floor" in row:
    targets[f"floor+proj <= {FLOOR_TARGET:g}x"] = row["vs_floor"] <= FLOOR_TARGET
  return targets


def cells_table(rounds: int, quick: bool) -> list[dict]:
  """The ``cells`` section: every variant and mode at M (QUICK sizes) in one set of rounds."""
  cname, cfg = ("quick", QUICK) if quick else ("M", M)
  runs, kernels = compile_variants(cell_variants(), cfg)
  rows = cells_rows(cname, cfg, interleaved(runs, rounds), kernels)
  for r in rows:
    print(
      f"cells {cname} {r['variant']:16} {r['mode']:7} {r['ms']:9.2f} ms  {r['vs_lstm']:.2f}x LSTM",
      flush=True,
    )
  return rows


_MIN_PRINTED = {"vs_step": "its step loop", "vs_peer": "peer", "vs_floor": "floor+proj"}


def min_table(rounds: int, quick: bool, variants: dict[str, Build] | None = None) -> list[dict]:
  """The ``min_cells`` section: at each length, every variant and mode in one set of rounds."""
  rows = []
  for T in QUICK_LENGTHS if quick else LONG_LENGTHS:
    cfg = dict(QUICK_LONG, T=T) if quick else dict(LONG, T=T)
    runs, kernels = compile_variants(variants or min_variants(), cfg)
    timings = bench_linear.with_floor_sums(interleaved(runs, rounds), kernels)
    group = min_rows(T, cfg, timings, kernels)
    for r in group:
      more = [f"  {r[f]:.2f}x {what}" for f, what in _MIN_PRINTED.items() if f in r]
      print(
        f"min_cells T={T} {r['variant']:26} {r['mode']:7} {r['ms']:9.2f} ms  "
        f"{r['vs_lstm']:.2f}x LSTM{''.join(more)}",
        flush=True,
      )
    rows += group
  return rows


# ----------------------------------------------------------------------------- tables


def _ratio(r: dict | None, field: str) -> str:
  if r is None or field not in r:
    return "-"
  lo, hi = r[f"{field}_range"]
  return f"{r[field]:.2f}x ({lo:.2f}-{hi:.2f})"


def _target(r: dict) -> str:
  return {None: "", True: "met", False: "MISSED"}[r["target_met"]]


def _by_variant(rows: list[dict], *key: str) -> dict[tuple, dict[str, dict]]:
  out: dict[tuple, dict[str, dict]] = {}
  for r in rows:
    out.setdefault(tuple(r[k] for k in key), {})[r["mode"]] = r
  return out


def cells_markdown(rows: list[dict]) -> str:
  """The ``cells`` table: one line per variant, both modes, ratios with their range."""
  head = ["config", "cell", "kernel", "fwd ms", "fwd+bwd ms", "fwd / LSTM", "fwd+bwd / LSTM"]
  head += ["fwd+bwd / GRU", "fwd+bwd / peer", f"target (LSTM family <= {LSTM_TARGET}x)"]
  body = []
  for (cname, name), d in _by_variant(rows, "config", "variant").items():
    f, b = d.get("fwd"), d.get("fwd+bwd")
    any_row = f or b
    body.append(
      [cname, name, any_row["kernel"], f"{f['ms']:.1f}" if f else "-"]
      + [f"{b['ms']:.1f}" if b else "-", _ratio(f, "vs_lstm"), _ratio(b, "vs_lstm")]
      + [_ratio(b, "vs_gru"), _peer(b), _target(b) if b else ""]
    )
  note = "Ratios: median over rounds of that round's ratio (in brackets: the per-round range).\n\n"
  return note + markdown_table(head, body, "lll" + "r" * 7)


def _peer(r: dict | None) -> str:
  return f"{_ratio(r, 'vs_peer')} ({PEERS[r['variant']]})" if r and "vs_peer" in r else "-"


def min_markdown(rows: list[dict]) -> str:
  """The ``min_cells`` table: one line per (T, variant), both modes, each target by name."""
  head = ["T", "variant", "kernel", "fwd ms", "fwd+bwd ms", "fwd / own step loop"]
  head += ["fwd+bwd / own step loop", "fwd+bwd / LSTM", "LSTM fwd+bwd / it", "fwd+bwd / peer"]
  head += ["fwd / floor+proj", "fwd+bwd / floor+proj", "targets (fwd+bwd, default path)"]
  body = []
  for (T, name), d in _by_variant(rows, "T", "variant").items():
    f, b = d.get("fwd"), d.get("fwd+bwd")
    body.append(
      [T, name, (f or b)["kernel"], f"{f['ms']:.1f}" if f else "-"]
      + [f"{b['ms']:.1f}" if b else "-", _ratio(f, "vs_step"), _ratio(b, "vs_step")]
      + [_ratio(b, "vs_lstm"), f"{1 / b['vs_lstm']:.1f}x" if b else "-"]
      + [f"{_ratio(b, 'vs_peer')} ({b['peer']})" if b and "vs_peer" in b else "-"]
      + [_ratio(f, "vs_floor"), _ratio(b, "vs_floor"), _targets(b) if b else ""]
    )
  return markdown_table(head, body, "rll" + "r" * 10)


def _targets(r: dict) -> str:
  """Each target of a row, met or MISSED (a row saved before ``targets``: `_target`)."""
  if "targets" not in r:
    return _target(r)
  return "; ".join(f"{k}: {'met' if ok else 'MISSED'}" for k, ok in r["targets"].items())
