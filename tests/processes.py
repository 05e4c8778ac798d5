"""Launching the two processes of a `jax.distributed` test on localhost."""

import socket
import subprocess


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
