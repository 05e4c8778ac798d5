"""The pages' doctests compile with the suite's XLA flags (tests/processes.py: about 2x faster
compiles), set here too for a run of docs/ alone, before jax starts its backend."""

import os

FLAG = "--xla_backend_optimization_level=0"
if FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + FLAG).strip()
