"""Scaling out: the same LSTM trained on 1, 2, 4 and 8 devices with `jaxrnn.sharding`.

A 2-layer LSTM (``--layers``, ``--hidden`` 64 units) with a linear readout of its last output
regresses the mean of the first four values of channel 0 of a random sequence
(``--batch`` sequences of ``--length`` steps, 4 channels, N(0, 1)); Adam
(learning rate 3e-3), global-norm clipping 1, ``--steps`` steps, one fixed
batch per step from ``fold_in(key(seed), step)``. For each device count n the
global batch is split over a ``(n,)`` data mesh
(`jaxrnn.sharding.make_sharded_train_step`, XLA inserts the gradient's
all-reduce); without ``--quick``, n >= 4 also runs on an ``(n/2, 2)``
data x model mesh with the LSTM's gate columns split over the model axis.
Every run starts from the same parameters and sees the same batches, so the
final loss must be the same for every mesh (PASS: within 1e-4, relative, of
the one-device run; float summation order is the only difference).

Timing: the first step (compilation) is timed apart; then each step is timed
to completion (``block_until_ready``); we report the median step time, the
samples per second (global batch / median step time) and samples per second
per device.

Devices: on a CPU-only machine the script makes 8 host devices by adding
``--xla_force_host_platform_device_count=8`` to ``XLA_FLAGS`` in
``os.environ`` at the very top of this module, before jax is imported, when
the variable does not already set a count (it does not re-execute itself; if
jax was imported before this module, counts above ``jax.device_count()`` are
skipped with a note). On one multi-core CPU those 8 "devices" are threads
sharing the same cores: the table shows the mechanism and its overhead, not a
speedup. On a host with 8 GPUs the same command measures real scaling.

Multi-host: run the same command on every host with ``--coordinator
HOST0:PORT --num-processes N --process-id I`` (`jax.distributed.initialize`);
only the mesh over all processes' devices is measured there, and each process
feeds its own rows of every batch (``shard_batch(..., process_local=True)``).

``python -m experiments.scale [--quick] [--devices 1 2 4 8] [--out results]``
writes ``results/scale/scale.json`` and ``scale.png``.
"""

from __future__ import annotations

import os
import sys

_FLAG = "--xla_force_host_platform_device_count"
if "jax" not in sys.modules and _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" {_FLAG}=8").strip()

import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jaxrnn  # noqa: E402
from experiments import harness, training  # noqa: E402
from jaxrnn import sharding  # noqa: E402

NAME = "scale"
INPUT_SIZE = 4
LOSS_RTOL = 1e-4
NOTE = (
  "On one CPU the 'devices' made by --xla_force_host_platform_device_count are threads "
  "sharing the same cores: this shows the sharding mechanism and its overhead, not a speedup."
)


def make_model(hidden: int, layers: int):
  return jaxrnn.rnn_layers("lstm", hidden, num_layers=layers, unroll=1)


def initial_params(model, hidden: int, seed: int):
  k_rnn, k_out = jax.random.split(jax.random.key(seed))
  return {
    "rnn": model.init(k_rnn, INPUT_SIZE),
    "w": jax.random.normal(k_out, (hidden, 1)) / np.sqrt(hidden),
  }


def make_loss(model):
  def loss_fn(params, batch):
    _, ys = model.apply(params["rnn"], batch["x"], deterministic=True)
    pred = ys[:, -1, :] @ params["w"]
    return jnp.mean((pred[:, 0] - batch["y"]) ** 2)

  return loss_fn


def make_batch(seed: int, step: int, batch: int, length: int) -> dict[str, np.ndarray]:
  """The global batch of step ``step``, as NumPy (the same on every host)."""
  x = jax.random.normal(jax.random.fold_in(jax.random.key(seed), step), (batch, length, INPUT_SIZE))
  x = np.asarray(x)
  return {"x": x, "y": x[:, :4, 0].mean(axis=1)}


def run_mesh(args, shape: tuple[int, ...], devices) -> dict:
  """Trains on one mesh; returns its timings, final loss and parameters."""
  names = ("data",) if len(shape) == 1 else ("data", "model")
  model_axis = None if len(shape) == 1 else "model"
  mesh = jax.make_mesh(shape, names, devices=devices)
  model = make_model(args.hidden, args.layers)
  opt = optax.adam(3e-3)
  step = sharding.make_sharded_train_step(
    make_loss(model), opt, mesh, model_axis=model_axis, max_grad_norm=1.0, donate=True
  )
  state = training.TrainState.create(initial_params(model, args.hidden, args.seed), opt)
  state = sharding.shard_state(state, mesh, model_axis=model_axis)
  multi = jax.process_count() > 1
  if multi:
    rows = sharding.process_batch_rows(mesh, args.batch)

  def place(i):
    batch = make_batch(args.seed + 1, i, args.batch, args.length)
    if multi:
      return sharding.shard_batch({k: v[rows] for k, v in batch.items()}, mesh, process_local=True)
    return sharding.shard_batch(batch, mesh)

  batches = [place(i) for i in range(args.steps)]  # on the devices before the clock starts
  times, compile_s, metrics = [], 0.0, None
  for i, batch in enumerate(batches):
    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    dt = time.perf_counter() - t0
    if i == 0:
      compile_s = dt
    else:
      times.append(dt)
  median = statistics.median(times) if times else compile_s
  n = int(np.prod(shape))
  if multi:  # the params are replicated or sharded over all hosts: gather them
    from jax.experimental import multihost_utils

    params = multihost_utils.process_allgather(state.params, tiled=True)
  else:
    params = jax.tree.map(lambda a: np.asarray(jax.device_get(a)), state.params)
  return {
    "devices": n,
    "mesh": "x".join(map(str, shape if len(shape) == 2 else shape + (1,))),
    "model_axis": model_axis,
    "step_ms": 1e3 * median,
    "samples_per_s": args.batch / median,
    "samples_per_s_per_device": args.batch / median / n,
    "compile_s": compile_s,
    "final_loss": float(metrics["loss"]),
    "w_hh_shard_shape": list(state.params["rnn"][0].w_hh.addressable_shards[0].data.shape),
    "_params": params,
  }


def meshes(args) -> list[tuple[int, ...]]:
  if jax.process_count() > 1:  # every process must take part in every mesh: all devices
    n = jax.device_count()
    return [(n,)] + ([] if args.quick or n < 4 else [(n // 2, 2)])
  out = []
  for n in args.devices:
    if n > jax.device_count():
      print(f"  skipping {n} devices: only {jax.device_count()} here (set XLA_FLAGS first)")
      continue
    out.append((n,))
  for n in args.devices:
    if not args.quick and 4 <= n <= jax.device_count():
      out.append((n // 2, 2))
  return out


def run(args) -> dict:
  if args.coordinator is not None:
    jax.distributed.initialize(
      coordinator_address=args.coordinator,
      num_processes=args.num_processes,
      process_id=args.process_id,
    )
  rows, params = [], []
  for shape in meshes(args):
    n = int(np.prod(shape))
    row = run_mesh(args, shape, jax.devices()[:n])
    params.append(row.pop("_params"))
    rows.append(row)
  ref_loss = rows[0]["final_loss"]
  for row, p in zip(rows, params, strict=True):
    row["loss_rel_diff"] = abs(row["final_loss"] - ref_loss) / abs(ref_loss)
    row["max_param_diff"] = max(
      float(np.max(np.abs(a - b)))
      for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(params[0]), strict=True)
    )
  print_table(rows, args)
  return {
    "rows": rows,
    "note": NOTE,
    "platform": jax.default_backend(),
    "device_kind": jax.devices()[0].device_kind,
    "process_count": jax.process_count(),
    "cpu_count": os.cpu_count(),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def checks(results, args) -> list[dict]:
  """The final loss of every mesh equal to the first's, up to float summation order."""
  rows = results["rows"]
  worst = max(r["loss_rel_diff"] for r in rows)
  return [
    harness.check(
      "final loss equal across meshes (max relative difference)",
      worst,
      0.0,
      f"the {rows[0]['mesh']} run, same init and batches",
      worst <= LOSS_RTOL,
      f"relative difference <= {LOSS_RTOL:g}",
    )
  ]


def print_table(rows, args) -> None:
  if jax.process_index() != 0:
    return
  print(
    f"LSTM {args.layers}x{args.hidden}, global batch {args.batch}, T={args.length}, "
    f"{args.steps} steps, {jax.default_backend()} ({os.cpu_count()} cores)"
  )
  print(f"  {NOTE}")
  header = ("devices", "mesh (data x model)", "step ms", "samples/s", "samples/s/device")
  header += ("compile s", "final loss", "max abs param diff vs first")
  cells = [
    (
      str(r["devices"]),
      r["mesh"],
      f"{r['step_ms']:.1f}",
      f"{r['samples_per_s']:.0f}",
      f"{r['samples_per_s_per_device']:.0f}",
      f"{r['compile_s']:.1f}",
      f"{r['final_loss']:.6f}",
      f"{r['max_param_diff']:.1e}",
    )
    for r in rows
  ]
  print("\n".join(harness.md_table(header, cells, align="rlrrrrrr")))


def figure(plt, results, args):
  rows = results["rows"]
  title = f"jaxrnn.sharding on {jax.default_backend()}: mechanism, not speedup"
  fig, ax = harness.axes(plt, (5.5, 3.5), "devices", "samples / s", title, fontsize=9)
  for axis in (None, "model"):
    sel = [r for r in rows if r["model_axis"] == axis]
    if sel:
      label = "data parallel" if axis is None else "data x model (2)"
      ax.plot([r["devices"] for r in sel], [r["samples_per_s"] for r in sel], "o-", label=label)
  ax.set_xscale("log", base=2)
  ax.legend()
  return fig


FLAGS = {
  "devices": harness.flag([1, 2, 4, 8], "device counts"),
  "steps": harness.flag(30, "training steps per mesh"),
  "batch": harness.flag(256, "global batch size"),
  "length": harness.flag(32, "sequence length"),
  "hidden": harness.flag(64, "LSTM hidden size"),
  "layers": harness.flag(2, "LSTM layers"),
  "coordinator": harness.flag(None, "multi-host: HOST0:PORT of process 0"),
  "num_processes": harness.flag(None, "multi-host: process count", type=int),
  "process_id": harness.flag(None, "multi-host: this process's id", type=int),
}
QUICK = dict(steps=3, batch=16, length=8, hidden=16, layers=1)
SPEC = harness.Spec(NAME, __doc__, run, checks, FLAGS, QUICK, figure)


main = SPEC.main


if __name__ == "__main__":
  main()
