"""The carry dtype (``carry_dtype=``): a 16-bit float cell's state accumulates in float32.

The registry's ``dtype`` check (`jaxrnn.testing.check_cell`) asserts every kind's carry
dtypes; here the numbers: with bfloat16 params, a float32 carry is closer to the float32
run with the same weights than a bfloat16 carry, for a classic and a linear cell.
"""

import jax
import jax.numpy as jnp
import pytest

import jaxrnn
from jaxrnn.cells.base import resolve_carry_dtype

B, I, H, T = 4, 8, 32, 512


def test_the_default_carry_dtype():
  assert resolve_carry_dtype(jnp.bfloat16) == jnp.float32
  assert resolve_carry_dtype(jnp.float16) == jnp.float32
  assert resolve_carry_dtype(jnp.float32) == jnp.float32
  assert resolve_carry_dtype(jnp.float64) == jnp.float64
  assert resolve_carry_dtype(jnp.bfloat16, jnp.bfloat16) == jnp.bfloat16
  assert resolve_carry_dtype(jnp.float32, "float16") == jnp.float16


def test_carry_dtype_is_recorded_and_rebuilds():
  cell = jaxrnn.lstm(4, dtype=jnp.bfloat16, carry_dtype=jnp.bfloat16)
  config = dict(cell.config)
  assert config["carry_dtype"] == "bfloat16" and dict(jaxrnn.lstm(4).config)["carry_dtype"] is None
  assert jaxrnn.lstm(**config) == cell
  params = cell.init(jax.random.key(0), 3)
  carry = cell.initial_carry(params, (2,))
  assert {c.dtype for c in carry} == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.parametrize("kind", ["lstm", "min_gru", "lru", "s5"])
def test_a_carry_dtype_that_is_not_a_real_float_is_named(kind):
  kwargs = {"state_size": 4} if kind == "s5" else {}
  for bad in ("int32", "complex64", "nonsense"):
    with pytest.raises(ValueError, match=rf"carry_dtype='{bad}'"):
      getattr(jaxrnn, kind)(4, carry_dtype=bad, **kwargs)


def _errors(factory, kwargs):
  """Mean absolute error of the final carry against float32, ``(bf16 carry, f32 carry)``."""
  params = factory(H, **kwargs).init(jax.random.key(0), I)
  low = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
  same = jax.tree.map(lambda a: a.astype(jnp.float32), low)  # the bfloat16 weights, upcast
  xs = jax.random.normal(jax.random.key(1), (B, T, I))

  def final(cell, p):
    carry, _ = jax.jit(lambda p: jaxrnn.scan(cell, p, xs))(p)
    return jnp.concatenate([jnp.ravel(c.astype(jnp.float32)) for c in jax.tree.leaves(carry)])

  want = final(factory(H, **kwargs), same)
  got = []
  for carry_dtype in (jnp.bfloat16, None):
    cell = factory(H, **kwargs, dtype=jnp.bfloat16, carry_dtype=carry_dtype)
    carry = final(cell, low)
    assert carry.dtype == jnp.float32  # upcast above; the dtypes are the registry check's
    got.append(float(jnp.mean(jnp.abs(carry - want))))
  return got


@pytest.mark.parametrize(
  "name, kwargs, bf16_at_least, f32_at_most",
  [
    # An LSTM that keeps its cell state (forget gate 1 in both dtypes: c counts i * g over
    # 512 steps): a bfloat16 c drops the increments below its rounding; measured 0.92
    # (bfloat16 carry) and 0.37 (float32 carry).
    ("lstm", {"forget_bias": 30.0}, 0.5, 0.5),
    # Griffin's RG-LRU (a near 1, sqrt(1 - a^2) small): measured 3.4e-3 and 1.5e-3.
    ("rg_lru", {"num_heads": 4}, 2e-3, 2.5e-3),
  ],
)
def test_a_float32_carry_is_closer_to_float32_than_a_bfloat16_one(
  name, kwargs, bf16_at_least, f32_at_most
):
  bf16_carry, f32_carry = _errors(getattr(jaxrnn, name), kwargs)
  assert bf16_carry > bf16_at_least, bf16_carry
  assert f32_carry < f32_at_most, f32_carry
  assert f32_carry < 0.5 * bf16_carry, (f32_carry, bf16_carry)
