"""``python -m jaxrnn.export PATH --input FILE.npy [--output OUT.npy] [--seq-lengths FILE.npy]``."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from jaxrnn.export.loading import load


def main(argv: list[str] | None = None) -> int:
  """Loads an artifact, runs its ``apply`` on a ``.npy`` batch, writes the outputs."""
  parser = argparse.ArgumentParser(
    prog="python -m jaxrnn.export",
    description="Run a model exported by jaxrnn.export.save on a batch of sequences.",
  )
  parser.add_argument("path", help="the artifact directory written by jaxrnn.export.save")
  parser.add_argument(
    "--input",
    required=True,
    help=".npy of shape (batch, time, features), or (time, batch, features) for a time-major "
    "model; floating inputs are cast to the artifact's dtype",
  )
  parser.add_argument(
    "--output",
    default="-",
    help=".npy file to write the outputs to; '-' (the default) writes the .npy to stdout",
  )
  parser.add_argument("--seq-lengths", help=".npy of integer lengths, shape (batch,)")
  parser.add_argument("--final-state", help=".npz file to write the final state to")
  args = parser.parse_args(argv)
  if args.output == "-" and sys.stdout.isatty():
    parser.error("refusing to write .npy bytes to a terminal; pass --output FILE.npy")
  try:
    artifact = load(args.path)
    xs = np.load(args.input, allow_pickle=False)
    lengths = None
    if args.seq_lengths is not None:
      lengths = np.load(args.seq_lengths, allow_pickle=False)
    state, ys = artifact.apply(xs, seq_lengths=lengths)
  except (ValueError, OSError) as e:
    parser.exit(2, f"{parser.prog}: error: {e}\n")
  ys = np.asarray(ys)
  if args.output == "-":
    np.save(sys.stdout.buffer, ys)
    sys.stdout.buffer.flush()
  else:
    with open(args.output, "wb") as f:
      np.save(f, ys)
  if args.final_state is not None:
    with open(args.final_state, "wb") as f:
      np.savez(f, **{k: np.asarray(v) for k, v in state.items()})
  where = "stdout" if args.output == "-" else args.output
  print(f"wrote outputs {ys.dtype}{list(ys.shape)} to {where}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
