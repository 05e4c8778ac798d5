"""Demo for `make run`: an Elman RNN and an LSTM on the adding problem (long memory).

Task (the adding problem in its modern form, Le, Jaitly and Hinton 2015): each
sequence has T steps of two features, a value drawn from U(0, 1) and a marker
that is 1 at exactly two steps, one in each half of the sequence. The target is
the sum of the two marked values, read from the final state through a linear
readout. Predicting the mean (1) scores the baseline MSE 1/6; a model that has
learnt nothing scores MSE / baseline = 1, a perfect one 0.

The seed document's claim: the plain RNN loses the first marked value over the
~T/2 steps that follow it (vanishing gradients), the LSTM's gates keep it. PASS
if the LSTM reaches MSE / baseline < 0.1 while the Elman RNN stays above 0.5.
Every hyperparameter is a flag; the same seed gives the same numbers.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax

import jaxrnn


def make_batch(key, batch, length):
  """``xs`` ``(batch, length, 2)`` and targets ``(batch,)`` for the adding problem."""
  k_v, k_1, k_2 = jax.random.split(key, 3)
  values = jax.random.uniform(k_v, (batch, length))
  first = jax.random.randint(k_1, (batch,), 0, length // 2)
  second = jax.random.randint(k_2, (batch,), length // 2, length)
  markers = jax.nn.one_hot(first, length) + jax.nn.one_hot(second, length)
  return jnp.stack([values, markers], axis=-1), jnp.sum(values * markers, axis=-1)


def train(cell, *, length, steps, batch, lr, seed):
  """Trains ``cell`` + linear readout with Adam; returns test MSE / (1/6)."""
  hidden = dict(cell.config)["hidden_size"]
  k_init, k_data, k_test = jax.random.split(jax.random.key(seed), 3)
  params = {"rnn": cell.init(k_init, input_size=2), "w": jnp.zeros(hidden), "b": jnp.ones(())}
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr))
  opt_state = opt.init(params)

  def predict(params, xs):
    carry, _ = jaxrnn.scan(cell, params["rnn"], xs)
    return carry.h @ params["w"] + params["b"]

  def loss_fn(params, xs, ys):
    return jnp.mean((predict(params, xs) - ys) ** 2)

  @jax.jit
  def step(params, opt_state, key):
    xs, ys = make_batch(key, batch, length)
    loss, grads = jax.value_and_grad(loss_fn)(params, xs, ys)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  for key in jax.random.split(k_data, steps):
    params, opt_state, _ = step(params, opt_state, key)
  xs, ys = make_batch(k_test, 2000, length)
  return float(jax.jit(loss_fn)(params, xs, ys)) / (1.0 / 6.0)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--length", type=int, default=100, help="T, steps per sequence")
  parser.add_argument("--steps", type=int, default=2000, help="Adam steps")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--hidden", type=int, default=64)
  parser.add_argument("--lr", type=float, default=3e-3)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  print(
    f"Adding problem, T={args.length}: {args.steps} Adam steps (lr {args.lr}), batch "
    f"{args.batch}, H={args.hidden}, seed {args.seed}. Baseline MSE = 1/6."
  )
  print(f"{'cell':<12}{'test MSE / baseline':>22}{'seconds':>10}")
  results = {}
  for name, cell in [("elman-tanh", jaxrnn.elman(args.hidden)), ("lstm", jaxrnn.lstm(args.hidden))]:
    t0 = time.perf_counter()
    results[name] = train(
      cell, length=args.length, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed
    )
    print(f"{name:<12}{results[name]:>22.4f}{time.perf_counter() - t0:>10.1f}")
  ok = results["lstm"] < 0.1 and results["elman-tanh"] > 0.5
  print(
    f"{'PASS' if ok else 'FAIL'}: LSTM < 0.1 and Elman > 0.5 "
    "(the seed's claim: the plain RNN loses long-range information, the LSTM keeps it)."
  )
  return results


if __name__ == "__main__":
  main()
