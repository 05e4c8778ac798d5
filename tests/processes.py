"""Launching the two processes of a `jax.distributed` test on localhost."""

import os
import socket
import subprocess

# The suite's XLA flags (tests/conftest.py sets them for this process): LLVM's backend at
# optimization level 0 compiles XLA:CPU programs about 2x faster (user CPU time of
# tests/test_regularizers.py + test_lstm_variants.py: 108 s -> 61 s; the sunspots, copy and
# adding quick runs: 105 s -> 63 s). The same XLA programs run; only their machine code is less
# optimized. On top of it, XLA:CPU's loop emitters in place of its fusion emitters compile
# faster again (user CPU time of tests/test_layers.py + test_resets.py: 101 s -> 67 s; of
# test_mlstm.py's chunkwise-against-step-loop function: 5.3 s -> 1.9 s); the same HLO runs, and
# the values agree to float32 rounding. The benchmark and the experiments keep XLA's defaults.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def env(devices: int | None = None, **extra: str) -> dict[str, str]:
  """``os.environ`` for a child process: the suite's XLA flags, ``devices`` CPU devices."""
  flags = TEST_XLA_FLAGS
  if devices is not None:
    flags += f" --xla_force_host_platform_device_count={devices}"
  return {**os.environ, **extra, "XLA_FLAGS": flags}


def free_port() -> int:
  """A TCP port free on localhost now, for the coordinator."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def run_two(command, *, env, timeout, cwd=None) -> tuple[list[int], list[str]]:
  """Runs ``command(i)`` for processes 0 and 1 at once; their exit codes and outputs."""
  procs = [
    subprocess.Popen(
      command(i), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=timeout)[0] for p in procs]
  return [p.returncode for p in procs], outs
