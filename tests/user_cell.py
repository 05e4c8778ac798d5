"""A cell written the way a user writes one: outside jaxrnn/, on the public `Cell` contract only.

A leaky tanh RNN, ``h' = (1 - a) h + a tanh(x W + h U + b)``, with its own params and
carry NamedTuples and nothing else: no kernel, no declarations, no registration.
tests/test_contract.py runs it everywhere a built-in cell runs. Run as a script
(``XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/user_cell.py``) it
trains it for a few steps on a 4-device data-parallel mesh and on one device and
prints one JSON line with the largest parameter difference, for the parent test.
"""

from __future__ import annotations

import json
import os
import sys
from typing import NamedTuple

if __name__ == "__main__" and "jax" not in sys.modules:  # not when pytest imports it
  os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import jaxrnn  # noqa: E402
from jaxrnn.cells import kernel  # noqa: E402


class LeakyParams(NamedTuple):
  w: jax.Array  # (input_size, H)
  u: jax.Array  # (H, H)
  b: jax.Array  # (H,)


class LeakyCarry(NamedTuple):
  h: jax.Array  # (*batch, H)


def leaky(hidden_size: int, leak: float = 0.5) -> jaxrnn.Cell:
  def init(key, input_size):
    k_w, k_u, k_b = jax.random.split(key, 3)
    scale = hidden_size**-0.5
    return LeakyParams(
      jax.random.uniform(k_w, (input_size, hidden_size), jnp.float32, -scale, scale),
      jax.random.uniform(k_u, (hidden_size, hidden_size), jnp.float32, -scale, scale),
      jax.random.uniform(k_b, (hidden_size,), jnp.float32, -scale, scale),
    )

  def initial_carry(params, batch_shape=()):
    return LeakyCarry(jnp.zeros(tuple(batch_shape) + (params.u.shape[0],), params.u.dtype))

  def step(params, carry, x):
    x = x.astype(params.w.dtype)  # the dtype policy: inputs cast to the params' dtype
    pre = x @ params.w + carry.h @ params.u
    z = jnp.tanh(pre + jnp.reshape(params.b, (1,) * (pre.ndim - 1) + params.b.shape))
    h = (1.0 - leak) * carry.h + leak * z
    return LeakyCarry(h), h

  return jaxrnn.Cell(init, initial_carry, step, name="leaky")


def leaky_with_kernel(hidden_size: int, leak: float = 0.5, *, error_at: int | None = None):
  """`leaky` with a whole-sequence kernel: the input projection hoisted out of the time
  loop (one matmul over all steps), the loop itself `jaxrnn.cells.kernel.step_loop` (which
  applies lengths and resets). ``error_at=t`` adds 1e-3 to the outputs of step t: the
  broken kernel `jaxrnn.testing.check_cell` must catch."""
  plain = leaky(hidden_size, leak)

  def projected_step(params, carry, px):  # px = x @ w, computed before the loop
    pre = px + carry.h @ params.u
    z = jnp.tanh(pre + jnp.reshape(params.b, (1,) * (pre.ndim - 1) + params.b.shape))
    h = (1.0 - leak) * carry.h + leak * z
    return LeakyCarry(h), h

  def sequence(params, carry, xs, mask, reverse, unroll, resets=None, reset_carry=None):
    args = (mask, reverse, unroll, resets, reset_carry)
    px = xs.astype(params.w.dtype) @ params.w
    carry, ys = kernel.step_loop(projected_step, params, carry, px, *args)
    if error_at is not None:
      ys = ys.at[error_at].add(1e-3)
    return carry, ys

  return plain.replace(sequence=sequence, name="leaky_kernel")


CELL = leaky(5)
MODEL = jaxrnn.stack([jaxrnn.recurrent(CELL), jaxrnn.recurrent(jaxrnn.lstm(4))])


def loss_fn(params, batch):
  _, ys = MODEL.apply(params, batch["x"])
  return jnp.mean((ys[:, -1, 0] - batch["y"]) ** 2)


def _train(state, batches, step):
  for batch in batches:
    state, _ = step(state, batch)
  return state


def main() -> None:
  import numpy as np
  import optax

  from jaxrnn import sharding, train

  opt = optax.adam(1e-2)
  rng = np.random.default_rng(0)
  batches = [
    {"x": jnp.asarray(rng.standard_normal((8, 6, 3)), jnp.float32), "y": jnp.ones((8,))}
    for _ in range(3)
  ]
  state = train.TrainState.create(MODEL.init(jax.random.key(0), 3), opt)
  one = _train(state, batches, jax.jit(train.make_train_step(loss_fn, opt)))
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  step = sharding.make_sharded_train_step(loss_fn, opt, mesh)
  sharded_batches = [sharding.shard_batch(b, mesh) for b in batches]
  many = _train(sharding.shard_state(state, mesh), sharded_batches, step)
  diff = max(
    float(jnp.max(jnp.abs(a - b)))
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(many.params), strict=True)
  )
  moved = max(
    float(jnp.max(jnp.abs(a - b)))
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(state.params), strict=True)
  )
  spec = str(sharded_batches[0]["x"].sharding.spec)
  print("RESULT " + json.dumps(dict(devices=jax.device_count(), diff=diff, moved=moved, spec=spec)))


if __name__ == "__main__":
  main()
