"""Strict numerics for every test, as equinox does: no silent dtype or rank promotion."""

import jax
import numpy as np
import pytest
import torch

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
