"""Multi-device checks of `jaxrnn.sharding`, run by test_sharding.py in a fresh process.

``XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharding_worker.py``
(the flag must be set before jax is imported, which pytest has already done in
its own process). It trains a small LSTM regressor for a few Adam steps on one
device and on (8,), (4, 2) and (2, 4) meshes (data, model), asserts that the
parameters agree within 1e-5 and are laid out as asked, that the errors for an
indivisible batch and indivisible gate columns are raised, and prints one JSON
line with what it measured for the parent test to check again.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

if __name__ == "__main__" and "jax" not in sys.modules:  # not when pytest imports it
  os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jaxrnn  # noqa: E402
from jaxrnn import sharding, train  # noqa: E402

H, I, T, B, STEPS = 8, 3, 6, 16, 3
CELL = jaxrnn.lstm(H)
OPT = optax.adam(1e-2)


def loss_fn(params, batch):
  _, ys = jaxrnn.scan(CELL, params["rnn"], batch["x"], unroll=1)
  pred = ys[:, -1, :] @ params["w"]
  return jnp.mean((pred[:, 0] - batch["y"]) ** 2)


def make_state():
  k_rnn, k_w = jax.random.split(jax.random.key(1))
  params = {"rnn": CELL.init(k_rnn, I), "w": 0.3 * jax.random.normal(k_w, (H, 1))}
  return train.TrainState.create(params, OPT)


def batches():
  out = []
  for i in range(STEPS):
    x = jax.random.normal(jax.random.fold_in(jax.random.key(2), i), (B, T, I))
    out.append({"x": x, "y": jnp.sum(x[:, :2, 0], axis=1)})
  return out


def flat(tree):
  return {
    jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)
  }


def shard_shapes(x):
  return sorted({tuple(s.data.shape) for s in x.addressable_shards})


def main():
  # The test suite's strictness (tests/conftest.py, pyproject's filterwarnings), except that
  # optax.adam's bias correction computes ``decay ** count`` (float ** int32), which strict
  # dtype promotion rejects: like test_train.py's Adam tests, dtype promotion stays standard.
  jax.config.update("jax_numpy_rank_promotion", "raise")
  warnings.simplefilter("error")
  assert jax.device_count() == 8, f"needs 8 devices (XLA_FLAGS set before jax): {jax.devices()}"
  data = batches()
  report = {"devices": jax.device_count(), "meshes": {}}

  # The reference: make_train_step on one device.
  step1 = train.make_train_step(loss_fn, OPT)
  state1 = make_state()
  for batch in data:
    state1, m1 = step1(state1, batch)
  ref, ref_loss = flat(state1.params), float(m1["loss"])

  for shape in [(8,), (4, 2), (2, 4)]:
    names = ("data",) if len(shape) == 1 else ("data", "model")
    model_axis = None if len(shape) == 1 else "model"
    mesh = jax.make_mesh(shape, names)
    step = sharding.make_sharded_train_step(loss_fn, OPT, mesh, model_axis=model_axis)
    state = sharding.shard_state(make_state(), mesh, model_axis=model_axis)
    hlo = None
    for i, batch in enumerate(data):
      batch = sharding.shard_batch(batch, mesh)
      if i == 0:
        hlo = step.lower(state, batch).compile().as_text()
      state, metrics = step(state, batch)
    got = flat(state.params)
    diff = max(float(np.max(np.abs(got[k] - ref[k]))) for k in ref)
    assert diff < 1e-5, (shape, diff)
    assert abs(float(metrics["loss"]) - ref_loss) < 1e-5, (shape, float(metrics["loss"]), ref_loss)

    p, mu = state.params, state.opt_state[0].mu
    k = shape[1] if model_axis else 1
    col = P_COL if model_axis else P_REP
    vec = P_VEC if model_axis else P_REP
    for tree in (p, mu, state.opt_state[0].nu):
      assert tree["rnn"].w_hh.sharding.spec == col, tree["rnn"].w_hh.sharding
      assert tree["rnn"].w_ih.sharding.spec == col, tree["rnn"].w_ih.sharding
      assert tree["rnn"].b.sharding.spec == vec, tree["rnn"].b.sharding
      assert tree["w"].sharding.spec == P_REP, tree["w"].sharding
      assert shard_shapes(tree["rnn"].w_hh) == [(H, 4 * H // k)]
      assert shard_shapes(tree["rnn"].w_ih) == [(I, 4 * H // k)]
      assert shard_shapes(tree["rnn"].b) == [(4 * H // k,)]
      assert shard_shapes(tree["w"]) == [(H, 1)]
    assert state.step.sharding.spec == P_REP and int(state.step) == len(data)
    assert state.opt_state[0].count.sharding.spec == P_REP
    assert len(p["rnn"].w_hh.addressable_shards) == 8
    assert batch["x"].sharding.spec == jax.sharding.PartitionSpec("data")
    assert shard_shapes(batch["x"]) == [(B // shape[0], T, I)]
    assert "all-reduce" in hlo  # XLA inserted the gradient's reduction over the data axis
    report["meshes"]["x".join(map(str, shape))] = {
      "max_param_diff": diff,
      "loss": float(metrics["loss"]),
      "w_hh_spec": str(p["rnn"].w_hh.sharding.spec),
      "w_hh_shard_shapes": shard_shapes(p["rnn"].w_hh),
      "mu_w_hh_shard_shapes": shard_shapes(mu["rnn"].w_hh),
      "readout_shard_shapes": shard_shapes(p["w"]),
      "batch_shard_shapes": shard_shapes(batch["x"]),
      "hlo_all_reduce": "all-reduce" in hlo,
    }
  report["reference_loss"] = ref_loss

  # A GRU's b_hn (H,) is split over the model axis too; the layout needs no compile.
  mesh = jax.make_mesh((4, 2), ("data", "model"))
  gru_params = sharding.shard_state(
    jaxrnn.gru(6).init(jax.random.key(0), 2), mesh, model_axis="model"
  )
  assert gru_params.w_hh.sharding.spec == P_COL and shard_shapes(gru_params.w_hh) == [(6, 9)]
  assert shard_shapes(gru_params.b_hn) == [(3,)]
  report["gru_w_hh_shard_shapes"] = shard_shapes(gru_params.w_hh)

  # The eager errors: a batch that does not divide the data axis, gate columns that do not
  # divide the model axis.
  errors = {}
  step = sharding.make_sharded_train_step(loss_fn, OPT, jax.make_mesh((8,), ("data",)))
  try:
    step(make_state(), {"x": jnp.ones((12, T, I)), "y": jnp.zeros(12)})
  except ValueError as e:
    errors["batch"] = str(e)
  try:
    sharding.shard_batch({"x": np.ones((12, T, I), np.float32)}, jax.make_mesh((8,), ("data",)))
  except ValueError as e:
    errors["shard_batch"] = str(e)
  try:
    mesh = jax.make_mesh((2, 4), ("data", "model"))
    sharding.shard_state(jaxrnn.gru(5).init(jax.random.key(0), 2), mesh, model_axis="model")
  except ValueError as e:
    errors["gate_columns"] = str(e)
  assert set(errors) == {"batch", "shard_batch", "gate_columns"}, errors
  report["errors"] = errors
  print("RESULT " + json.dumps(report))


P_REP = jax.sharding.PartitionSpec()
P_COL = jax.sharding.PartitionSpec(None, "model")
P_VEC = jax.sharding.PartitionSpec("model")

if __name__ == "__main__":
  main()
