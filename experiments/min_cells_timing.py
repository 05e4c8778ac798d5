"""A one-off measurement (not a test): minGRU/minLSTM by method and form vs their step loop.

B=32, I=H=256, T=1024 on this backend, forward and forward+backward (through the
recurrence's hand-written VJP), interleaved rounds, each beside its step loop and jaxrnn's
LSTM kernel: the evidence behind `jaxrnn.cells.linear_scan.METHODS`. The variants and rows are
`experiments.bench_cells`' (whose ``min_cells`` section of ``make bench`` runs the plain
form at T=1024 and 4096 beside the LSTM).
Run: python -m experiments.min_cells_timing
"""

from experiments import bench_cells
from experiments.timing import interleaved

T, ROUNDS = 1024, 5


def main() -> list[dict]:
  """Times every variant at T=1024 and prints each one's ms and ratio to its step loop."""
  cfg = dict(bench_cells.LONG, T=T)
  variants = bench_cells.min_variants((False, True), kinds=("min_gru", "min_lstm"), floors=False)
  runs, kernels = bench_cells.compile_variants(variants, cfg)
  timings = interleaved(runs, ROUNDS, warmup=1)
  rows = bench_cells.min_rows(T, cfg, timings, kernels)
  for r in rows:
    step = f"  its time / the step loop's {r['vs_step']:.2f}" if "vs_step" in r else ""
    lo, hi = r["vs_lstm_range"]
    lstm = f"  / the LSTM's {r['vs_lstm']:.2f} ({lo:.2f}-{hi:.2f})"
    print(f"{r['variant']:26s} {r['mode']:7s} {r['ms']:9.1f} ms{step}{lstm}")
  for name, mode in timings.seconds:  # the choice itself: sequential over associative
    if name.endswith(" sequential"):
      cell = name.rsplit(" ", 1)[0]
      ratio = bench_cells.versus(timings, (name, mode), (f"{cell} associative", mode), "r")
      lo, hi = ratio["r_range"]
      print(f"{cell:18s} {mode:7s} sequential / associative {ratio['r']:.2f} ({lo:.2f}-{hi:.2f})")
  return rows


if __name__ == "__main__":
  main()
