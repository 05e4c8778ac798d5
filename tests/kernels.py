"""A whole-sequence kernel against its cell's step loop, for the per-cell tests of a cell
configuration the registry's example does not cover (tests/test_registry.py covers each
kind's example through `jaxrnn.testing.check_cell`)."""

import jax
import jax.numpy as jnp
import numpy as np

import jaxrnn
from jaxrnn.cells.kernel import Noise


def assert_fused_is_step(cell, params, carry, xs):
  """``impl="fused"`` against ``impl="step"`` under one jit: values, and gradients with respect
  to the params, the initial carry and ``xs`` (1e-5 relative, leaf by leaf), with lengths
  (one 0), resets and noise (recurrent dropout, zoneout on h and c); `check_grads` covers
  the kernel reversed."""
  n, t = xs.shape[:2]
  rng = np.random.default_rng(3)
  lengths = jnp.asarray(np.resize([t, 0, t - 2], n))
  resets = jnp.asarray(rng.random((n, t)) < 0.3)
  keep = jax.tree.map(lambda c: jnp.asarray(rng.random((t,) + c.shape) < 0.3, c.dtype), carry)
  noise = Noise(jnp.asarray((rng.random(carry.h.shape) > 0.3) / 0.7, carry.h.dtype), keep)
  w = jnp.asarray(rng.normal(size=xs.shape[:2] + (carry.h.shape[-1],)), xs.dtype)

  def loss(params, carry, xs, impl):
    kw = dict(seq_lengths=lengths, resets=resets, noise=noise, impl=impl, unroll=1)
    final, ys = jaxrnn.scan(cell, params, xs, carry, **kw)
    return jnp.sum(ys * w) + sum(jnp.sum(jnp.sin(c)) for c in final), (final, ys)

  @jax.jit
  def both(params, carry, xs):
    grad = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
    return {impl: grad(params, carry, xs, impl) for impl in ("fused", "step")}

  out = both(params, carry, xs)
  leaves = zip(jax.tree.leaves(out["fused"]), jax.tree.leaves(out["step"]), strict=True)
  for got, want in leaves:
    scale = max(float(np.linalg.norm(want)), 1e-30)
    assert float(np.linalg.norm(got - want)) <= 1e-5 * scale, (got, want)
