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
- ``min_cells``: minGRU, minLSTM and the LRU (N = H) at B=32, I=H=256, T=1024 and 4096
  (`LONG`), each through the associative scan (the parallel path), the sequential loop over
  the precomputed coefficients and its own step loop, beside jaxrnn's LSTM (its fused
  kernel) and, for the LRU, memax's (``memax_lru``, `MIN_PEERS`). Targets: minGRU's default
  path forward+backward at T=4096 at least `MIN_GRU_TARGET` x faster than the LSTM; the
  LRU's default path forward+backward at most `LRU_TARGET` x memax's LRU (issue 24).

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
from experiments.timing import Timings, compile_run, interleaved, markdown_table
from jaxrnn.cells import linear_scan

M = dict(B=32, T=128, I=128, H=256)
LONG = dict(B=32, I=256, H=256)
LONG_LENGTHS = (1024, 4096)
QUICK = dict(B=2, T=8, I=4, H=8)
QUICK_LENGTHS = (16, 32)
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
MIN_PEERS = {"lru": "memax_lru"}  # a min_cells kind's peer, timed in the same rounds
LRU_TARGET = 0.5  # at most this x memax's LRU, forward+backward
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
  if cell.name in ("min_gru", "min_lstm") or cell.coefficients is not None:
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


def memax_lru(cfg, key):
  """memax's LRU (equinox, its own associative scan) with N = H = I, vmapped over the batch
  (the peer of ``lru``); the gradient is with respect to its eight weights."""
  import equinox as eqx
  import jax.numpy as jnp
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


def cell_variants() -> dict[str, Build]:
  """The ``cells`` section's variants: every cell, the LSTM's step loop, flax's MGU."""
  out = {name: jaxrnn_variant(f) for name, f in CELLS.items()}
  return out | {"lstm_step_loop": jaxrnn_variant(CELLS["lstm"], "step"), "flax_mgu": flax_mgu}


def min_variants(
  log_spaces=(False,), methods=linear_scan.METHOD_NAMES, kinds=("min_gru", "min_lstm", "lru")
) -> dict[str, Build]:
  """The ``min_cells`` variants: each min cell by ``methods`` and its step loop (the LRU
  with N = H, and its peer, `MIN_PEERS`); the LSTM."""
  out = {}
  for kind in kinds:
    for log in log_spaces if kind != "lru" else (False,):
      name = kind + ("_log" if log else "")
      factory = lambda h, k=kind, log=log: getattr(jaxrnn, k)(h, log_space=log)  # noqa: E731
      if kind == "lru":
        factory = lambda h: jaxrnn.lru(h, state_size=h)  # noqa: E731
      out |= {f"{name} {m}": jaxrnn_variant(factory, method=m) for m in methods}
      out[f"{name} step"] = jaxrnn_variant(factory, "step")
    out |= {MIN_PEERS[kind]: memax_lru} if kind in MIN_PEERS else {}
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
      for mode in modes:
        runs[(name, mode)] = compile_run(fwd, params, xs, mode)
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

  ``vs_step`` is against the variant's own step loop, ``vs_peer`` against its kind's peer
  (`MIN_PEERS`); the target rows are minGRU's default method (`linear_scan.method`),
  forward+backward, at T=4096 (against the LSTM), and the LRU's, forward+backward (against
  its peer, `LRU_TARGET`).
  """
  rows, default = [], f"min_gru {linear_scan.method()}"
  for name, mode in timings.seconds:
    row = dict(variant=name, mode=mode, kernel=kernels[name], **cfg)
    row |= dict(ms=timings.median((name, mode)) * 1e3, round_s=list(timings.seconds[(name, mode)]))
    row |= versus(timings, (name, mode), ("lstm", mode), "vs_lstm")
    kind = name.rsplit(" ", 1)[0]
    step = kind + " step"
    row |= versus(timings, (name, mode), (step, mode), "vs_step") if step in kernels else {}
    if (MIN_PEERS.get(kind), mode) in timings.seconds:
      row |= versus(timings, (name, mode), (MIN_PEERS[kind], mode), "vs_peer")
    wanted = name == default and mode == "fwd+bwd" and T == 4096
    row["target_met"] = 1 / row["vs_lstm"] >= MIN_GRU_TARGET if wanted else None
    if name == f"lru {linear_scan.method()}" and mode == "fwd+bwd" and "vs_peer" in row:
      row["target_met"] = row["vs_peer"] <= LRU_TARGET
    rows.append(row)
  return rows


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


def min_table(rounds: int, quick: bool, variants: dict[str, Build] | None = None) -> list[dict]:
  """The ``min_cells`` section: at each length, every variant and mode in one set of rounds."""
  rows = []
  for T in QUICK_LENGTHS if quick else LONG_LENGTHS:
    cfg = dict(QUICK, T=T) if quick else dict(LONG, T=T)
    runs, kernels = compile_variants(variants or min_variants(), cfg)
    group = min_rows(T, cfg, interleaved(runs, rounds), kernels)
    for r in group:
      step = f"  {r['vs_step']:.2f}x its step loop" if "vs_step" in r else ""
      print(
        f"min_cells T={T} {r['variant']:22} {r['mode']:7} {r['ms']:9.2f} ms  "
        f"{r['vs_lstm']:.2f}x LSTM{step}",
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
  """The ``min_cells`` table: one line per (T, variant), both modes."""
  head = ["T", "variant", "kernel", "fwd ms", "fwd+bwd ms", "fwd / own step loop"]
  head += ["fwd+bwd / own step loop", "fwd+bwd / LSTM", "LSTM fwd+bwd / it", "fwd+bwd / peer"]
  head += [f"target (minGRU >= {MIN_GRU_TARGET:g}x faster, T=4096; lru <= {LRU_TARGET:g}x peer)"]
  body = []
  for (T, name), d in _by_variant(rows, "T", "variant").items():
    f, b = d.get("fwd"), d.get("fwd+bwd")
    peer = MIN_PEERS.get(name.rsplit(" ", 1)[0])
    body.append(
      [T, name, (f or b)["kernel"], f"{f['ms']:.1f}" if f else "-"]
      + [f"{b['ms']:.1f}" if b else "-", _ratio(f, "vs_step"), _ratio(b, "vs_step")]
      + [_ratio(b, "vs_lstm"), f"{1 / b['vs_lstm']:.1f}x" if b else "-"]
      + [f"{_ratio(b, 'vs_peer')} ({peer})" if b and "vs_peer" in b else "-"]
      + [_target(b) if b else ""]
    )
  return markdown_table(head, body, "rll" + "r" * 8)
