"""``python -m jaxrnn.export PATH --input FILE.npy [--output OUT.npy] [--seq-lengths FILE.npy]
[--resets FILE.npy] [--final-state STATE.npz]``."""

from __future__ import annotations

import argparse
import contextlib
import sys

import jax
import numpy as np

from jaxrnn.export.loading import load, read_manifest, x64_arrays


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m jaxrnn.export",
    description="Run a model exported by jaxrnn.export.save on a batch of sequences.",
  )
  parser.add_argument("path", help="the artifact directory written by jaxrnn.export.save")
  parser.add_argument(
    "--input",
    required=True,
    help=".npy shaped as the manifest's input pattern, e.g. (batch, time, features), "
    "(time, batch, features) for a time-major model, (batch, time) of token ids; floating "
    "inputs are cast to a floating artifact's dtype, integer ones to an integer artifact's",
  )
  parser.add_argument(
    "--output",
    default="-",
    help=".npy file to write the outputs to; '-' (the default) writes the .npy to stdout. "
    "Outputs of a dtype .npy cannot hold (bfloat16) are upcast to float32, exactly",
  )
  parser.add_argument("--seq-lengths", help=".npy of integer lengths, shape (batch,)")
  parser.add_argument(
    "--resets", help=".npy of bools shaped (batch, time): True at t starts a new segment at t"
  )
  parser.add_argument("--final-state", help=".npz file to write the final state to")
  return parser


def _npy_safe(a: np.ndarray, what: str) -> np.ndarray:
  """``a``, or float32 for a dtype ``.npy`` cannot hold (bfloat16: exact), saying so."""
  if a.dtype.kind in "biufc":
    return a
  print(f"{what}: {a.dtype} upcast to float32 (.npy cannot hold {a.dtype})", file=sys.stderr)
  return a.astype(np.float32)


def _run(args: argparse.Namespace) -> tuple[dict, np.ndarray]:
  """Loads the artifact and runs ``apply`` (with ``jax_enable_x64`` for 64-bit arrays)."""
  x64 = x64_arrays(read_manifest(args.path))
  with jax.enable_x64(True) if x64 else contextlib.nullcontext():
    artifact = load(args.path)
    xs = np.load(args.input, allow_pickle=False)
    lengths, resets = (
      None if f is None else np.load(f, allow_pickle=False) for f in (args.seq_lengths, args.resets)
    )
    state, ys = artifact.apply(xs, seq_lengths=lengths, resets=resets)
    return {k: np.asarray(v) for k, v in state.items()}, np.asarray(ys)


def main(argv: list[str] | None = None) -> int:
  """Loads an artifact, runs its ``apply`` on a ``.npy`` batch, writes the outputs.

  Returns 0, or exits with status 2 and the error for a bad artifact or input.
  From a shell, with ``xs.npy`` ``(batch, time, features)`` and a bfloat16 model::

    $ python -m jaxrnn.export model_dir --input xs.npy --output ys.npy
    outputs: bfloat16 upcast to float32 (.npy cannot hold bfloat16)
    wrote outputs float32[4, 20, 32] to ys.npy
  """
  parser = _parser()
  args = parser.parse_args(argv)
  if args.output == "-" and sys.stdout.isatty():
    parser.error("refusing to write .npy bytes to a terminal; pass --output FILE.npy")
  try:
    state, ys = _run(args)
  except (ValueError, OSError) as e:
    parser.exit(2, f"{parser.prog}: error: {e}\n")
  ys = _npy_safe(np.asarray(ys), "outputs")
  if args.output == "-":
    np.save(sys.stdout.buffer, ys)
    sys.stdout.buffer.flush()
  else:
    with open(args.output, "wb") as f:
      np.save(f, ys)
  if args.final_state is not None:
    with open(args.final_state, "wb") as f:
      np.savez(f, **{k: _npy_safe(np.asarray(v), f"state {k}") for k, v in state.items()})
  where = "stdout" if args.output == "-" else args.output
  print(f"wrote outputs {ys.dtype}{list(ys.shape)} to {where}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
