"""Strict numerics for every test, as equinox does: no silent dtype or rank promotion."""

import atexit
import os
import shutil
import tempfile

import processes

# JAX's persistent compilation cache, fresh for each run (as in CI's fresh clone) and shared by
# the xdist workers and the tests' child processes (they inherit this environment): a program
# compiled once is read back wherever the same program is compiled again (the same cell at
# the same shapes in another test, page or worker). Measured on the docs' and README's
# doctests, 2 xdist workers on the shared 2-core machine, each order once: 145 s -> 64 s and
# 94 s -> 77 s. A user's own JAX_COMPILATION_CACHE_DIR is kept.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxrnn-test-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + processes.TEST_XLA_FLAGS).strip()

import jax  # noqa: E402  (after XLA_FLAGS: the backend reads them when it starts)
import numpy as np
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _strict_jax():
  with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
    yield


@pytest.fixture
def rng():
  return np.random.default_rng(0)


def to_np(x):
  """A jax array or torch tensor as numpy."""
  if isinstance(x, torch.Tensor):
    return x.detach().cpu().numpy()
  return np.asarray(x)
