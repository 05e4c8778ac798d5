"""`make bench` runs end to end on a tiny config; its numbers are consistent (no timing asserts)."""

import json

import numpy as np

from experiments import benchmark


def test_benchmark_tiny(tmp_path):
  result = benchmark.main(["--tiny", "--kinds", "lstm", "--rounds", "1", "--out", str(tmp_path)])
  saved = json.loads((tmp_path / "benchmark.json").read_text())
  assert (tmp_path / "benchmark.png").stat().st_size > 1000
  assert "| lstm | tiny | fwd |" in (tmp_path / "benchmark.md").read_text()
  rows = saved["speed"]
  impls = {r["impl"] for r in rows}
  assert impls == {"jaxrnn", "torch", "flax", "equinox", "haiku"}
  assert len(rows) == 2 * 5  # passes x implementations
  for r in rows:
    torch_ms = next(
      q["ms"]
      for q in rows
      if q["impl"] == "torch" and (q["kind"], q["mode"]) == (r["kind"], r["mode"])
    )
    np.testing.assert_allclose(r["vs_torch"], r["ms"] / torch_ms, rtol=1e-9)
    flop = benchmark.flops(r["kind"], B=2, T=8, I=4, H=8) * (1 if r["mode"] == "fwd" else 3)
    np.testing.assert_allclose(r["gflops"], flop / r["ms"] / 1e6, rtol=1e-9)
    np.testing.assert_allclose(r["ceiling_fraction"], r["gflops"] / r["ceiling_gflops"])
  # Remat at T=64 stores fewer bytes than the plain scan, by XLA's own accounting.
  remat = {r["T"]: r for r in result["remat"]}
  assert remat[64]["memory_ratio"] < 1.0 and remat[64]["chunk"] == 8
  assert {r["unroll"] for r in saved["unroll"]} == {1, 4}
  parts = {r["part"]: r for r in saved["breakdown"]}
  assert set(parts) == {"fwd", "fwd_save", "bwd", "bwd_matmuls", "recurrent_matmul", "gate_math"}
  B, T, I, H = 2, 8, 4, 8
  np.testing.assert_allclose(  # the three gradient matmuls over T * B rows
    parts["bwd_matmuls"]["gflops"],
    2 * T * B * 4 * H * (2 * I + H) / parts["bwd_matmuls"]["ms"] / 1e6,
  )
  np.testing.assert_allclose(parts["gate_math"]["ns_per_step"], parts["gate_math"]["ms"] * 1e6 / T)
  assert saved["streaming"][0]["hidden_size"] == 8


def test_flop_count_matches_gate_matmuls():
  # LSTM: 4 gates of (I + H) x H multiply-adds per example and step.
  assert benchmark.flops("lstm", B=1, T=1, I=3, H=5) == 2 * (3 + 5) * 4 * 5
  assert benchmark.flops("gru", B=2, T=3, I=3, H=5) == 2 * 2 * 3 * (3 + 5) * 3 * 5
