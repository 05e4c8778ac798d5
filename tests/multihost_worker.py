"""Two processes, one mesh: sharded checkpoints and `fit` across hosts, run by test_multihost.py.

``XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/multihost_worker.py PHASE OUT
PORT PROCESS_ID``, started twice (process ids 0 and 1), runs `jax.distributed` on localhost over
2 x 4 CPU devices and writes ``OUT/report-PHASE-PROCESS_ID.json`` for the parent test to check.

Phase ``a``: trains a 1-layer LSTM for 8 steps on the (4 data x 2 model) mesh with
`jaxrnn.loop.fit` (the reference run, checkpointed every 4 steps; its gathered final state goes
to ``OUT/reference.npz``); saves that state again from a (1 x 8) mesh whose gate columns span
both processes; restores both checkpoints onto (2 x 4), onto this process's 4 devices and onto
one device, against the gathered reference; trains 4 steps on (4 x 2) and resumes on (2 x 4)
to 8; corrupts one chunk that only process 1 reads and restores; then starts run K on (4 x 2),
in which process 1 SIGKILLs itself while loading batch 5, so process 0 must be ended by
`jax.distributed`'s heartbeat check (it never writes a result after that).

Phase ``b``: resumes run K from step 4 to 8, to compare bit for bit with the reference; then
starts run P, in which process 1 SIGTERMs itself while loading batch 1, so both processes save
at the same step and raise `jaxrnn.loop.Preempted`.
"""

from __future__ import annotations

import json
import os
import signal
import sys

if __name__ == "__main__" and "jax" not in sys.modules:
  os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import NamedSharding, SingleDeviceSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from train_worker import signal_at  # noqa: E402  (tests/ is on the path, as for pytest)

import jaxrnn  # noqa: E402
from jaxrnn import checkpoint, loop, sharding, train  # noqa: E402

H, I, T, B, STEPS = 8, 3, 4, 8, 8
MODEL = jaxrnn.rnn_layers("lstm", H, num_layers=1)
OPT = optax.adam(1e-2)
NAMES = ("data", "model")
W_HH = ".params['rnn'][0].w_hh"  # split over the model axis: (8, 32) in (8, 4) columns


def loss_fn(params, batch):
  _, ys = MODEL.apply(params["rnn"], batch["x"])
  return jnp.mean(((ys[:, -1, :] @ params["w"])[:, 0] - batch["y"]) ** 2)


def initial_state():
  k_rnn, k_w = jax.random.split(jax.random.key(1))
  params = {"rnn": MODEL.init(k_rnn, I), "w": 0.3 * jax.random.normal(k_w, (H, 1))}
  return train.TrainState.create(params, OPT)


def global_batch(i):
  x = np.asarray(jax.random.normal(jax.random.fold_in(jax.random.key(2), i), (B, T, I)))
  return {"x": x, "y": x[:, :2, 0].sum(axis=1)}


def mesh(shape, devices=None):
  return jax.make_mesh(shape, NAMES, devices=devices if devices is not None else jax.devices())


_STEPS = {}


def run_fit(m, directory, num_steps, hook=None, checkpoint_every=4):
  """`fit` on mesh ``m``; ``batch_fn`` gives this process's rows; ``hook(i)`` before batch i."""
  if m.devices.shape not in _STEPS:
    _STEPS[m.devices.shape] = sharding.make_sharded_train_step(loss_fn, OPT, m, model_axis="model")
  rows = sharding.process_batch_rows(m, B)

  def batch_fn(i):
    if hook is not None:
      hook(i)
    return {k: v[rows] for k, v in global_batch(i).items()}

  return loop.fit(
    _STEPS[m.devices.shape], initial_state(), batch_fn, num_steps=num_steps, mesh=m,
    model_axis="model", checkpoint_dir=directory, checkpoint_every=checkpoint_every, keep=None,
    model=MODEL, metrics_path=directory + ".jsonl", log_every=1, progress=False,
  )  # fmt: skip


def gathered(tree):
  """Every leaf as one host array; arrays spanning processes are all-gathered by XLA first
  (one compiled identity onto a replicated layout, independent of jaxrnn.checkpoint)."""
  if not all(x.is_fully_addressable for x in jax.tree.leaves(tree) if isinstance(x, jax.Array)):
    everywhere = NamedSharding(jax.make_mesh((jax.device_count(),), ("all",)), P())
    tree = jax.jit(lambda t: t, out_shardings=everywhere)(tree)
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {jax.tree_util.keystr(path): np.asarray(x) for path, x in leaves}


def max_diff(a, b):
  assert a.keys() == b.keys()
  return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]), initial=0.0)) for k in a)


def bit_equal(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def targets():
  """Restore targets: (2 x 4) over both processes, this process's 4 devices, one device."""
  abstract = jax.eval_shape(initial_state)
  local = mesh((2, 2), jax.local_devices())
  out = {}
  for name, m in [("2x4", mesh((2, 4))), ("local2x2", local)]:
    sh = sharding.state_shardings(abstract, m, model_axis="model")
    out[name] = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                             abstract, sh)  # fmt: skip
  one = SingleDeviceSharding(jax.local_devices()[0])
  out["one_device"] = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one), abstract
  )
  return out


def restores(out, ref):
  """Both checkpoints (written from (4 x 2) and from (1 x 8)) onto every target, vs ``ref``."""
  result = {}
  for src in ("R", "m18"):
    for name, target in targets().items():
      state, info = checkpoint.restore(os.path.join(out, src), target, model=MODEL)
      placed = all(
        x.sharding == t.sharding
        for x, t in zip(jax.tree.leaves(state), jax.tree.leaves(target), strict=True)
      )
      result[f"{src}->{name}"] = {
        "bit_equal": bit_equal(gathered(state), ref),
        "placed": placed,
        "step": info["step"],
      }
  return result


def corrupted_restore(out):
  """Process 0 flips a byte of w_hh's chunk of columns 28:32 (device 7's, so only process 1
  reads it) in a copy of the (1 x 8) checkpoint; both restore it onto the (1 x 8) mesh."""
  import shutil

  import tensorstore as ts

  directory = os.path.join(out, "m18_corrupt")
  if jax.process_index() == 0:
    shutil.copytree(os.path.join(out, "m18"), directory)
    meta = checkpoint.read_metadata(directory)
    i = next(k for k, r in enumerate(meta["leaves"]) if r["path"] == W_HH)
    base = f"file://{os.path.abspath(directory)}/{STEPS}/state/"
    store = ts.KvStore.open({"driver": "ocdbt", "base": base}).result()
    key = f"leaf_{i:05d}/0.7"
    assert key.encode() in store.list().result(), store.list().result()
    value = bytearray(store.read(key).result().value)
    value[len(value) // 2] ^= 0xFF
    store.write(key, bytes(value)).result()
  multihost_utils.sync_global_devices("corrupted")
  abstract = jax.eval_shape(initial_state)
  sh = sharding.state_shardings(abstract, mesh((1, 8)), model_axis="model")
  target = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, sh
  )
  try:
    checkpoint.restore(directory, target, model=MODEL)
  except ValueError as e:
    return str(e)
  return None


def write_report(out, phase, report):
  with open(os.path.join(out, f"report-{phase}-{jax.process_index()}.json"), "w") as f:
    json.dump(report, f)


def phase_a(out):
  m42, m18 = mesh((4, 2)), mesh((1, 8))
  reference_state = run_fit(m42, os.path.join(out, "R"), STEPS)
  ref = gathered(reference_state)
  if jax.process_index() == 0:
    np.savez(os.path.join(out, "reference.npz"), **ref)
  sh18 = sharding.state_shardings(reference_state, m18, model_axis="model")
  state18 = jax.jit(lambda s: s, out_shardings=sh18)(reference_state)  # reshard, no host copy
  w_hh = state18.params["rnn"][0].w_hh
  report = {
    "w_hh_18": {
      "fully_addressable": w_hh.is_fully_addressable,
      "local_shards": sorted(tuple(s.index[1].indices(32)[:2]) for s in w_hh.addressable_shards),
    }
  }
  checkpoint.save(os.path.join(out, "m18"), STEPS, state18, model=MODEL)
  report["restores"] = restores(out, ref)
  run_fit(m42, os.path.join(out, "X"), 4)  # 4 steps on (4 x 2), then resumed on (2 x 4)
  report["resume_other_mesh_max_diff"] = max_diff(
    gathered(run_fit(mesh((2, 4)), os.path.join(out, "X"), STEPS)), ref
  )
  report["corrupt_error"] = corrupted_restore(out)
  write_report(out, "a", report)
  multihost_utils.sync_global_devices("report a")
  run_fit(m42, os.path.join(out, "K"), STEPS, hook=signal_at(5, signal.SIGKILL, process_index=1))
  write_report(out, "a", {**report, "unexpected": "fit returned after process 1 was killed"})


def phase_b(out):
  m42, directory = mesh((4, 2)), os.path.join(out, "K")
  report = {"resumed_from": checkpoint.latest_step(directory), "preempted_at": None}
  final = gathered(run_fit(m42, directory, STEPS))
  ref = dict(np.load(os.path.join(out, "reference.npz")))
  report["kill_resume_bit_equal"] = bit_equal(final, ref)
  # run P: a SIGTERM to process 1 alone while it loads batch 1; the preemption sync point is
  # reached on both processes at the same step, some steps later (it is asynchronous), long
  # before step 1000; both checkpoint that step and raise Preempted
  hook = signal_at(1, signal.SIGTERM, process_index=1)
  try:
    run_fit(m42, os.path.join(out, "P"), 1000, hook=hook, checkpoint_every=1000)
  except loop.Preempted as e:
    report["preempted_at"] = e.step
  report["steps_after_preemption"] = checkpoint.all_steps(os.path.join(out, "P"))
  write_report(out, "b", report)


def main():
  phase, out, port, process_id = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
  jax.config.update("jax_numpy_rank_promotion", "raise")
  jax.distributed.initialize(
    f"localhost:{port}", num_processes=2, process_id=process_id, heartbeat_timeout_seconds=10
  )
  assert jax.device_count() == 8 and jax.local_device_count() == 4, jax.devices()
  (phase_a if phase == "a" else phase_b)(out)


if __name__ == "__main__":
  main()
