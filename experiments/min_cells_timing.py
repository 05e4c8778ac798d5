"""A one-off measurement (not a test): minGRU/minLSTM associative scan vs their step loop.

B=32, H=256, T=1024 on this backend, forward and forward+backward, interleaved rounds.
Run: python -m experiments.min_cells_timing
"""

import jax
import jax.numpy as jnp

import jaxrnn
from experiments.timing import interleaved
from jaxrnn.cells import linear_scan

B, H, T, ROUNDS = 32, 256, 1024, 5
METHODS = ("associative", "sequential")


def run(cell, params, xs, impl):
  """The whole-sequence path with the given method, or the step loop (``impl="step"``)."""
  if impl == "step":
    return jaxrnn.scan(cell, params, xs, impl="step")[1]
  linear_scan.METHODS[jax.default_backend()] = impl  # read when traced
  return jaxrnn.scan(cell, params, xs, impl="auto")[1]


def main():
  xs = jax.random.normal(jax.random.key(0), (B, T, H))
  runs = {}
  for kind in ("min_gru", "min_lstm"):
    for log_space in (False, True):
      cell = getattr(jaxrnn, kind)(H, log_space=log_space)
      params = cell.init(jax.random.key(1), H)
      for impl in METHODS + ("step",):
        fwd = jax.jit(lambda p, x, c=cell, i=impl: run(c, p, x, i))

        def loss(p, x, c=cell, i=impl):
          return jnp.sum(run(c, p, x, i) ** 2)

        both = jax.jit(jax.value_and_grad(loss))
        name = f"{kind}{'-log' if log_space else ''} {impl}"
        runs[name + " fwd"] = lambda f=fwd, p=params: jax.block_until_ready(f(p, xs))
        runs[name + " fwd+bwd"] = lambda f=both, p=params: jax.block_until_ready(f(p, xs))
  t = interleaved(runs, ROUNDS, warmup=1)
  for name in runs:
    print(f"{name:36s} {1e3 * t.median(name):9.1f} ms")
  for name in runs:
    if " step " not in name:
      ref = name.replace(" associative ", " step ").replace(" sequential ", " step ")
      print(f"{name:36s} its time / the step loop's {t.ratio(name, ref):.2f}")


if __name__ == "__main__":
  main()
