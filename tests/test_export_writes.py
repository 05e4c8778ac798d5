"""`jaxrnn.export.save` writes: it never touches a file it did not write, and a kill, a full
disk or a reader at any moment finds the old artifact or the new one, whole, never neither.

The kill tests run the writer of `save` (`jaxrnn/export/_writing.py`, standard library only)
in a child loaded by path, so that a child starts in a fraction of a second: it overwrites
one directory with artifact A, then B, then A... (the files of two real saves) until a
SIGKILL at a random moment. The full-disk tests run the whole `save` in a child whose
per-file size limit (RLIMIT_FSIZE) makes a write fail with EFBIG.
"""

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import jax
import numpy as np
import pytest

import jaxrnn
from jaxrnn.export import _writing, loading, saving

I = 3
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def two(tmp_path_factory):
  """One model, two artifacts: A (params) and B (params + 1), with the outputs of each."""
  model = jaxrnn.rnn_layers("gru", 4)
  params = model.init(jax.random.key(0), I)
  out = {"model": model, "params": params}
  for name, p in [("a", params), ("b", jax.tree.map(lambda x: x + 1, params))]:
    path = tmp_path_factory.mktemp(name)
    jaxrnn.export.save(path, model, p)
    out[name] = path
  return out


def _params_digest(path):
  m = loading.read_manifest(path)
  return m["files"][m["params_file"]]


def _which(path, two):
  """Loads ``path`` (every check of `load`) and says which artifact it is: 'a' or 'b'."""
  art = jaxrnn.export.load(path)
  digest = art.manifest["files"][art.manifest["params_file"]]
  found = [k for k in "ab" if _params_digest(two[k]) == digest]
  assert len(found) == 1, digest
  return found[0]


def _arrays(path):
  with np.load(path / loading.read_manifest(path)["params_file"]) as npz:
    return {k: npz[k] for k in npz.files}


def _listed(path):
  m = loading.read_manifest(path)
  return {"manifest.json", m["params_file"], *m["functions"].values()}


# ------------------------------------------------------------ Why 1: the user's files


def test_save_refuses_a_non_empty_directory_and_touches_nothing_in_it(two, tmp_path):
  """Why 1: a directory with the user's ``params.npz`` and ``notes.txt`` was written into."""
  user = {"params.npz": b"the user's own weights", "notes.txt": b"notes"}
  for name, data in user.items():
    (tmp_path / name).write_bytes(data)
  model, params = two["model"], two["params"]
  with pytest.raises(
    ValueError, match=r"holds files \(notes.txt, params.npz\); expected a new or empty directory"
  ):
    jaxrnn.export.save(tmp_path, model, params)
  with pytest.raises(ValueError, match=r"holds notes.txt, params.npz but no artifact"):
    jaxrnn.export.save(tmp_path, model, params, overwrite=True)
  assert {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)} == user


def test_save_creates_only_what_it_writes_and_overwrite_removes_only_the_old_files(two, tmp_path):
  path = tmp_path / "new" / "artifact"
  manifest = jaxrnn.export.save(path, two["model"], two["params"])
  assert set(os.listdir(path)) == _listed(path)
  assert manifest["sizes"] == {n: os.path.getsize(path / n) for n in manifest["files"]}
  (path / "README").write_text("the user's")  # a file of the user's, beside the artifact
  old = _listed(path)
  jaxrnn.export.save(path, two["model"], two["params"], overwrite=True)
  assert set(os.listdir(path)) == _listed(path) | {"README"}
  assert not (old - {"manifest.json"}) & set(os.listdir(path))
  assert (path / "README").read_text() == "the user's"


def test_a_failed_save_removes_what_it_created(two, tmp_path, monkeypatch):
  def fail(f, p, s):
    f.write(b"partial")
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(saving, "_write_npz", fail)
  with pytest.raises(OSError, match="No space left on device"):
    jaxrnn.export.save(tmp_path / "x" / "y", two["model"], two["params"])
  assert os.listdir(tmp_path) == []  # neither the files nor the two directories


# ------------------------------------------------------------ Why 2: kills and full disks

KILL_CHILD = textwrap.dedent(
  """
  import importlib.util, json, pathlib, secrets, sys
  spec = importlib.util.spec_from_file_location("writing", sys.argv[1])
  writing = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(writing)
  root, ready = pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
  sources = []
  for src in map(pathlib.Path, sys.argv[4:6]):
    m = json.loads((src / "manifest.json").read_text())
    keys = {"params": m["params_file"], **m["functions"]}
    sources.append((m, {k: (src / n).read_bytes() for k, n in keys.items()}))
  i = 0
  while True:
    m, blobs = sources[i % 2]
    token = secrets.token_hex(8)
    names = {k: f"{k}.{token}." + ("npz" if k == "params" else "jaxexport") for k in blobs}
    old = list(json.loads((root / "manifest.json").read_text())["files"])

    def finish(info, m=m, names=names):
      functions = {k: names[k] for k in m["functions"]}
      files = {n: d for n, (d, _) in info.items()}
      sizes = {n: s for n, (_, s) in info.items()}
      return {**m, "functions": functions, "params_file": names["params"], "files": files,
              "sizes": sizes}

    writing.write_artifact(root, {names[k]: b for k, b in blobs.items()}, finish, token, old=old)
    i += 1
    if i == 2:
      ready.touch()
  """
)


def _kill_trials(two, tmp_path, trials, seed):
  """SIGKILLs the writer ``trials`` times at random moments; which artifact each one left."""
  root = tmp_path / "artifact"
  shutil.copytree(two["a"], root)
  rnd, found = random.Random(seed), []
  for trial in range(trials):
    ready = tmp_path / f"ready{trial}"
    args = [_writing.__file__, root, ready, two["b"], two["a"]]
    proc = subprocess.Popen([sys.executable, "-c", KILL_CHILD, *map(str, args)])
    deadline = time.monotonic() + 30
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
      time.sleep(0.005)
    assert ready.exists() and proc.poll() is None, proc.returncode
    time.sleep(rnd.uniform(0, 0.03))  # a few whole writes take about that long
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    found.append(_which(root, two))
    leftovers = set(os.listdir(root)) - _listed(root)
    assert all(saving.OWN_FILES.fullmatch(n) for n in leftovers), leftovers
  # a killed save's leftovers do not stop the next overwrite, which leaves the new artifact
  jaxrnn.export.save(root, two["model"], two["params"], overwrite=True)
  jaxrnn.export.load(root)
  got, want = _arrays(root), _arrays(two["a"])
  assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in got)
  return found


def test_kills_during_overwrites_leave_the_old_or_the_new_artifact(two, tmp_path):
  """Why 2 (a few trials here, 25 in the slow test): a kill left no manifest at all."""
  found = _kill_trials(two, tmp_path, 4, seed=0)
  assert set(found) <= {"a", "b"} and len(found) == 4


@pytest.mark.slow
def test_kills_at_25_random_moments_leave_the_old_or_the_new_artifact(two, tmp_path):
  found = _kill_trials(two, tmp_path, 25, seed=1)
  print(f"kill trials: {len(found)}, left A: {found.count('a')}, left B: {found.count('b')}")
  assert len(found) == 25 and set(found) == {"a", "b"}


FULL_DISK_CHILD = textwrap.dedent(
  """
  import resource, signal, sys
  import jax, jaxrnn
  limit, path = int(sys.argv[1]), sys.argv[2]
  model = jaxrnn.rnn_layers("gru", 4)
  params = jax.tree.map(lambda x: x + 1, model.init(jax.random.key(0), 3))
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
  resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
  try:
    jaxrnn.export.save(path, model, params, overwrite=True)
  except OSError as e:
    print("OSError", e.errno)
  else:
    print("saved")
  """
)


def test_a_full_disk_during_an_overwrite_leaves_the_old_artifact(two, tmp_path):
  """Why 2: with a per-file size limit, the overwrite failed with EFBIG and left no manifest."""
  root = tmp_path / "artifact"
  shutil.copytree(two["a"], root)
  before = {n: (root / n).read_bytes() for n in os.listdir(root)}
  limit = min(os.path.getsize(two["a"] / n) for n in before) // 2  # the first file fails
  out = subprocess.run(
    [sys.executable, "-c", FULL_DISK_CHILD, str(limit), str(root)],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=120,
  )
  assert out.stdout.split() == ["OSError", "27"], out.stderr[-2000:]
  assert {n: (root / n).read_bytes() for n in os.listdir(root)} == before  # nothing left behind
  assert _which(root, two) == "a"


@pytest.mark.parametrize("which", ["params", "manifest"])
def test_a_write_failing_at_any_file_leaves_the_old_artifact(two, tmp_path, which):
  """The writer alone, failing at the params file or at the new manifest (in process)."""
  root = tmp_path / "artifact"
  shutil.copytree(two["a"], root)
  before = {n: (root / n).read_bytes() for n in os.listdir(root)}

  def failing(f):
    raise OSError(27, "File too large")

  m = loading.read_manifest(two["b"])
  contents = {n: (two["b"] / n).read_bytes() for n in _listed(two["b"]) - {"manifest.json"}}
  if which == "params":
    contents[m["params_file"]] = failing

  def finish(info):
    if which == "manifest":
      raise OSError(27, "File too large")
    return m

  with pytest.raises(OSError, match="File too large"):
    _writing.write_artifact(root, contents, finish, "0" * 16, old=list(before))
  assert {n: (root / n).read_bytes() for n in os.listdir(root)} == before


def test_readers_during_overwrites_find_a_whole_artifact(two, tmp_path):
  """A reader racing an overwrite reads the old or the new artifact (load retries, once the
  manifest it read is replaced and the files it listed are gone)."""
  root = tmp_path / "artifact"
  shutil.copytree(two["a"], root)
  sources = []
  for src in (two["b"], two["a"]):
    m = loading.read_manifest(src)
    sources.append((m, {n: (src / n).read_bytes() for n in _listed(src) - {"manifest.json"}}))
  stop, writes = threading.Event(), [0]

  def writer():
    while not stop.is_set():
      m, contents = sources[writes[0] % 2]
      old = list(loading.read_manifest(root)["files"])
      _writing.write_artifact(root, contents, lambda info, m=m: m, f"{writes[0]:016x}", old=old)
      writes[0] += 1
      time.sleep(0.01)

  thread = threading.Thread(target=writer)
  thread.start()
  try:
    found, deadline = [], time.monotonic() + 60  # at least 15 loads, across 6 writes
    while (len(found) < 15 or writes[0] <= 5) and time.monotonic() < deadline:
      found.append(_which(root, two))
  finally:
    stop.set()
    thread.join()
  assert writes[0] > 5 and set(found) <= {"a", "b"}


def test_manifest_names_match_the_own_files_pattern(two):
  names = _listed(two["a"]) - {"manifest.json"}
  assert len(names) == 4 and all(saving.OWN_FILES.fullmatch(n) for n in names)
  assert re.fullmatch(r"params\.[0-9a-f]{16}\.npz", loading.read_manifest(two["a"])["params_file"])
