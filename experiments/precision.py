"""A one-off measurement (not a test): bfloat16 params with a bfloat16 and a float32 carry.

Each cell is initialised in float32, its params rounded to bfloat16; the reference is the
float32 run with those bfloat16 weights upcast (the same weights), so the errors are those
of the bfloat16 arithmetic only; against float32 (docs/dtypes.md states the numbers). Run:
``python -m experiments.precision [T]``.
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp

import jaxrnn

KINDS = (("lstm", {}), ("gru", {}), ("min_gru", {}), ("rg_lru", {"num_heads": 4}))
B, I, H, SEED = 4, 8, 32, 0


def errors(got, want) -> tuple[float, float]:
  """``(max, mean)`` absolute error of ``got`` against ``want``, both upcast to float32."""
  d = jnp.abs(got.astype(jnp.float32) - want.astype(jnp.float32))
  return float(jnp.max(d)), float(jnp.mean(d))


def measure(name: str, kwargs: dict, T: int) -> dict:
  """The errors of one cell kind's bfloat16 runs at length ``T``."""
  factory = getattr(jaxrnn, name)
  params = factory(H, **kwargs).init(jax.random.key(SEED), I)
  to = lambda dt: lambda a: a.astype(dt) if jnp.issubdtype(a.dtype, jnp.floating) else a  # noqa: E731
  low = jax.tree.map(to(jnp.bfloat16), params)
  same = jax.tree.map(to(jnp.float32), low)  # the bfloat16 weights, upcast
  xs = jax.random.normal(jax.random.key(SEED + 1), (B, T, I), jnp.float32)

  def run(cell, p):
    carry, ys = jax.jit(lambda p, xs: jaxrnn.scan(cell, p, xs))(p, xs)
    return jnp.concatenate([jnp.ravel(c.astype(jnp.float32)) for c in jax.tree.leaves(carry)]), ys

  ref_carry, ref_ys = run(factory(H, **kwargs), same)
  out = {}
  for label, carry_dtype in (("bf16 carry", jnp.bfloat16), ("f32 carry", None)):
    cell = factory(H, **kwargs, dtype=jnp.bfloat16, carry_dtype=carry_dtype)
    carry, ys = run(cell, low)
    out[label] = {"ys": errors(ys, ref_ys), "carry": errors(carry, ref_carry)}
  return out


def main(T: int = 4096) -> dict:
  results = {name: measure(name, kwargs, T) for name, kwargs in KINDS}
  print(f"B={B}, I={I}, H={H}, T={T}: max / mean abs error against float32")
  print("| cell | carry | ys max | ys mean | carry max | carry mean |")
  print("|---|---|---|---|---|---|")
  for name, runs in results.items():
    for label, e in runs.items():
      (ym, ya), (cm, ca) = e["ys"], e["carry"]
      print(f"| {name} | {label} | {ym:.2e} | {ya:.2e} | {cm:.2e} | {ca:.2e} |")
  print(json.dumps(results))
  return results


if __name__ == "__main__":
  main(int(sys.argv[1]) if len(sys.argv) > 1 else 4096)
