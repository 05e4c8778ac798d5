"""Two processes x 4 CPU devices over `jax.distributed`: sharded checkpoints, `fit`, faults.

tests/multihost_worker.py runs every two-process scenario in two launches (the second is the
restart after a SIGKILL) and reports what it measured; this test checks the reports, then adds
the single-process check: the same checkpoints restored here, onto this process's one device.
"""

import json
import os
import signal
import sys

import jax
import multihost_worker
import numpy as np
import processes
import pytest

from jaxrnn import checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))
# this checkout's jaxrnn, whatever is installed
ENV = processes.env(4, JAX_PLATFORMS="cpu", PYTHONPATH=os.path.dirname(HERE))
STEPS = multihost_worker.STEPS
DAMAGE = (
  r"\.params\['rnn'\]\[0\]\.w_hh (shard \[0:8, 28:32\] does not match its recorded SHA-256|"
  r"cannot be read)"
)


def _launch(phase, out):
  port = processes.free_port()
  worker = os.path.join(HERE, "multihost_worker.py")
  command = lambda i: [sys.executable, worker, phase, str(out), str(port), str(i)]  # noqa: E731
  codes, outs = processes.run_two(command, env=ENV, timeout=600)
  reports = []
  for i in range(2):
    path = out / f"report-{phase}-{i}.json"
    reports.append(json.loads(path.read_text()) if path.exists() else None)
  return codes, outs, reports


def _steps(jsonl):
  return [json.loads(line)["step"] for line in jsonl.read_text().splitlines()]


def _check_phase_a(reports):
  for r in reports:
    assert "unexpected" not in r
    assert len(r["restores"]) == 6, r["restores"]  # {R, m18} x {2x4, local 2x2, one device}
    for name, result in r["restores"].items():
      assert result == {"bit_equal": True, "placed": True, "step": STEPS}, name
    assert r["resume_other_mesh_max_diff"] < 1e-6
    assert not r["w_hh_18"]["fully_addressable"]
  # on the (1 x 8) mesh w_hh's gate columns lie on both processes: 0:16 here, 16:32 there
  assert reports[0]["w_hh_18"]["local_shards"] == [[0, 4], [4, 8], [8, 12], [12, 16]]
  assert reports[1]["w_hh_18"]["local_shards"] == [[16, 20], [20, 24], [24, 28], [28, 32]]
  # a corrupted chunk that only process 1 reads: the same ValueError on both processes
  assert reports[0]["corrupt_error"] == reports[1]["corrupt_error"]
  with pytest.raises(ValueError, match=DAMAGE + r".*\(found by process 1 of 2\)"):
    raise ValueError(reports[0]["corrupt_error"])


def _check_single_process(out):
  """This process (one device) restores what the two processes wrote, bit-exact."""
  ref = dict(np.load(out / "reference.npz"))
  with jax.numpy_dtype_promotion("standard"):
    target = multihost_worker.initial_state()
  for src in ("R", "m18"):
    state, info = checkpoint.restore(out / src, target, model=multihost_worker.MODEL)
    assert info["step"] == STEPS
    assert multihost_worker.bit_equal(multihost_worker.gathered(state), ref), src
  with pytest.raises(ValueError, match=DAMAGE) as err:
    checkpoint.restore(out / "m18_corrupt", target, model=multihost_worker.MODEL)
  assert "found by process" not in str(err.value)


def test_two_processes_checkpoint_restore_resume_and_faults(tmp_path):
  codes, outs, reports = _launch("a", tmp_path)
  # run K: process 1 SIGKILLed itself; process 0 is stopped by jax.distributed (its collective
  # fails, its heartbeat check ends it with a message naming the dead task), never left hanging
  assert codes[1] == -signal.SIGKILL, outs[1][-3000:]
  assert codes[0] not in (0, None) and "another task died" in outs[0], outs[0][-3000:]
  assert "heartbeat" in outs[0]
  _check_phase_a(reports)
  assert _steps(tmp_path / "R.jsonl") == list(range(1, STEPS + 1))  # process 0 alone writes metrics
  _check_single_process(tmp_path)

  codes, outs, reports = _launch("b", tmp_path)  # the restart
  assert codes == [0, 0], [o[-3000:] for o in outs]
  assert reports[0]["preempted_at"] == reports[1]["preempted_at"]
  for r in reports:
    assert r["resumed_from"] == 4
    assert r["kill_resume_bit_equal"]  # resumed after the SIGKILL: bit for bit
    # run P: SIGTERM to process 1 alone while it loads batch 1: both saved the same step
    assert r["preempted_at"] in range(2, 1000)
    assert r["steps_after_preemption"] == [r["preempted_at"]]
  assert _steps(tmp_path / "K.jsonl") == list(range(1, STEPS + 1))
