"""The benchmark's timer, row arithmetic and results file, on fake timings; one smoke run.

No test asserts a real timing: the numbers checked are worked out by hand from per-round
seconds the test chooses.
"""

import json
import tempfile

import pytest

from experiments import bench_cells, bench_linear, benchmark
from experiments.timing import Timings, interleaved, markdown_table

CEILING_FLOPS = 2 * 2048**3  # 2**34


def test_interleaved_keeps_every_rounds_seconds_in_a_shuffled_order():
  now, order = [0.0], []
  durations = {"a": [1.0, 2.0, 3.0, 4.0], "b": [10.0, 20.0, 30.0, 40.0], "c": [5.0] * 4}

  def run(name):
    def call():
      order.append(name)
      now[0] += durations[name][sum(n == name for n in order) - 1]

    return call

  timings = interleaved({k: run(k) for k in durations}, 4, clock=lambda: now[0])
  assert timings.seconds == durations
  rounds = [tuple(order[i : i + 3]) for i in range(0, 12, 3)]
  assert all(sorted(r) == ["a", "b", "c"] for r in rounds)
  assert len(set(rounds)) > 1  # the order is not fixed


def test_median_and_ratio_are_over_rounds():
  t = Timings({"a": [1.0, 4.0, 9.0], "b": [2.0, 8.0, 3.0]})
  assert t.median("a") == 4.0
  assert t.ratio("a", "b") == 0.5  # per-round 0.5, 0.5, 3.0; a ratio of medians says 4/3


def test_speed_rows_from_known_rounds():
  cfg = dict(B=1, T=2, I=3, H=5)  # LSTM forward: 2 * B*T * (I+H) * 4H = 640 FLOPs
  t = Timings(
    {"jaxrnn": [1.0, 4.0, 2.0], "flax": [3.0] * 3, "torch": [2.0, 4.0, 8.0], "_ceiling": [1, 2, 4]}
  )
  rows = {r["impl"]: r for r in benchmark.speed_rows("lstm", "x", "fwd", cfg, t, ["flax"])}
  assert set(rows) == {"jaxrnn", "flax", "torch"}
  j = rows["jaxrnn"]
  assert j["ms"] == 2000.0 and j["best_jax_peer"] == "flax"
  assert j["vs_torch"] == pytest.approx(0.5)  # rounds: 1/2, 4/4, 2/8
  assert j["vs_best_jax_peer"] == pytest.approx(2 / 3)  # 1/3, 4/3, 2/3
  assert j["gflops"] == pytest.approx(640 / 2.0 / 1e9)
  assert j["ceiling_gflops"] == pytest.approx(CEILING_FLOPS / 2.0 / 1e9)
  assert j["ceiling_fraction"] == pytest.approx(640 / CEILING_FLOPS)  # ceiling/row: 1, 1/2, 2
  grad = benchmark.speed_rows("gru", "x", "fwd+bwd", cfg, t, ["flax"])[0]
  assert grad["gflops"] == pytest.approx(3 * 2 * 2 * 8 * 15 / 2.0 / 1e9)  # 3x the forward


def test_flop_counts_by_hand():
  assert benchmark.flops("lstm", B=1, T=1, I=3, H=5) == 2 * 8 * 20
  assert benchmark.flops("gru", B=2, T=3, I=3, H=5) == 2 * 6 * 8 * 15
  assert benchmark.breakdown_flops(B=1, T=2, I=3, H=5) == {
    "fwd": 640,
    "fwd_save": 640,
    "bwd": 1280,
    "bwd_matmuls": 880,  # x.T @ dz, h.T @ dz, dz @ w_ih.T: 2 * T*B * 4H * (I + H + I)
    "recurrent_matmul": 400,  # h @ w_hh: 2 * T*B * H * 4H
    "gate_math": 0,
  }


def test_breakdown_unroll_and_remat_rows_from_known_rounds():
  parts = benchmark.breakdown_flops(B=1, T=2, I=3, H=5)
  t = Timings({**{p: [1e-6, 3e-6, 2e-6] for p in parts}, "_ceiling": [1.0] * 3})
  rows = {r["part"]: r for r in benchmark.breakdown_rows("x", dict(B=1, T=2, I=3, H=5), t)}
  assert rows["gate_math"]["ns_per_step"] == pytest.approx(1000.0)  # 2 us over T=2 steps
  assert rows["bwd"]["gflops"] == pytest.approx(0.64)  # 1280 FLOPs in 2 us
  u = Timings({(1, "fwd"): [2.0, 2.0, 4.0], (4, "fwd"): [1.0, 3.0, 1.0]})
  by = {r["unroll"]: r for r in benchmark.unroll_rows("M", u)}
  assert by[4]["vs_unroll_1"] == 0.5 and by[1]["vs_unroll_1"] == 1.0 and by[4]["ms"] == 1000.0
  mem = {None: 4 * 2**20, True: 2**20}
  row = benchmark.remat_row(64, 2, 8, 4, mem, Timings({None: [1.0, 2.0, 4.0], True: [3, 3, 3]}))
  assert (row["plain_mb"], row["memory_ratio"], row["chunk"]) == (4.0, 0.25, 8)
  assert row["time_ratio"] == 1.5 and row["remat_s"] == 3.0


def test_markdown_table():
  assert markdown_table(["a", "b"], [[1, "x"]], "lr") == "| a | b |\n| --- | ---: |\n| 1 | x |"


# ----------------------------------------------------------------------------- results file


def _fake_sections(monkeypatch):
  """Speed and breakdown sections that return one row per config, without timing anything."""

  def speed_table(configs, kinds, modes, rounds, peers):
    return [
      dict(kind=k, config=c, mode=m, impl=i, ms=1.0, vs_torch=1.0, vs_best_jax_peer=None)
      | dict(best_jax_peer=None, gflops=1.0, ceiling_gflops=2.0, ceiling_fraction=0.5)
      for k in kinds
      for c in configs
      for m in modes
      for i in ("jaxrnn", "torch")
    ]

  def breakdown_table(configs, rounds):
    row = dict(part="fwd", ms=1.0, gflops=1.0, ceiling_fraction=0.5, ns_per_step=1.0)
    return [dict(config=c, **row) for c in configs]

  monkeypatch.setattr(benchmark, "speed_table", speed_table)
  monkeypatch.setattr(benchmark, "breakdown_table", breakdown_table)


SKIP = "unroll,remat,streaming,cells,min_cells,mamba_mlstm"
FLAGS = ["--kinds", "lstm", "--modes", "fwd", "--skip", SKIP]


def test_a_partial_rerun_keeps_earlier_rows_and_their_provenance(tmp_path, monkeypatch):
  _fake_sections(monkeypatch)
  out = str(tmp_path)
  benchmark.main([*FLAGS, "--configs", "S,M", "--rounds", "7", "--out", out])
  benchmark.main([*FLAGS, "--configs", "M", "--rounds", "2", "--out", out])
  saved = json.loads((tmp_path / "benchmark.json").read_text())
  for section in ("speed", "breakdown"):
    rounds = {r["config"]: r["provenance"]["rounds"] for r in saved[section]}
    assert rounds == {"S": 7, "M": 2}, section
  assert len(saved["speed"]) == 4
  md = (tmp_path / "benchmark.md").read_text()
  assert "7 rounds" in md and "2 rounds" in md


OLD = dict(kind="lstm", config="S", mode="fwd", impl="torch", ms=5.0, vs_torch=1.0)
OLD |= dict(vs_best_jax_peer=None, best_jax_peer=None, ceiling_fraction=0.1, ceiling_gflops=1)
OLD_FILE = dict(machine=dict(processor="Old CPU", cpus=64, jax="0.1"), rounds=9)
OLD_FILE |= dict(speed=[OLD, {**OLD, "impl": "jaxrnn", "ms": 4.0}])  # saved before provenance


def test_rows_saved_before_provenance_keep_their_files_header(tmp_path, monkeypatch):
  _fake_sections(monkeypatch)
  (tmp_path / "benchmark.json").write_text(json.dumps(OLD_FILE))
  benchmark.main([*FLAGS, "--configs", "M", "--out", str(tmp_path)])
  saved = json.loads((tmp_path / "benchmark.json").read_text())
  kept = next(r for r in saved["speed"] if r["config"] == "S" and r["impl"] == "torch")
  assert kept["ms"] == 5.0
  assert kept["provenance"]["processor"] == "Old CPU" and kept["provenance"]["rounds"] == 9


def test_a_quick_run_stays_out_of_measured_results(tmp_path, monkeypatch):
  _fake_sections(monkeypatch)
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where a quick run writes by default
  real = tmp_path / "results" / "benchmark.json"
  real.parent.mkdir()
  real.write_text(json.dumps(OLD_FILE))
  before = real.read_text()
  benchmark.main(["--tiny", *FLAGS])  # the deprecated name of --quick; no --out
  assert real.read_text() == before
  for out in ("results", str(real.parent)):
    with pytest.raises(SystemExit):
      benchmark.main(["--quick", *FLAGS, "--out", out])
  elsewhere = tmp_path / "copy"
  elsewhere.mkdir()
  (elsewhere / "benchmark.json").write_text(before)
  with pytest.raises(SystemExit):  # a folder holding rows of a full run
    benchmark.main(["--quick", "--fresh", *FLAGS, "--out", str(elsewhere)])
  assert real.read_text() == before == (elsewhere / "benchmark.json").read_text()


def test_a_full_run_drops_quick_rows(tmp_path, monkeypatch):
  _fake_sections(monkeypatch)
  benchmark.main(["--quick", *FLAGS, "--out", str(tmp_path)])
  benchmark.main([*FLAGS, "--configs", "S", "--out", str(tmp_path)])
  saved = json.loads((tmp_path / "benchmark.json").read_text())
  assert {r["config"] for r in saved["speed"]} == {"S"}


def test_quick_run_end_to_end(tmp_path):
  flags = ["--quick", "--kinds", "lstm", "--modes", "fwd", "--rounds", "1", "--peers", "equinox"]
  result = benchmark.main([*flags, "--skip", SKIP, "--out", str(tmp_path)])
  assert (tmp_path / "benchmark.png").stat().st_size > 1000
  assert "| lstm | quick | fwd |" in (tmp_path / "benchmark.md").read_text()
  assert {r["impl"] for r in result["speed"]} == {"jaxrnn", "torch", "equinox"}
  assert all(r["provenance"]["quick"] for r in result["speed"])
  assert len(result["breakdown"]) == 6  # runs the private kernel pieces it times


# ----------------------------------------------------------------------------- cell sections


def test_cells_rows_from_known_rounds():
  modes = ("fwd", "fwd+bwd")
  sec = {"lstm": [2.0, 4.0, 2.0], "gru": [1.0, 2.0, 4.0], "peephole_lstm": [2.0, 6.0, 3.0]}
  sec |= {"mgu": [1.0, 1.0, 1.0], "flax_mgu": [2.0, 4.0, 1.0]}
  t = Timings({(n, m): s for n, s in sec.items() for m in modes})
  kernels = dict.fromkeys(sec, "k")
  rows = {(r["variant"], r["mode"]): r for r in bench_cells.cells_rows("M", {}, t, kernels)}
  p = rows[("peephole_lstm", "fwd+bwd")]
  assert p["vs_lstm"] == 1.5 and p["vs_lstm_range"] == [1.0, 1.5]  # rounds: 1, 1.5, 1.5
  assert p["vs_gru"] == 2.0 and p["ms"] == 3000.0  # rounds: 2, 3, 0.75
  assert p["target_met"] is False  # 1.5 > 1.3
  assert rows[("peephole_lstm", "fwd")]["target_met"] is None  # the target is fwd+bwd
  assert rows[("gru", "fwd+bwd")]["target_met"] is None  # not an LSTM variant
  assert rows[("mgu", "fwd")]["vs_peer"] == 0.5 and "vs_peer" not in p  # rounds: 1/2, 1/4, 1
  md = bench_cells.cells_markdown(list(rows.values()))
  assert "| M | peephole_lstm | k | 3000.0 | 3000.0 | 1.50x (1.00-1.50) | 1.50x (1.00-1.50) |" in md
  assert "| 0.50x (0.25-1.00) (flax_mgu) |" in md and "| - | MISSED |" in md


def test_min_rows_from_known_rounds():
  default = f"min_gru {bench_cells.linear_scan.method()}"
  sec = {default: [1.0, 1.0, 2.0], "min_gru step": [4.0, 2.0, 4.0], "lstm": [6.0, 5.0, 8.0]}
  t = Timings({(n, "fwd+bwd"): s for n, s in sec.items()})
  rows = {r["variant"]: r for r in bench_cells.min_rows(4096, {}, t, dict.fromkeys(sec, "k"))}
  d = rows[default]
  assert d["vs_step"] == 0.5 and d["vs_step_range"] == [0.25, 0.5]  # 1/4, 1/2, 2/4
  assert d["vs_lstm"] == pytest.approx(1 / 5) and d["target_met"] is True  # 6x, 5x, 4x faster
  assert "vs_step" not in rows["lstm"] and rows["min_gru step"]["target_met"] is None
  assert bench_cells.min_rows(1024, {}, t, dict.fromkeys(sec, "k"))[0]["target_met"] is None


def test_linear_rows_from_known_rounds():
  """rg_lru against the faster of recurrentgemma's scans, and each cell against the floor
  plus its own projections, summed per round: worked out by hand."""
  default = bench_cells.linear_scan.method()
  sec = {f"rg_lru {default}": [2.0, 3.0, 4.0], f"s5 {default}": [3.0, 6.0, 4.0]}
  sec |= {"recurrentgemma_linear": [4.0, 4.0, 4.0], "recurrentgemma_assoc": [2.0, 6.0, 2.0]}
  sec |= {"floor lax.scan": [1.0, 1.0, 0.5], "rg_lru proj": [0.5] * 3, "s5 proj": [1.0, 0.5, 0.5]}
  sec |= {"lstm": [1.0, 1.0, 1.0]}
  kernels = dict.fromkeys(sec, "k")
  t = bench_linear.with_floor_sums(Timings({(n, "fwd+bwd"): s for n, s in sec.items()}), kernels)
  rows = {r["variant"]: r for r in bench_cells.min_rows(1024, dict(T=1024), t, kernels)}
  rg, s5 = rows[f"rg_lru {default}"], rows[f"s5 {default}"]
  assert rg["peer"] == "recurrentgemma_assoc"  # median 2 s against 4 s
  assert rg["vs_peer"] == 1.0 and rg["vs_peer_range"] == [0.5, 2.0]  # rounds: 1, 0.5, 2
  assert rows["rg_lru floor+proj"]["round_s"] == [1.5, 1.5, 1.0]
  assert rg["vs_floor"] == pytest.approx(2.0)  # rounds: 2/1.5, 3/1.5, 4/1
  assert rg["targets"] == {"peer <= 1x": True, "floor+proj <= 3x": True} and rg["target_met"]
  assert s5["vs_floor"] == 4.0 and s5["vs_floor_range"] == [1.5, 4.0]  # 3/2, 6/1.5, 4/1
  assert s5["targets"] == {"floor+proj <= 3x": False} and "peer" not in s5
  assert rows["floor lax.scan"]["target_met"] is None and "vs_floor" not in rows["s5 proj"]
  md = bench_cells.min_markdown(list(rows.values()))
  assert "| 1.00x (0.50-2.00) (recurrentgemma_assoc) | - | 2.00x (1.33-4.00) |" in md
  assert "| peer <= 1x: met; floor+proj <= 3x: met |" in md
  assert "| 4.00x (1.50-4.00) | floor+proj <= 3x: MISSED |" in md
  sums = "| 1024 | s5 floor+proj | sum per round: floor lax.scan + s5 proj | - | 1500.0 |"
  assert sums in md  # per round 2, 1.5 and 1 s


def test_cell_sections_quick_end_to_end(tmp_path, monkeypatch):
  cells = bench_cells.cell_variants()
  monkeypatch.setattr(bench_cells, "cell_variants", lambda: {k: cells[k] for k in ("lstm", "gru")})
  default = bench_cells.linear_scan.method()
  few = bench_cells.min_variants(methods=(default,), kinds=("min_gru", "rg_lru"))
  monkeypatch.setattr(bench_cells, "min_variants", lambda: few)
  monkeypatch.setattr(bench_cells, "MODES", ("fwd+bwd",))
  skip = "speed,breakdown,unroll,remat,streaming,mamba_mlstm"
  result = benchmark.main(["--quick", "--rounds", "1", "--skip", skip, "--out", str(tmp_path)])
  assert {(r["variant"], r["mode"]) for r in result["cells"]} == {
    ("lstm", "fwd+bwd"),
    ("gru", "fwd+bwd"),
  }
  cell_rows = {f"{k} {m}" for k in ("min_gru", "rg_lru") for m in (default, "step")}
  floors = {"floor lax.scan", "floor associative_scan"}
  floors |= {f"{k} {f}" for k in ("min_gru", "rg_lru") for f in ("proj", "floor+proj")}
  peers = {"recurrentgemma_linear", "recurrentgemma_assoc"}
  rows = {r["variant"]: r for r in result["min_cells"]}
  assert set(rows) == cell_rows | floors | peers | {"lstm"}
  assert rows[f"rg_lru {default}"]["kernel"] == f"linear scan, {default}"
  assert rows["min_gru step"]["kernel"] == "step loop (autodiff)"
  assert rows["lstm"]["kernel"] == "fused, hand-written VJP"
  assert set(rows[f"rg_lru {default}"]["targets"]) == {"peer <= 1x", "floor+proj <= 3x"}
  assert rows[f"rg_lru {default}"]["peer"] in peers
  md = (tmp_path / "benchmark.md").read_text()
  assert "| quick | gru | fused, hand-written VJP |" in md and "| 16 | min_gru step |" in md
  assert "| 16 | rg_lru floor+proj |" in md and "| 16 | floor lax.scan |" in md


def test_block_rows_from_known_rounds():
  """mamba and mlstm against min_gru in the same round and mode; a program over the budget
  is a not-run row with what it needs: worked out by hand."""
  sec = {("mlstm", "fwd+bwd"): [2.0, 6.0, 3.0], ("min_gru", "fwd+bwd"): [1.0, 2.0, 2.0]}
  t = Timings(sec)
  gib = bench_linear.GIB
  memory = {k: dict(total=gib // 2) for k in sec} | {("mamba", "fwd+bwd"): dict(total=12 * gib)}
  kernels = {"mlstm": "chunkwise", "min_gru": "linear", "mamba": "linear"}
  cfg = dict(B=32, I=4, H=4, T=1024)
  rows = {r["variant"]: r for r in bench_linear.block_rows(cfg, t, kernels, memory, 8 * gib)}
  m = rows["mlstm"]
  assert m["vs_min_gru"] == 2.0 and m["vs_min_gru_range"] == [1.5, 3.0]  # 2, 3, 1.5
  assert m["ms"] == 3000.0 and m["memory_gib"] == 0.5 and "vs_min_gru" not in rows["min_gru"]
  assert rows["mamba"]["ms"] is None and rows["mamba"]["not_run"] == "needs 12.0 GiB"
  md = bench_linear.block_markdown(list(rows.values()))
  assert "| 1024 | 32 | mlstm | chunkwise | - | 3000.0 | - | 2.00x (1.50-3.00) | - | 0.50 |" in md
  assert "| 1024 | 32 | mamba | linear | - | not run (needs 12.0 GiB) | - | - | - | 12.00 |" in md
  assert "budget (8 GiB)" in md


def test_mamba_mlstm_quick_end_to_end(tmp_path, monkeypatch):
  """The section's quick run with mamba and min_gru (each variant costs its compiles: the
  mlstm's kernels are named here, its rows are `test_block_rows_from_known_rounds`')."""
  assert set(bench_linear.block_variants(16)) == set(bench_linear.BLOCKS) - {"mlstm parallel"}
  assert "mlstm parallel" in bench_linear.block_variants(1024)  # T=16: one chunk, mlstm's row
  mlstm = bench_linear.BLOCKS["mlstm"](8, 16)
  assert bench_linear.block_kernel("mlstm", mlstm) == "chunkwise, chunks of 32, autodiff"
  few = {k: bench_linear.BLOCKS[k] for k in ("mamba", "min_gru")}
  monkeypatch.setattr(bench_linear, "BLOCKS", few)
  skip = "speed,breakdown,unroll,remat,streaming,cells,min_cells"
  result = benchmark.main(["--quick", "--skip", skip, "--out", str(tmp_path)])
  rows = {(r["variant"], r["mode"]): r for r in result["mamba_mlstm"]}
  assert set(rows) == {(v, m) for v in few for m in ("fwd", "fwd+bwd")}
  assert all(r["ms"] > 0 and r["memory"]["total"] > 0 for r in rows.values())
  assert "vs_min_gru" in rows[("mamba", "fwd+bwd")] and "vs_min_gru" not in rows[("min_gru", "fwd")]
  assert rows[("mamba", "fwd")]["kernel"].startswith("linear scan in chunks of 32, ")
  table = (tmp_path / "benchmark.md").read_text()
  assert "| 16 | 2 | mamba | linear scan in chunks of 32, " in table
