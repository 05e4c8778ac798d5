"""jaxrnn.sharding: the same numbers as one device, the layout asked for, the eager errors.

Multi-device checks need ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` set
before jax is imported, which pytest has already done here, so they run in fresh
processes: tests/sharding_worker.py, and the scale experiment in ``--quick`` mode.
The in-process tests use this process's one CPU device.
"""

import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import processes
import pytest
from jax.sharding import PartitionSpec as P

import jaxrnn
from jaxrnn import sharding, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the workers import this checkout's jaxrnn, whatever is installed
EIGHT_DEVICES = processes.env(8, PYTHONPATH=ROOT)


def _run(args, timeout=300):
  proc = subprocess.run(
    [sys.executable, *args],
    cwd=ROOT,
    env=EIGHT_DEVICES,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc.stdout


def test_eight_devices_match_one_device_and_lay_out_as_asked():
  out = _run([os.path.join("tests", "sharding_worker.py")])
  line = next(x for x in out.splitlines() if x.startswith("RESULT "))
  report = json.loads(line[len("RESULT ") :])
  assert report["devices"] == 8
  assert set(report["meshes"]) == {"8", "4x2", "2x4"}
  for name, m in report["meshes"].items():
    assert m["max_param_diff"] < 1e-5, name
    assert abs(m["loss"] - report["reference_loss"]) < 1e-5, name
    assert m["hlo_all_reduce"], name
  # (8,): data parallel, parameters whole on every device; 16 examples, 2 per device.
  assert report["meshes"]["8"]["w_hh_spec"] == "P()"
  assert report["meshes"]["8"]["w_hh_shard_shapes"] == [[8, 32]]
  assert report["meshes"]["8"]["batch_shard_shapes"] == [[2, 6, 3]]
  # (4, 2) and (2, 4): LSTM w_hh (8, 4*8) split on its gate columns, Adam's moments alike,
  # the readout replicated.
  for name, k in [("4x2", 2), ("2x4", 4)]:
    m = report["meshes"][name]
    assert m["w_hh_spec"] == "P(None, 'model')"
    assert m["w_hh_shard_shapes"] == m["mu_w_hh_shard_shapes"] == [[8, 32 // k]]
    assert m["readout_shard_shapes"] == [[8, 1]]
    assert m["batch_shard_shapes"] == [[16 // (8 // k), 6, 3]]
  assert report["gru_w_hh_shard_shapes"] == [[6, 9]]
  errors = report["errors"]
  for key in ("batch", "shard_batch"):
    assert "batch size 12" in errors[key] and "of size 8" in errors[key]
  assert "15" in errors["gate_columns"] and "of size 4" in errors["gate_columns"]


def test_scale_experiment_quick(tmp_path):
  started = time.perf_counter()
  out = _run(["-m", "experiments.scale", "--quick", "--out", str(tmp_path), "--no-progress"])
  wall = time.perf_counter() - started  # this test's own clock
  assert "not a speedup" in out
  record = json.loads((tmp_path / "scale" / "scale.json").read_text())
  rows = record["results"]["rows"]
  assert [r["devices"] for r in rows] == [1, 2, 4, 8]
  losses = [r["final_loss"] for r in rows]
  np.testing.assert_allclose(losses, losses[0], rtol=1e-5)
  assert all(r["max_param_diff"] < 1e-5 for r in rows)
  # Throughput against a clock the experiment does not own: --quick runs 3 steps of a global
  # batch of 16 per mesh, the first one (compiling) apart and the median over the other two, so
  # every mesh's two timed steps (2 x 16 examples at the recorded rate) and its compile lie
  # inside the subprocess's wall time.
  assert all(r["step_ms"] > 0 and r["samples_per_s"] > 0 for r in rows)
  assert sum(2 * 16 / r["samples_per_s"] + r["compile_s"] for r in rows) < wall
  assert sum(2 * r["step_ms"] / 1e3 for r in rows) < wall
  one = [r for r in rows if r["devices"] == 1]
  assert one and all(r["samples_per_s_per_device"] == r["samples_per_s"] for r in one)
  assert all(r["samples_per_s_per_device"] < r["samples_per_s"] for r in rows if r["devices"] > 1)
  assert record["passed"] and record["quick"]


# ------------------------------------------------------------------ one device, in process


def _loss_fn(cell):
  def loss_fn(params, batch):
    _, ys = jaxrnn.scan(cell, params["rnn"], batch["x"], unroll=1)
    return jnp.mean((ys[:, -1, :] @ params["w"] - batch["y"][:, None]) ** 2)

  return loss_fn


def test_one_device_mesh_equals_make_train_step():
  cell = jaxrnn.gru(4)
  opt = optax.sgd(0.1, momentum=0.9)
  params = {"rnn": cell.init(jax.random.key(0), 2), "w": jnp.ones((4, 1))}
  batch = {"x": jax.random.normal(jax.random.key(1), (4, 5, 2)), "y": jnp.arange(4.0)}
  mesh = jax.make_mesh((1, 1), ("data", "model"))
  ref, ref_m = train.make_train_step(_loss_fn(cell), opt)(
    train.TrainState.create(params, opt), batch
  )
  step = sharding.make_sharded_train_step(_loss_fn(cell), opt, mesh, model_axis="model")
  got, got_m = step(train.TrainState.create(params, opt), batch)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(got_m["loss"], ref_m["loss"], rtol=1e-6)
  assert got.params["rnn"].b_hn.sharding.spec == P("model")
  assert got.opt_state[0].trace["rnn"].w_hh.sharding.spec == P(None, "model")
  assert got.params["w"].sharding.spec == P()
  assert "sharding" in step.lower(got, batch).as_text()  # the layout is in the program


def test_optimizer_state_shardings_follow_the_params():
  mesh = jax.make_mesh((1, 1), ("data", "model"))
  model = jaxrnn.rnn_layers("lstm", 4, num_layers=2, proj_size=2)
  params = {"rnn": model.init(jax.random.key(0), 3), "w": jnp.ones((2, 1))}
  opt = optax.chain(optax.add_decayed_weights(1e-4), optax.adamw(1e-3), optax.ema(0.9))
  state = jax.eval_shape(lambda p: train.TrainState.create(p, opt), params)
  sh = sharding.state_shardings(state, mesh, model_axis="model")
  col, rep = P(None, "model"), P()
  for layer in sh.params["rnn"]:
    assert (layer.w_ih.spec, layer.w_hh.spec, layer.b.spec) == (col, col, P("model"))
    assert layer.w_proj.spec == rep
  adam = sh.opt_state[1][0]
  assert adam.count.spec == rep
  assert adam.mu["rnn"][1].w_hh.spec == adam.nu["rnn"][1].w_hh.spec == col
  assert adam.mu["w"].spec == rep
  assert sh.opt_state[2].ema["rnn"][0].b.spec == P("model")
  assert sh.step.spec == rep
  assert jax.tree.structure(sh) == jax.tree.structure(state)


def test_elman_and_bare_params():
  mesh = jax.make_mesh((1,), ("model",))
  params = jaxrnn.elman(6, output_size=2).init(jax.random.key(0), 3)
  sh = sharding.state_shardings(params, mesh, model_axis="model")
  assert (sh.w_ih.spec, sh.w_hh.spec, sh.b.spec) == (P(None, "model"), P(None, "model"), P("model"))
  assert (sh.w_out.spec, sh.b_out.spec) == (P(), P())
  replicated = sharding.state_shardings(params, mesh)
  assert all(s.spec == P() for s in jax.tree.leaves(replicated))


def test_batch_shardings_and_rows():
  mesh = jax.make_mesh((1,), ("data",))
  batch = {"x": jnp.ones((6, 3, 2)), "key": jax.random.key(0), "t": jnp.float32(1.0)}
  sh = sharding.batch_shardings(batch, mesh)
  assert (sh["x"].spec, sh["key"].spec, sh["t"].spec) == (P("data"), P(), P())
  placed = sharding.shard_batch({"x": np.ones((6, 2), np.float32)}, mesh, process_local=True)
  assert placed["x"].shape == (6, 2) and placed["x"].sharding.spec == P("data")
  assert sharding.process_batch_rows(mesh, 6) == slice(0, 6)
  both = sharding.batch_shardings(batch, jax.make_mesh((1, 1), ("a", "b")), ("a", "b"))
  assert both["x"].spec == P(("a", "b"))


def test_errors_name_the_bad_value():
  mesh = jax.make_mesh((1, 1), ("data", "model"))
  opt = optax.sgd(0.1)
  loss = _loss_fn(jaxrnn.lstm(4))
  with pytest.raises(ValueError, match="mesh=dict"):
    sharding.make_sharded_train_step(loss, opt, {})
  with pytest.raises(ValueError, match=r"data_axis='batch' is not an axis.*\('data', 'model'\)"):
    sharding.make_sharded_train_step(loss, opt, mesh, data_axis="batch")
  with pytest.raises(ValueError, match="model_axis='hidden' is not an axis"):
    sharding.make_sharded_train_step(loss, opt, mesh, model_axis="hidden")
  with pytest.raises(ValueError, match="model_axis='data' is also in data_axis"):
    sharding.make_sharded_train_step(loss, opt, mesh, model_axis="data")
  with pytest.raises(ValueError, match="optimizer=str"):
    sharding.make_sharded_train_step(loss, "adam", mesh)
  step = sharding.make_sharded_train_step(loss, opt, mesh)
  with pytest.raises(ValueError, match="state is a dict; expected a jaxrnn.train.TrainState"):
    step({"w": jnp.ones(2)}, {"x": jnp.ones((2, 3, 1)), "y": jnp.ones(2)})
  with pytest.raises(ValueError, match="global_batch_size=0"):
    sharding.process_batch_rows(mesh, 0)


def test_two_processes_match_one_device(tmp_path):
  """Multi-host on one machine: 2 processes x 4 CPU devices, jax.distributed over gloo."""

  from experiments import scale

  with jax.numpy_dtype_promotion("standard"):  # optax.adam: float ** int32, as in test_train
    ref = scale.main(["--quick", "--devices", "1", "--out", str(tmp_path / "one"), "--no-progress"])
  port = processes.free_port()
  env = processes.env(4)
  cmd = [sys.executable, "-m", "experiments.scale", "--steps", "3", "--batch", "16"]
  cmd += [
    "--length",
    "8",
    "--hidden",
    "16",
    "--layers",
    "1",
    "--out",
    str(tmp_path / "two"),
    "--no-progress",
  ]
  cmd += ["--coordinator", f"localhost:{port}", "--num-processes", "2"]
  codes, outs = processes.run_two(
    lambda i: cmd + ["--process-id", str(i)], env=env, timeout=300, cwd=ROOT
  )
  assert codes == [0, 0], outs
  rows = json.loads((tmp_path / "two" / "scale" / "scale.json").read_text())["results"]["rows"]
  assert [(r["devices"], r["mesh"]) for r in rows] == [(8, "8x1"), (8, "4x2")]
  one = ref["results"]["rows"][0]["final_loss"]
  for r in rows:
    np.testing.assert_allclose(r["final_loss"], one, rtol=1e-5)


def test_sharded_step_on_a_model_axis_equals_make_train_step():
  """`make_sharded_train_step` with a model axis: on one device, `make_train_step`'s numbers."""

  from jaxrnn.train import TrainState, make_train_step

  model = jaxrnn.rnn_layers("gru", 8)

  def loss(params, batch):
    _, ys = model.apply(params, batch["x"])
    return jnp.mean((ys[:, -1, 0] - batch["y"]) ** 2)

  opt = optax.sgd(0.1)
  params = model.init(jax.random.key(0), 3)
  batch = {"x": jax.random.normal(jax.random.key(1), (4, 5, 3)), "y": jnp.ones(4)}
  mesh = jax.make_mesh((1, 1), ("data", "model"))
  plain = make_train_step(loss, opt)(TrainState.create(params, opt), batch)[0]
  sharded = sharding.make_sharded_train_step(loss, opt, mesh, model_axis="model")(
    TrainState.create(params, opt), batch
  )[0]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), plain, sharded)
  assert sharded.params[0].w_hh.sharding.spec == jax.sharding.PartitionSpec(None, "model")
  with pytest.raises(TypeError, match="mesh"):
    make_train_step(loss, opt, mesh=mesh)  # the mesh is make_sharded_train_step's alone
