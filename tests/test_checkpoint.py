"""jaxrnn.checkpoint: exact round trip, atomic under SIGKILL, no unpickling, config checks."""

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrnn
from jaxrnn import checkpoint


def _state(cell, seed=0, input_size=3):
  params = cell.init(jax.random.key(seed), input_size)
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
  return {
    "params": params,
    "opt_state": opt.init(params),
    "key": jax.random.key(seed + 7),
    "step": jnp.int32(12),
  }


def _assert_same(a, b):
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for x, y in zip(la, lb, strict=True):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    assert np.array_equal(np.asarray(x), np.asarray(y))


def _largest_file(root):
  files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
  return max(files, key=os.path.getsize)


def test_round_trip_is_exact_and_records_version_and_config(tmp_path):
  cell = jaxrnn.lstm(8, proj_size=4, forget_bias=2.0)  # w_proj present
  state = _state(cell)
  checkpoint.save(tmp_path, 12, state, model=cell, metadata={"seed": 0, "lr": 1e-3})
  restored, info = checkpoint.restore(tmp_path, jax.tree.map(jnp.zeros_like, state), model=cell)
  _assert_same(state, restored)
  assert info["step"] == 12 and info["jaxrnn_version"] == jaxrnn.__version__
  config = checkpoint.model_spec(cell)["config"]
  assert info["model"] == {"name": "lstm", "config": config, "settings": {}}
  assert info["model"]["config"]["forget_bias"] == 2.0
  assert info["metadata"] == {"seed": 0, "lr": 1e-3}
  assert checkpoint.read_metadata(tmp_path)["model"]["config"]["proj_size"] == 4
  # sequence models and ShapeDtypeStruct targets too
  model = jaxrnn.rnn_layers("gru", 5, num_layers=2, bidirectional=True)
  params = model.init(jax.random.key(1), 3)
  checkpoint.save(tmp_path / "seq", 0, params, model=model)
  restored, _ = checkpoint.restore(tmp_path / "seq", jax.eval_shape(lambda: params), model=model)
  _assert_same(params, restored)


def test_steps_keep_and_errors(tmp_path):
  cell = jaxrnn.gru(4)
  params = cell.init(jax.random.key(0), 2)
  for step in (1, 2, 3):
    checkpoint.save(tmp_path, step, jax.tree.map(lambda x, s=step: x + s, params), keep=2)
  assert checkpoint.all_steps(tmp_path) == [2, 3]
  restored, info = checkpoint.restore(tmp_path, params, step=2)
  assert info["step"] == 2
  np.testing.assert_array_equal(restored.w_hh, params.w_hh + 2)
  with pytest.raises(ValueError, match="step 3 already exists"):
    checkpoint.save(tmp_path, 3, params)
  with pytest.raises(ValueError, match="step=-1"):
    checkpoint.save(tmp_path, -1, params)
  with pytest.raises(ValueError, match=r"step=1 is not in .* holds steps \[2, 3\]"):
    checkpoint.restore(tmp_path, params, step=1)
  with pytest.raises(ValueError, match="missing"):
    checkpoint.restore(tmp_path / "nope", params)
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="holds no complete checkpoint"):
    checkpoint.restore(tmp_path / "empty", params)
  assert checkpoint.latest_step(tmp_path / "nope") is None


@pytest.mark.parametrize(
  ("saved", "loaded", "message"),
  [
    (jaxrnn.lstm(8), jaxrnn.lstm(16), "config.hidden_size: checkpoint has 8, model has 16"),
    (jaxrnn.lstm(8), jaxrnn.gru(8), "name: checkpoint has 'lstm', model has 'gru'"),
    (jaxrnn.lstm(8), jaxrnn.lstm(8, forget_bias=0.0), "config.forget_bias: checkpoint has 1.0"),
    (
      jaxrnn.elman(8),
      jaxrnn.elman(8, activation="relu"),
      "config.activation: checkpoint has 'tanh', model has 'relu'",
    ),
    (
      jaxrnn.rnn_layers("lstm", 8, num_layers=2),
      jaxrnn.rnn_layers("lstm", 8, num_layers=3),
      "config.num_layers: checkpoint has 2, model has 3",
    ),
    (
      jaxrnn.rnn_layers("lstm", 8),
      jaxrnn.rnn_layers("lstm", 8, proj_size=4),
      "config.cell_config.proj_size: checkpoint has None, model has 4",
    ),
  ],
)
def test_mismatched_config_names_the_field(tmp_path, saved, loaded, message):
  params = saved.init(jax.random.key(0), 3)
  checkpoint.save(tmp_path, 0, params, model=saved)
  with pytest.raises(ValueError, match="saved for a different model") as err:
    checkpoint.restore(tmp_path, params, model=loaded)
  assert message in str(err.value)


class _ModelLike(NamedTuple):
  """What checkpoints read of a model: its name, its math (config), its execution settings."""

  name: str
  config: tuple
  settings: tuple


def test_settings_are_recorded_and_never_checked(tmp_path):
  config = (("hidden_size", 8), ("dtype", "float32"))
  saved = _ModelLike("lstm", config, (("remat", None),))
  params = jaxrnn.lstm(8).init(jax.random.key(0), 3)
  checkpoint.save(tmp_path, 0, params, model=saved)
  assert checkpoint.read_metadata(tmp_path)["model"]["settings"] == {"remat": None}
  # another remat (an execution setting) restores; the record keeps what was saved
  restored, info = checkpoint.restore(
    tmp_path, params, model=saved._replace(settings=(("remat", 4),))
  )
  _assert_same(params, restored)
  assert info["model"]["settings"] == {"remat": None}
  # a config difference is still the same error as without settings
  other = _ModelLike("lstm", (("hidden_size", 16), ("dtype", "float32")), (("remat", 4),))
  with pytest.raises(ValueError, match="saved for a different model") as err:
    checkpoint.restore(tmp_path, params, model=other)
  assert "config.hidden_size: checkpoint has 8, model has 16" in str(err.value)
  with pytest.raises(
    ValueError, match="config.dtype: checkpoint has 'float32', model has 'bfloat16'"
  ):
    checkpoint.restore(
      tmp_path, params, model=saved._replace(config=(("hidden_size", 8), ("dtype", "bfloat16")))
    )


def test_a_record_without_settings_still_restores(tmp_path, monkeypatch):
  """Checkpoints written before settings were recorded: ``{"name", "config"}`` only."""
  cell = jaxrnn.gru(4)
  params = cell.init(jax.random.key(0), 2)
  old = {"name": "gru", "config": checkpoint.model_spec(cell)["config"]}
  with monkeypatch.context() as m:
    m.setattr(checkpoint.saving, "model_spec", lambda model: old)
    checkpoint.save(tmp_path, 0, params, model=cell)
  assert checkpoint.read_metadata(tmp_path)["model"] == old
  model = _ModelLike("gru", cell.config, (("remat", 4),))
  restored, _ = checkpoint.restore(tmp_path, params, model=model)
  _assert_same(params, restored)
  with pytest.raises(ValueError, match="config.hidden_size: checkpoint has 4, model has 5"):
    checkpoint.restore(tmp_path, params, model=jaxrnn.gru(5))


def test_model_spec_settings_must_be_pairs():
  with pytest.raises(ValueError, match=r"settings=3: expected \(name, value\) pairs"):
    checkpoint.model_spec(_ModelLike("lstm", (), 3))
  spec = checkpoint.model_spec({"name": "x", "config": {}, "settings": {"unroll": 2}})
  assert spec == {"name": "x", "config": {}, "settings": {"unroll": 2}}


def test_mismatched_tree_names_the_leaf(tmp_path):
  params = jaxrnn.lstm(8).init(jax.random.key(0), 3)
  checkpoint.save(tmp_path, 0, params)
  other = jaxrnn.lstm(8).init(jax.random.key(0), 5)
  with pytest.raises(ValueError, match=r"\.w_ih has shape \(3, 32\) .* target has shape \(5, 32\)"):
    checkpoint.restore(tmp_path, other)
  with pytest.raises(ValueError, match="has 3 arrays; target has 2"):
    checkpoint.restore(tmp_path, jaxrnn.lstm(8, use_bias=False).init(jax.random.key(0), 3))
  as_f16 = jax.tree.map(lambda x: x.astype(jnp.float16), params)
  with pytest.raises(ValueError, match="dtype float32; target has .* dtype float16"):
    checkpoint.restore(tmp_path, as_f16)


class _Payload:
  """Unpickling this creates the marker file: proof that code ran."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_never_run(tmp_path):
  marker = tmp_path / "pwned"
  poison = pickle.dumps(_Payload(str(marker)))
  # the payload is live: unpickling it does create a marker
  live = tmp_path / "live"
  pickle.loads(pickle.dumps(_Payload(str(live)))).close()
  assert live.exists()

  cell = jaxrnn.gru(4)
  params = cell.init(jax.random.key(0), 2)
  # 1. a pickle file where a checkpoint directory should be
  (tmp_path / "model.pkl").write_bytes(poison)
  with pytest.raises(ValueError, match="is a file; expected a checkpoint directory"):
    checkpoint.restore(tmp_path / "model.pkl", params)
  # 2. a directory holding only a pickle
  (tmp_path / "pkl_dir").mkdir()
  (tmp_path / "pkl_dir" / "checkpoint.pkl").write_bytes(poison)
  with pytest.raises(ValueError, match="no complete checkpoint"):
    checkpoint.restore(tmp_path / "pkl_dir", params)
  # 3. a real checkpoint whose JSON record was replaced by the pickle
  checkpoint.save(tmp_path / "c1", 1, params, model=cell)
  (tmp_path / "c1" / "1" / "meta" / "metadata").write_bytes(poison)
  with pytest.raises(ValueError, match="record is not valid jaxrnn JSON"):
    checkpoint.restore(tmp_path / "c1", params, model=cell)
  # 4. a real checkpoint whose array data were replaced by the pickle
  checkpoint.save(tmp_path / "c2", 1, params, model=cell)
  with open(_largest_file(tmp_path / "c2" / "1" / "state"), "wb") as f:
    f.write(poison)
  with pytest.raises(ValueError, match="cannot be read|SHA-256"):
    checkpoint.restore(tmp_path / "c2", params, model=cell)
  assert not marker.exists()


def test_truncated_files_raise_value_error(tmp_path):
  cell = jaxrnn.lstm(32)
  params = cell.init(jax.random.key(0), 8)
  checkpoint.save(tmp_path / "a", 1, params, model=cell)
  data = _largest_file(tmp_path / "a" / "1" / "state")
  with open(data, "r+b") as f:
    f.truncate(os.path.getsize(data) // 2)
  with pytest.raises(ValueError, match="cannot be read|SHA-256"):
    checkpoint.restore(tmp_path / "a", params, model=cell)

  checkpoint.save(tmp_path / "b", 1, params, model=cell)
  record = tmp_path / "b" / "1" / "meta" / "metadata"
  record.write_bytes(record.read_bytes()[:100])
  with pytest.raises(ValueError, match="record is not valid jaxrnn JSON"):
    checkpoint.restore(tmp_path / "b", params, model=cell)

  # bytes that still decode but differ from what was written are caught by the written
  # shard's SHA-256 (here the record's digest is altered instead of the data)
  checkpoint.save(tmp_path / "c", 1, params, model=cell)
  meta = checkpoint.read_metadata(tmp_path / "c")
  assert meta["leaves"][0]["shards"][0]["index"] == [[0, 8], [0, 128]]
  meta_path = tmp_path / "c" / "1" / "meta" / "metadata"
  text = meta_path.read_text()
  sha = meta["leaves"][0]["shards"][0]["sha256"]
  meta_path.write_text(text.replace(sha, sha[::-1]))
  with pytest.raises(ValueError, match=r"\.w_ih shard \[0:8, 0:128\] does not match its recorded"):
    checkpoint.restore(tmp_path / "c", params, model=cell)


_WRITER = textwrap.dedent(
  """
  import sys, time, jax, jaxrnn
  from jaxrnn import checkpoint
  from orbax.checkpoint._src.path import atomicity

  directory, signal_file = sys.argv[1], sys.argv[2]
  cell = jaxrnn.lstm(64)
  params = cell.init(jax.random.key(0), 16)
  checkpoint.save(directory, 1, params, model=cell)

  async def stalled_finalize(self):  # every array is written; the commit (rename) is next
    open(signal_file, "w").close()
    time.sleep(600)

  atomicity.AtomicRenameTemporaryPath.finalize = stalled_finalize
  checkpoint.save(directory, 2, jax.tree.map(lambda x: x + 1, params), model=cell)
  """
)


def test_kill_during_write_leaves_the_previous_checkpoint_intact(tmp_path):
  directory, signal_file = tmp_path / "ckpt", tmp_path / "writing"
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.Popen(
    [sys.executable, "-c", _WRITER, str(directory), str(signal_file)],
    env=env,
    stderr=subprocess.PIPE,
  )
  deadline = time.monotonic() + 120
  while not signal_file.exists() and proc.poll() is None and time.monotonic() < deadline:
    time.sleep(0.01)
  assert signal_file.exists(), proc.stderr.read().decode()[-3000:] if proc.poll() else "timeout"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  proc.stderr.close()
  # the half-written step 2 is on disk, but invisible
  assert any(".orbax-checkpoint-tmp" in p for p in os.listdir(directory))
  assert checkpoint.all_steps(directory) == [1]

  cell = jaxrnn.lstm(64)
  params = cell.init(jax.random.key(0), 16)
  restored, info = checkpoint.restore(directory, params, model=cell)
  assert info["step"] == 1
  _assert_same(params, restored)
  # and the next save of step 2 goes through
  checkpoint.save(directory, 2, jax.tree.map(lambda x: x + 1, params), model=cell)
  restored, info = checkpoint.restore(directory, params, model=cell)
  assert info["step"] == 2
  np.testing.assert_array_equal(restored.w_hh, params.w_hh + 1)


def test_format_1_checkpoints_still_restore(tmp_path):
  """Format 1 recorded one SHA-256 per array (``sha256``) instead of one per written shard."""
  import json

  cell = jaxrnn.gru(4)
  params = cell.init(jax.random.key(0), 2)
  checkpoint.save(tmp_path, 0, params, model=cell)
  meta_path = tmp_path / "0" / "meta" / "metadata"
  meta = json.loads(meta_path.read_text())
  for rec in meta["leaves"]:
    (shard,) = rec.pop("shards")  # one device: one shard, the whole array
    rec["sha256"] = shard["sha256"]
  meta["format_version"] = 1
  meta_path.write_text(json.dumps(meta))
  restored, info = checkpoint.restore(tmp_path, params, model=cell)
  _assert_same(params, restored)
  assert info["format_version"] == 1
  rec = meta["leaves"][0]
  meta_path.write_text(json.dumps(meta).replace(rec["sha256"], rec["sha256"][::-1]))
  with pytest.raises(ValueError, match=re.escape(rec["path"]) + r" shard \[.*\] does not match"):
    checkpoint.restore(tmp_path, params, model=cell)


def test_processes_holding_different_values_are_refused():
  """What `save` does with the shards all processes report: one copy of a region they all hold,
  and an error when their copies differ (a state built from different seeds)."""
  import json

  records = [{"path": ".w"}]
  same = [json.dumps([[0, [[0, 2]], "aa"]])] * 2
  checkpoint.processes.record_shards(records, same)
  assert records[0]["shards"] == [{"index": [[0, 2]], "sha256": "aa"}]
  differ = [json.dumps([[0, [[0, 2]], "aa"]]), json.dumps([[0, [[0, 2]], "bb"]])]
  with pytest.raises(ValueError, match=r"state leaf \.w \[0:2\] differs between processes"):
    checkpoint.processes.record_shards([{"path": ".w"}], differ)


def _edit_record(directory, step, edit):
  path = directory / str(step) / "meta" / "metadata"
  record = json.loads(path.read_text())
  edit(record)
  path.write_text(json.dumps(record))


def test_a_record_whose_step_disagrees_with_its_directory_is_refused(tmp_path):
  """Why 6: a record edited from step 5 to 7 restored as step 7 while latest_step said 5."""
  cell = jaxrnn.gru(4)
  params = cell.init(jax.random.key(0), 2)
  checkpoint.save(tmp_path, 5, params, model=cell)
  _edit_record(tmp_path, 5, lambda r: r.update(step=7))
  assert checkpoint.latest_step(tmp_path) == 5
  match = r"step 5: its record says step 7; expected 5, the step of its directory"
  with pytest.raises(ValueError, match=match):
    checkpoint.restore(tmp_path, params, model=cell)
  with pytest.raises(ValueError, match=match):
    checkpoint.read_metadata(tmp_path)
  _edit_record(tmp_path, 5, lambda r: r.update(step=True))  # True == 1, and still not a step
  with pytest.raises(ValueError, match=r"its record says step True; expected 5"):
    checkpoint.restore(tmp_path, params, model=cell)


def test_a_deep_or_oversized_record_is_a_value_error(tmp_path):
  """Why 8, for records: bounded like manifests (nesting depth and size)."""
  cell = jaxrnn.gru(4)
  params = cell.init(jax.random.key(0), 2)
  checkpoint.save(tmp_path, 1, params, model=cell)
  record = tmp_path / "1" / "meta" / "metadata"
  record.write_text('{"a": ' * 100_000 + "1" + "}" * 100_000)
  with pytest.raises(ValueError, match=r"record is not valid jaxrnn JSON .*nested more than 64"):
    checkpoint.restore(tmp_path, params, model=cell)
  with open(record, "r+b") as f:
    f.truncate((16 << 20) + 1)  # sparse
  with pytest.raises(
    ValueError, match=r"record is not valid jaxrnn JSON .*16777217 bytes; expected"
  ):
    checkpoint.restore(tmp_path, params, model=cell)


def test_two_writers_of_one_step_never_share_a_directory_and_the_first_wins(tmp_path, monkeypatch):
  """Why 7: two writers of one step shared one temporary directory and left a damaged step.

  Writer B saves step 3 whole while writer A has written its own copy and is about to rename
  it: A finds the step taken, discards its copy and raises; B's checkpoint restores exactly.
  """
  cell = jaxrnn.gru(4)
  a = cell.init(jax.random.key(0), 2)
  b = jax.tree.map(lambda x: x + 1, a)
  commit, pending = checkpoint.steps.commit, []

  def commit_after_another_writer(*args):
    monkeypatch.setattr(checkpoint.steps, "commit", commit)
    pending.append(sorted(os.listdir(tmp_path)))  # A's own directory, written
    checkpoint.save(tmp_path, 3, b, model=cell)  # writer B, start to end
    return commit(*args)

  monkeypatch.setattr(checkpoint.steps, "commit", commit_after_another_writer)
  match = r"step 3 already exists in .*: another writer saved it while this one was writing"
  with pytest.raises(ValueError, match=match):
    checkpoint.save(tmp_path, 3, a, model=cell)
  (mine,) = pending[0]
  assert re.fullmatch(r"\.3\.[0-9a-f]{32}\.jaxrnn-pending", mine)
  assert sorted(os.listdir(tmp_path)) == ["3"]  # A's copy is gone, B's step is whole
  restored, info = checkpoint.restore(tmp_path, a, model=cell)
  assert info["step"] == 3
  _assert_same(b, restored)


_RACER = textwrap.dedent(
  """
  import os, sys, time, jax, jaxrnn
  from jaxrnn import checkpoint
  directory, go, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
  cell = jaxrnn.gru(4)
  params = jax.tree.map(lambda x: x + k, cell.init(jax.random.key(0), 2))
  checkpoint.save(directory + f"/warm{k}", 0, params, model=cell)  # orbax's first save is slow
  open(f"{go}.ready{k}", "w").close()
  while not os.path.exists(go):
    time.sleep(0.001)
  for step in range(6):
    try:
      checkpoint.save(directory + "/shared", step, params, model=cell)
      print(step, "saved", flush=True)
    except ValueError as e:
      assert "already exists" in str(e), e
      print(step, "refused", flush=True)
  """
)


@pytest.mark.slow
def test_two_processes_saving_the_same_steps_leave_one_whole_checkpoint_each(tmp_path):
  """Why 7, for real: two processes save steps 0..5 into one directory at once."""
  go = tmp_path / "go"
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", _RACER, str(tmp_path), str(go), str(k)],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    for k in (0, 1)
  ]
  while not all(os.path.exists(f"{go}.ready{k}") for k in (0, 1)):
    assert all(p.poll() is None for p in procs), [p.stderr.read()[-2000:] for p in procs]
    time.sleep(0.01)
  go.touch()
  outs = [p.communicate(timeout=120) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
  said = [dict(line.split() for line in out.splitlines()) for out, _ in outs]
  cell = jaxrnn.gru(4)
  params = cell.init(jax.random.key(0), 2)
  shared = tmp_path / "shared"
  assert checkpoint.all_steps(shared) == list(range(6))
  assert not [n for n in os.listdir(shared) if "pending" in n]
  refused = 0
  for step in range(6):
    restored, _ = checkpoint.restore(shared, params, model=cell, step=step)
    (winner,) = [k for k in (0, 1) if said[k][str(step)] == "saved"]
    _assert_same(jax.tree.map(lambda x, w=winner: x + w, params), restored)
    refused += said[1 - winner][str(step)] == "refused"
  print(f"6 steps, each saved whole by one writer; {refused} refused to the other")
