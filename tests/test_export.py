"""`jaxrnn.export`: artifacts against the live model, without jaxrnn, the CLI, bad inputs."""

import json
import pathlib
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from jaxrnn.export import loading

TOL = dict(atol=1e-6, rtol=1e-6)
I = 3
ROOT = pathlib.Path(__file__).resolve().parents[1]

# Default unroll (4 on CPU) and remat: jaxrnn.scan falls back to a plain loop over a symbolic T.
MODELS = {
  "lstm_proj_2_layers": lambda: jaxrnn.rnn_layers("lstm", 6, num_layers=2, proj_size=3, remat=True),
  "gru_time_major": lambda: jaxrnn.rnn_layers("gru", 5, time_major=True, dropout_rate=0.2),
  "bidirectional": lambda: jaxrnn.rnn_layers("elman", 4, num_layers=2, bidirectional=True),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """name -> (model, params, path), each saved once."""
  out = {}
  for i, (name, build) in enumerate(MODELS.items()):
    model = build()
    params = model.init(jax.random.key(i), I)
    path = tmp_path_factory.mktemp(name)
    jaxrnn.export.save(path, model, params)
    out[name] = model, params, path
  return out


def _xs(rng, batch, length, time_major=False):
  shape = (length, batch, I) if time_major else (batch, length, I)
  return rng.standard_normal(shape).astype(np.float32)


def _named_state(carry):
  leaves = jax.tree_util.tree_flatten_with_path(carry)[0]
  return {jax.tree_util.keystr(p, simple=True, separator="."): v for p, v in leaves}


def _assert_close(a, b):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), **TOL)


@pytest.mark.parametrize("name", MODELS)
def test_apply_matches_live_model_for_any_batch_and_length(saved, name, rng):
  model, params, path = saved[name]
  art = jaxrnn.export.load(path, expected_config=model.config, expected_version="0.1.0")
  time_major = dict(model.config)["time_major"]
  for batch, length in [(1, 1), (5, 2)]:  # one artifact, symbolic b and t
    xs = _xs(rng, batch, length, time_major)
    state, ys = art.apply(xs)
    carry, ref = model.apply(params, xs, deterministic=True)
    _assert_close(ys, ref)
    for k, v in _named_state(carry).items():
      _assert_close(state[k], v)
  lengths = np.array([7, 0, 3])
  xs = _xs(rng, 3, 7, time_major)
  state, ys = art.apply(xs, seq_lengths=lengths)
  carry, ref = model.apply(params, xs, seq_lengths=lengths, deterministic=True)
  _assert_close(ys, ref)
  assert sorted(state) == sorted(_named_state(carry))
  for k, v in _named_state(carry).items():
    _assert_close(state[k], v)


def test_step_matches_live_model_and_resets(saved, rng):
  model, params, path = saved["lstm_proj_2_layers"]
  art = jaxrnn.export.load(path)
  xs = _xs(rng, 3, 6)
  state = art.init_state(3)
  ys = []
  for t in range(6):
    state, y = art.step(state, xs[:, t], np.array([False, t == 2, False]))
    ys.append(y)
  ys = np.stack(ys, axis=1)
  carry, ref = model.apply(params, xs)
  _assert_close(ys[[0, 2]], ref[np.array([0, 2])])  # rows never reset
  _, fresh = model.apply(params, xs[1:2, 2:])  # row 1 restarted at t=2
  _assert_close(ys[1, 2:], fresh[0])
  _assert_close(ys[1, :2], ref[1, :2])
  # A state from apply continues in step and vice versa.
  state, _ = art.apply(xs[:, :4])
  for t in range(4, 6):
    state, y = art.step(state, xs[:, t])
  for k, v in _named_state(carry).items():
    _assert_close(state[k], v)


def test_weights_stored_alongside_and_manifest(saved):
  model, params, path = saved["lstm_proj_2_layers"]
  manifest = json.loads((path / "manifest.json").read_text())
  assert manifest["jaxrnn_version"] == jaxrnn.__version__
  assert manifest["jax_version"] == jax.__version__
  assert manifest["model"]["name"] == "rnn_layers"
  assert manifest["model"]["config"]["hidden_size"] == 6
  assert manifest["model"]["config"]["num_layers"] == 2
  assert manifest["input"] == {"shape": ["batch", "time", 3], "dtype": "float32"}
  assert manifest["output"] == {"shape": ["batch", "time", 3], "dtype": "float32"}
  assert manifest["streaming"] == {"available": True, "reason": None}
  assert manifest["resets"] == {"available": True, "reason": None}
  assert {s["stored_as"] for s in manifest["params"]} == {"float32"}
  assert [s["name"] for s in manifest["state"]] == ["0.h", "0.c", "1.h", "1.c"]
  assert manifest["format_version"] == 3
  with np.load(path / manifest["params_file"], allow_pickle=False) as npz:
    for (k, v), leaf in zip(_named_state(params).items(), jax.tree.leaves(params), strict=True):
      np.testing.assert_array_equal(npz[f"param:{k}"], np.asarray(leaf))
      np.testing.assert_array_equal(npz[f"param:{k}"], np.asarray(v))
  _, _, bidi = saved["bidirectional"]
  manifest = json.loads((bidi / "manifest.json").read_text())
  assert manifest["streaming"]["available"] is False
  assert "step" not in manifest["functions"]
  art = jaxrnn.export.load(bidi)
  with pytest.raises(ValueError, match=r"no streaming step: .*bidirectional=True"):
    art.step(art.init_state(1), np.ones((1, I), np.float32))


def test_save_for_cpu_and_cuda(tmp_path, rng):
  model = jaxrnn.recurrent(jaxrnn.lstm(4))
  params = model.init(jax.random.key(0), I)
  manifest = jaxrnn.export.save(tmp_path, model, params, platforms=("cpu", "cuda"))
  assert manifest["platforms"] == ["cpu", "cuda"]
  for name in manifest["functions"].values():
    exp = jax.export.deserialize(bytearray((tmp_path / name).read_bytes()))
    assert exp.platforms == ("cpu", "cuda")
  xs = _xs(rng, 2, 5)
  _, ys = jaxrnn.export.load(tmp_path).apply(xs)  # the cpu lowering runs here
  _assert_close(ys, model.apply(params, xs)[1])


LOADER_SCRIPT = textwrap.dedent(
  """
  import importlib.util, sys
  import numpy as np
  spec = importlib.util.spec_from_file_location("standalone_loader", sys.argv[1])
  loader = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(loader)
  art = loader.load(sys.argv[2])
  xs = np.load(sys.argv[3])
  state, ys = art.apply(xs, seq_lengths=np.array([5, 2]))
  s = art.init_state(2)
  steps = []
  for t in range(xs.shape[1]):
    s, y = art.step(s, xs[:, t])
    steps.append(np.asarray(y))
  np.save(sys.argv[4], np.asarray(ys))
  np.save(sys.argv[5], np.stack(steps, axis=1))
  jaxrnn_modules = sorted(m for m in sys.modules if m.split(".")[0] == "jaxrnn")
  assert not jaxrnn_modules, jaxrnn_modules
  assert "jaxrnn.layers" not in sys.modules and "torch" not in sys.modules
  print("ok")
  """
)


def test_loads_in_a_process_that_never_imports_jaxrnn(saved, tmp_path, rng):
  model, params, path = saved["lstm_proj_2_layers"]
  xs = _xs(rng, 2, 5)
  np.save(tmp_path / "xs.npy", xs)
  out = subprocess.run(
    [
      sys.executable,
      "-c",
      LOADER_SCRIPT,
      loading.__file__,
      str(path),
      str(tmp_path / "xs.npy"),
      str(tmp_path / "ys.npy"),
      str(tmp_path / "steps.npy"),
    ],
    capture_output=True,
    text=True,
    cwd=tmp_path,  # not the repo root, where `import jaxrnn` would find the source
    timeout=120,
  )
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "ok"
  _, ref = model.apply(params, xs, seq_lengths=np.array([5, 2]))
  _assert_close(np.load(tmp_path / "ys.npy"), ref)
  _assert_close(np.load(tmp_path / "steps.npy"), model.apply(params, xs)[1])


def test_cli_writes_the_live_models_outputs(saved, tmp_path, rng):
  model, params, path = saved["gru_time_major"]
  xs = _xs(rng, 4, 6, time_major=True).astype(np.float64)  # cast to float32 by the CLI
  lengths = np.array([6, 1, 0, 4])
  np.save(tmp_path / "xs.npy", xs)
  np.save(tmp_path / "lengths.npy", lengths)
  cmd = [sys.executable, "-m", "jaxrnn.export", str(path), "--input", str(tmp_path / "xs.npy")]
  out = subprocess.run(
    cmd
    + ["--output", str(tmp_path / "ys.npy"), "--seq-lengths", str(tmp_path / "lengths.npy")]
    + ["--final-state", str(tmp_path / "state.npz")],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=120,
  )
  assert out.returncode == 0, out.stderr
  assert "wrote outputs float32[6, 4, 5]" in out.stderr
  carry, ref = model.apply(params, xs.astype(np.float32), seq_lengths=lengths, deterministic=True)
  _assert_close(np.load(tmp_path / "ys.npy"), ref)
  with np.load(tmp_path / "state.npz") as state:
    _assert_close(state["0.h"], carry[0].h)


def test_cli_errors(saved, tmp_path, capsys):
  from jaxrnn.export.__main__ import main

  _, _, path = saved["lstm_proj_2_layers"]
  np.save(tmp_path / "bad.npy", np.ones((2, 5, 4), np.float32))
  with pytest.raises(SystemExit) as exit_info:
    main([str(path), "--input", str(tmp_path / "bad.npy"), "--output", str(tmp_path / "o.npy")])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert "error: xs has shape (2, 5, 4); expected (batch, time, 3)." in err
  with pytest.raises(SystemExit):
    main([str(tmp_path), "--input", str(tmp_path / "bad.npy"), "--output", "o.npy"])
  assert "no manifest.json; expected a directory written by jaxrnn.export.save" in (
    capsys.readouterr().err
  )


def _copy(path, tmp_path):
  dst = tmp_path / "artifact"
  shutil.copytree(path, dst)
  return dst


def _edit_manifest(path, edit):
  manifest = json.loads((path / "manifest.json").read_text())
  edit(manifest)
  (path / "manifest.json").write_text(json.dumps(manifest))


def _set(keys, value):
  def edit(m):
    for k in keys[:-1]:
      m = m[k]
    m[keys[-1]] = value

  return edit


def file_name(path, key):
  """The name of an artifact's file: ``"params"`` or a function's key (``"apply"``)."""
  if key == "manifest.json":
    return key
  manifest = json.loads((path / "manifest.json").read_text())
  return manifest["params_file"] if key == "params" else manifest["functions"][key]


def _truncate(key):
  def corrupt(path):
    name = file_name(path, key)
    data = (path / name).read_bytes()
    (path / name).write_bytes(data[: len(data) // 2])

  return corrupt


def rehash(path, name, data):
  """Replaces the file ``name`` by ``data``, its sha256 and size rewritten in the manifest."""
  (path / name).write_bytes(data)
  _edit_manifest(path, _set(["files", name], loading.sha256(path / name)))
  _edit_manifest(path, _set(["sizes", name], len(data)))


def _rehash(key, data):
  return lambda path: rehash(path, file_name(path, key), data)


@pytest.mark.parametrize(
  "corrupt, match",
  [
    (_truncate("apply"), r"apply\.\w{16}\.jaxexport: \d+ bytes; expected \d+ from manifest.json"),
    (_truncate("params"), r"params\.\w{16}\.npz: \d+ bytes; expected \d+ from manifest.json"),
    (
      lambda p: (p / file_name(p, "apply")).write_bytes(
        b"x" * (p / file_name(p, "apply")).stat().st_size
      ),
      r"apply\.\w{16}\.jaxexport: sha256 is \w+; expected \w+ from manifest.json \(the file is",
    ),
    (_truncate("manifest.json"), r"manifest.json: not valid JSON, .*corrupt or truncated"),
    (lambda p: (p / file_name(p, "step")).unlink(), r"step\.\w{16}\.jaxexport: missing; the"),
    (_rehash("step", b"\0" * 64), r"step\.\w{16}\.jaxexport: not a jax.export serialization"),
    (_rehash("params", b"PK garbage"), r"params\.\w{16}\.npz: not a readable .npz"),
    (
      lambda p: _edit_manifest(p, _set(["format_version"], 1)),
      r"field 'format_version' is 1; expected one of \(2, 3\)",
    ),
    (lambda p: _edit_manifest(p, lambda m: m.pop("output")), r"'output.dtype' is missing"),
    (
      lambda p: _edit_manifest(p, _set(["input", "shape"], ["batch", "3"])),
      r"field 'input.shape' is \['batch', '3'\]; expected \['batch', 'time', \*sizes\]",
    ),
    (
      lambda p: _edit_manifest(p, _set(["input", "shape"], ["batch", "time", 4])),
      r"'input' says float32\(batch, time, 4\), but apply\.\w{16}\.jaxexport takes "
      r"float32\(b, t, 3\)",
    ),
    (
      lambda p: _edit_manifest(p, _set(["params", 0, "stored_as"], "uint32")),
      r"params\[0\] \(0.w_ih\) is stored as uint32; expected float32 for float32",
    ),
    (
      lambda p: _edit_manifest(p, _set(["params", 0, "shape"], [4, 24])),
      r"params\.\w{16}\.npz: param:0.w_ih is float32\[3, 24\]; expected float32\[4, 24\] from",
    ),
  ],
)
def test_corrupt_artifacts(saved, tmp_path, corrupt, match):
  path = _copy(saved["lstm_proj_2_layers"][2], tmp_path)
  corrupt(path)
  with pytest.raises(ValueError, match=match):
    jaxrnn.export.load(path)


def test_expected_config_and_version(saved):
  model, _, path = saved["lstm_proj_2_layers"]
  jaxrnn.export.load(path, expected_config=model, expected_version=jaxrnn.__version__)
  other = jaxrnn.rnn_layers("lstm", 6, num_layers=3, proj_size=3)
  with pytest.raises(ValueError, match=r"model config field 'num_layers' is 2; expected 3"):
    jaxrnn.export.load(path, expected_config=other.config)
  other = jaxrnn.rnn_layers("lstm", 6, num_layers=2, proj_size=2)
  with pytest.raises(ValueError, match=r"field 'cell_config.proj_size' is 3; expected 2"):
    jaxrnn.export.load(path, expected_config=other)
  with pytest.raises(ValueError, match=r"field 'jaxrnn_version' is '0.1.0'; expected '9.9.9'"):
    jaxrnn.export.load(path, expected_version="9.9.9")


def test_settings_are_recorded_and_load_checks_the_config_only(tmp_path):
  model = jaxrnn.rnn_layers("gru", 4)
  params = model.init(jax.random.key(0), I)
  path = tmp_path / "art"
  manifest = jaxrnn.export.save(path, model, params)
  assert manifest["model"]["settings"] == {"impl": "auto", "remat": None, "unroll": None}
  assert manifest["model"]["config"] == loading.to_json(dict(model.config))
  art = jaxrnn.export.load(path, expected_config=jaxrnn.rnn_layers("gru", 4, remat=4))
  assert art.manifest["model"]["settings"]["remat"] is None
  other = jaxrnn.rnn_layers("gru", 4, num_layers=2)
  with pytest.raises(ValueError, match=r"model config field 'num_layers' is 1; expected 2"):
    jaxrnn.export.load(path, expected_config=other)
  # a manifest written before settings were recorded loads and is checked the same way
  _edit_manifest(path, lambda m: m["model"].pop("settings"))
  jaxrnn.export.load(path, expected_config=model)
  with pytest.raises(ValueError, match=r"model config field 'num_layers' is 1; expected 2"):
    jaxrnn.export.load(path, expected_config=other)


def test_bad_call_inputs(saved):
  _, _, path = saved["lstm_proj_2_layers"]
  art = jaxrnn.export.load(path)
  xs = np.ones((2, 5, I), np.float32)
  with pytest.raises(ValueError, match=r"xs has shape \(2, 5, 4\); expected \(batch, time, 3\)"):
    art.apply(np.ones((2, 5, 4), np.float32))
  with pytest.raises(ValueError, match=r"xs has shape \(5, 3\); expected \(batch, time"):
    art.apply(xs[0])
  with pytest.raises(ValueError, match=r"xs has dtype int32; expected a floating dtype"):
    art.apply(np.ones((2, 5, I), np.int32))
  with pytest.raises(ValueError, match=r"seq_lengths must lie in \[0, T=5\]; got values from"):
    art.apply(xs, seq_lengths=np.array([6, 1]))
  with pytest.raises(ValueError, match=r"seq_lengths is float32\[2\]; expected integers"):
    art.apply(xs, seq_lengths=np.array([5, 1], np.float32))
  with pytest.raises(ValueError, match=r"x has shape \(2, 4\); expected \(batch, 3\)"):
    art.step(art.init_state(2), np.ones((2, 4), np.float32))
  with pytest.raises(ValueError, match=r"state\['0.h'\] has shape \(3, 3\); expected \(2, 3\)"):
    art.step(art.init_state(3), xs[:, 0])
  with pytest.raises(ValueError, match=r"state has keys \['0.h'\]; expected a dict with keys"):
    art.step({"0.h": jnp.zeros((2, 3))}, xs[:, 0])
  with pytest.raises(ValueError, match=r"reset has dtype int64; expected bool"):
    art.step(art.init_state(2), xs[:, 0], np.array([0, 1]))
  with pytest.raises(ValueError, match=r"batch_size=0: expected a positive int"):
    art.init_state(0)


def test_bad_save_arguments(saved, tmp_path):
  model, params, path = saved["bidirectional"]
  with pytest.raises(ValueError, match=r"platforms='cpu': expected a non-empty tuple"):
    jaxrnn.export.save(tmp_path, model, params, platforms="cpu")
  with pytest.raises(ValueError, match=r"'gpu' is not one of \('cpu', 'cuda', 'rocm', 'tpu'\)"):
    jaxrnn.export.save(tmp_path, model, params, platforms=("cpu", "gpu"))
  with pytest.raises(ValueError, match=r"bidirectional=True.*expected bidirectional=False"):
    jaxrnn.export.save(tmp_path, model, params, streaming=True)
  with pytest.raises(ValueError, match=r"holds an artifact already \(apply.*\); expected a new"):
    jaxrnn.export.save(path, model, params)
  with pytest.raises(ValueError, match=r"expected a jaxrnn.SequenceModel, got Cell"):
    jaxrnn.export.save(tmp_path, jaxrnn.lstm(3), params)


# ------------------------------------------------------------------ dtypes, inputs, resets


def _resets(batch, length, time_major=False):
  r = np.zeros((batch, length), bool)
  r[0, [0, 2]] = True
  r[-1, length - 2] = True
  return r.T if time_major else r


def test_resets_reach_the_exported_apply(saved, rng):
  model, params, path = saved["gru_time_major"]  # resets (T, B), like its xs
  art = jaxrnn.export.load(path)
  xs, resets = _xs(rng, 3, 6, time_major=True), _resets(3, 6, time_major=True)
  for lengths in [None, np.array([6, 4, 5])]:  # apply_masked, with and without lengths
    state, ys = art.apply(xs, resets=resets, seq_lengths=lengths)
    carry, ref = model.apply(params, xs, resets=resets, seq_lengths=lengths, deterministic=True)
    _assert_close(ys, ref)
    _assert_close(state["0.h"], carry[0].h)
  with pytest.raises(ValueError, match=r"resets has dtype int64; expected bool \(True at t"):
    art.apply(xs, resets=resets.astype(np.int64))
  with pytest.raises(ValueError, match=r"resets has shape \(2, 6\); expected \(time, batch\) ="):
    art.apply(xs, resets=np.zeros((2, 6), bool))


def _cli(path, xs, tmp_path, capsys):
  """`python -m jaxrnn.export` in this process on ``xs``: the outputs and what it printed."""
  from jaxrnn.export.__main__ import main

  np.save(tmp_path / "xs.npy", xs)
  out = tmp_path / "ys.npy"
  assert main([str(path), "--input", str(tmp_path / "xs.npy"), "--output", str(out)]) == 0
  return np.load(out), capsys.readouterr().err


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_artifacts_keep_their_dtype(dtype, tmp_path, rng, capsys):
  model = jaxrnn.rnn_layers("lstm", 5, dtype=dtype)
  params = model.init(jax.random.key(0), I)
  path = tmp_path / "art"
  manifest = jaxrnn.export.save(path, model, params, streaming=False)
  stored = "uint16" if dtype == "bfloat16" else dtype  # .npy cannot hold bfloat16: its bits
  assert [(s["dtype"], s["stored_as"]) for s in manifest["params"]] == [(dtype, stored)] * 3
  assert {s["dtype"] for s in manifest["state"]} == {"float32"}  # carry_dtype's default
  assert manifest["input"]["dtype"] == manifest["output"]["dtype"] == dtype
  kept = jaxrnn.rnn_layers("lstm", 5, dtype=dtype, carry_dtype=dtype)  # a 16-bit carry
  saved = jaxrnn.export.save(tmp_path / "kept", kept, params, streaming=False)
  assert {s["dtype"] for s in saved["state"]} == {dtype}
  art = jaxrnn.export.load(path)
  for mine, theirs in zip(jax.tree.leaves(params), art_params(art), strict=True):
    assert mine.dtype == theirs.dtype  # the same bits back
    np.testing.assert_array_equal(np.asarray(mine, np.float32), np.asarray(theirs, np.float32))
  xs = _xs(rng, 2, 4)  # float32, cast to the artifact's dtype
  _, ref = model.apply(params, xs.astype(dtype))
  written, err = _cli(path, xs, tmp_path, capsys)  # load and apply, through the CLI
  if dtype == "bfloat16":
    assert "outputs: bfloat16 upcast to float32 (.npy cannot hold bfloat16)" in err
  assert f"wrote outputs {written.dtype}[2, 4, 5]" in err
  assert written.dtype == (np.float32 if dtype == "bfloat16" else np.float16)
  np.testing.assert_array_equal(written, np.asarray(ref).astype(written.dtype))


def art_params(art):
  """The weights an artifact's callables hold, in the manifest's order."""
  apply = art.apply.args[0]  # functools.partial(_apply, model)
  return [apply.params[s["name"]] for s in art.manifest["params"]]


def test_float64_artifact_round_trips_with_x64(tmp_path, rng, capsys):
  xs = rng.standard_normal((2, 5, I))  # float64
  path = tmp_path / "art"
  with jax.enable_x64(True):
    model = jaxrnn.rnn_layers("gru", 4, dtype="float64")
    params = model.init(jax.random.key(0), I)
    manifest = jaxrnn.export.save(path, model, params, streaming=False)
    assert manifest["input"]["dtype"] == manifest["params"][0]["stored_as"] == "float64"
    _, ref = model.apply(params, xs)
    _, ys = jaxrnn.export.load(path).apply(xs)
    assert ys.dtype == np.float64
    np.testing.assert_allclose(ys, ref, atol=1e-12)
  with pytest.raises(ValueError, match=r"64-bit arrays \(input, param:0.w_ih, .*jax_enable_x64"):
    jaxrnn.export.load(path)
  written, err = _cli(path, xs, tmp_path, capsys)  # the CLI turns x64 on for it, and off again
  assert "wrote outputs float64[2, 5, 4]" in err
  np.testing.assert_allclose(written, ref, atol=1e-12)
  assert jnp.asarray(xs).dtype == np.float32


VOCAB, EMBED = 11, 4


def _token_model(hidden=5):
  """A user's model on integer token ids ``(batch, time)``: embedding lookup + LSTM; its
  ``apply`` takes no ``resets`` (the contract lets a user's omit it)."""
  rnn = jaxrnn.rnn_layers("lstm", hidden)

  def init(key, input_size):
    del input_size  # the vocabulary is fixed
    k1, k2 = jax.random.split(key)
    return {"embed": jax.random.normal(k1, (VOCAB, EMBED)), "rnn": rnn.init(k2, EMBED)}

  def apply(params, tokens, carry=None, *, seq_lengths=None, key=None, deterministic=False):
    xs = params["embed"][tokens]
    return rnn.apply(params["rnn"], xs, carry, seq_lengths=seq_lengths)

  def step(params, carry, token):
    return rnn.step(params["rnn"], carry, params["embed"][token])

  def initial_carry(params, batch_shape=()):
    return rnn.initial_carry(params["rnn"], batch_shape)

  return jaxrnn.SequenceModel(init, apply, initial_carry, step=step, name="token_lstm")


def test_token_id_model_exports_and_runs(tmp_path, rng):
  model = _token_model()
  params = model.init(jax.random.key(0), None)
  spec = jax.ShapeDtypeStruct((), jnp.int32)
  manifest = jaxrnn.export.save(tmp_path, model, params, input_spec=spec)
  assert manifest["input"] == {"shape": ["batch", "time"], "dtype": "int32"}
  assert manifest["output"] == {"shape": ["batch", "time", 5], "dtype": "float32"}
  assert manifest["resets"] == {
    "available": False,
    "reason": "the model's apply ('token_lstm') has no resets argument.",
  }
  art = jaxrnn.export.load(tmp_path, expected_config={})
  tokens = rng.integers(0, VOCAB, (3, 6))  # int64, cast to int32
  lengths = np.array([6, 2, 5])
  state, ys = art.apply(tokens, seq_lengths=lengths)
  carry, ref = model.apply(params, jnp.asarray(tokens, jnp.int32), seq_lengths=lengths)
  _assert_close(ys, ref)
  _assert_close(state["0.c"], carry[0].c)
  state = art.init_state(3)
  for t in range(6):  # row 0 is never padded
    state, y = art.step(state, tokens[:, t])
    _assert_close(y[0], ref[0, t])
  with pytest.raises(ValueError, match=r"apply takes no resets: the model's apply \('token_lstm"):
    art.apply(tokens, resets=np.zeros((3, 6), bool))
  with pytest.raises(ValueError, match=r"xs has dtype float32; expected an integer dtype \(int32"):
    art.apply(tokens.astype(np.float32))
  with pytest.raises(ValueError, match=r"xs has shape \(3, 6, 1\); expected \(batch, time\)"):
    art.apply(tokens[..., None])
  with pytest.raises(ValueError, match=r"input_size=3 and input_spec=.*expected one of them"):
    jaxrnn.export.save(tmp_path, model, params, input_spec=spec, input_size=3, overwrite=True)
  with pytest.raises(ValueError, match=r"input_spec=\(\); expected a jax.ShapeDtypeStruct"):
    jaxrnn.export.save(tmp_path, model, params, input_spec=(), overwrite=True)


def test_partial_expected_config_checks_only_the_fields_given(saved):
  model, _, path = saved["lstm_proj_2_layers"]
  partial = {"kind": "lstm", "dropout_rate": 0, "cell_config": {"proj_size": 3}}  # 0 == 0.0
  jaxrnn.export.load(path, expected_config=partial)
  with pytest.raises(ValueError, match=r"model config field 'kind' is 'lstm'; expected 'gru'"):
    jaxrnn.export.load(path, expected_config={"kind": "gru"})
  with pytest.raises(ValueError, match=r"field 'cell_config.forget_bias' is 1.0; expected 0"):
    jaxrnn.export.load(path, expected_config={"cell_config": {"forget_bias": 0}})
  with pytest.raises(ValueError, match=r"field 'cell_config.hidden_sizes' is '<missing>'; exp"):
    jaxrnn.export.load(path, expected_config={"cell_config": {"hidden_sizes": 6}})
  # A whole model: its kind before any field, then its whole config.
  other = jaxrnn.rnn_layers("gru", 6, num_layers=3)
  with pytest.raises(ValueError, match=r"model config field 'kind' is 'lstm'; expected 'gru'"):
    jaxrnn.export.load(path, expected_config=other)
  with pytest.raises(ValueError, match=r"the model is a 'rnn_layers'; expected a 'recurrent'"):
    jaxrnn.export.load(path, expected_config=jaxrnn.recurrent(jaxrnn.lstm(6)))
  with pytest.raises(ValueError, match=r"expected_config=3: expected a model, its config or a"):
    jaxrnn.export.load(path, expected_config=3)
