"""Strict numerics for every test, as equinox does: no silent dtype or rank promotion."""

import os

import processes

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
