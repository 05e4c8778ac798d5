"""Hostile artifacts: every case is a `ValueError` at `load`, and nothing larger is allocated
than the files hold.

Each case starts from a copy of one small artifact, made hostile the way an attacker who can
write the directory would (hashes and sizes rewritten to match), and loads it under tracemalloc:
the peak of what `load` allocates stays within twice the bytes of the artifact's files plus
4 MiB, far below what the hostile files declare (a 128 MiB compressed entry, a 4 TiB array).
"""

import io
import json
import os
import pathlib
import shutil
import tracemalloc
import zipfile

import jax
import numpy as np
import pytest

import jaxrnn
from jaxrnn.export import loading

I = 3
MiB = 1 << 20


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
  """A GRU artifact (hidden 4) and another model's (hidden 5), both float32, input size 3."""
  out = {}
  for hidden in (4, 5):
    model = jaxrnn.rnn_layers("gru", hidden)
    path = tmp_path_factory.mktemp(f"gru{hidden}")
    jaxrnn.export.save(path, model, model.init(jax.random.key(hidden), I))
    out[hidden] = path
  return out


@pytest.fixture
def art(artifacts, tmp_path):
  """A fresh copy of the hidden-4 artifact, to make hostile."""
  dst = tmp_path / "artifact"
  shutil.copytree(artifacts[4], dst)
  return dst


def _manifest(path):
  return json.loads((path / "manifest.json").read_text())


def _write_manifest(path, manifest):
  (path / "manifest.json").write_text(json.dumps(manifest))


def _rehash(path, name, data):
  """Writes ``data`` as ``name`` and rewrites its sha256 and size in the manifest to match."""
  (path / name).write_bytes(data)
  manifest = _manifest(path)
  manifest["files"][name] = loading.sha256(path / name)
  manifest["sizes"][name] = len(data)
  _write_manifest(path, manifest)


def _npz_bytes(arrays, extra=None):
  """An .npz of ``arrays``, with ``extra(zipfile)`` adding entries."""
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  if extra is not None:
    with zipfile.ZipFile(buf, "a", compression=zipfile.ZIP_DEFLATED) as zf:
      extra(zf)
  return buf.getvalue()


def _arrays(path):
  with np.load(path / _manifest(path)["params_file"], allow_pickle=False) as npz:
    return {k: npz[k] for k in npz.files}


def _peak_of_refused_load(path, match):
  """Loads ``path`` under tracemalloc: a ValueError matching ``match``; the peak bytes."""
  tracemalloc.start()
  try:
    with pytest.raises(ValueError, match=match) as info:
      jaxrnn.export.load(path)
    peak = tracemalloc.get_traced_memory()[1]
    print(f"peak of the refused load: {peak / MiB:.2f} MiB ({match[:50]})")
  finally:
    tracemalloc.stop()
  assert type(info.value) in (ValueError, loading._Vanished)
  return peak


def _files_bytes(path):
  return sum(os.path.getsize(path / n) for n in os.listdir(path) if (path / n).is_file())


def _check(path, match):
  peak = _peak_of_refused_load(path, match)
  assert peak < 2 * _files_bytes(path) + 4 * MiB, peak


# ------------------------------------------------------------ names outside the directory


@pytest.mark.parametrize(
  "field, name",
  [
    ("apply", "../outside/x.jaxexport"),
    ("apply", "/tmp/x.jaxexport"),
    ("params_file", "../params.npz"),
    ("step", "sub/step.jaxexport"),
    ("apply_masked", ".."),
  ],
)
def test_names_outside_the_directory_are_refused(art, field, name):
  """Why 3: the loader opened ``../outside/x.jaxexport`` and absolute paths."""
  m = _manifest(art)
  old = m["params_file"] if field == "params_file" else m["functions"][field]
  target = pathlib.Path(name) if name.startswith("/") else art / name
  if name != ".." and not name.startswith("/"):
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(art / old, target)  # the same bytes, so that only the name is wrong
  if field == "params_file":
    m["params_file"] = name
  else:
    m["functions"][field] = name
  m["files"][name], m["sizes"][name] = m["files"][old], m["sizes"][old]
  _write_manifest(art, m)
  where = "params_file" if field == "params_file" else f"functions.{field}"
  _check(art, rf"field '{where}' is '{name}'; expected the name of a file directly inside")


def test_one_file_named_for_two_purposes_is_refused(art):
  m = _manifest(art)
  m["functions"]["step"] = m["functions"]["apply"]
  _write_manifest(art, m)
  _check(art, r"names one file for two purposes")


# ------------------------------------------------------------ symlinks


@pytest.mark.parametrize("what", ["manifest.json", "params", "apply", "unlisted"])
def test_every_symlink_inside_is_refused(art, tmp_path, what):
  """Why 3: ``params.npz``, ``apply.jaxexport`` and ``manifest.json`` were followed as symlinks."""
  m = _manifest(art)
  name = {"params": m["params_file"], "apply": m["functions"]["apply"]}.get(what, what)
  outside = tmp_path / "outside"
  outside.mkdir()
  if what == "unlisted":
    (outside / "x").write_text("x")
  else:
    shutil.move(art / name, outside / name)  # the very same bytes, only behind a link
  (art / name).symlink_to(outside / (name if what != "unlisted" else "x"))
  _check(art, rf"holds the symlink '{name}'; expected only plain files")


def test_a_symlinked_artifact_directory_loads(art, tmp_path):
  link = tmp_path / "link"
  link.symlink_to(art, target_is_directory=True)
  xs = np.ones((2, 5, I), np.float32)
  ref = jaxrnn.export.load(art).apply(xs)[1]
  np.testing.assert_array_equal(jaxrnn.export.load(link).apply(xs)[1], ref)


def test_read_plain_refuses_a_link_swapped_in_after_the_scan(art):
  """The open itself refuses a symlink (O_NOFOLLOW), not only the directory scan before it."""
  name = _manifest(art)["params_file"]
  os.rename(art / name, art / "real")
  (art / name).symlink_to(art / "real")
  with pytest.raises(ValueError, match=rf"{name}: a symlink; expected a plain file"):
    loading._read_plain(art, name, None, None)


# ------------------------------------------------------------ params.npz


def test_unlisted_npz_entry_is_refused_unread(art):
  """Why 4: an unlisted compressed entry (128 MiB of zeros in about 0.13 MiB) was decompressed."""

  def bomb(zf):
    with zf.open("evil.npy", "w", force_zip64=True) as f:
      zeros = bytes(MiB)
      for _ in range(128):
        f.write(zeros)

  name, arrays = _manifest(art)["params_file"], _arrays(art)
  data = _npz_bytes(arrays, bomb)
  assert len(data) < MiB
  _rehash(art, name, data)  # larger than the listed arrays can take: refused before it is read
  peak = _peak_of_refused_load(art, rf"gives {name} \d+ bytes; the arrays it lists take at most")
  assert peak < 4 * MiB, peak
  # within the size the listed arrays allow, an unlisted entry is refused before any entry is read
  _rehash(art, name, _npz_bytes({**arrays, "evil": np.zeros(8, np.uint8)}))
  _check(art, r"holds 'evil', which manifest.json does not list; refused unread")


def test_oversized_declaration_is_a_value_error_not_a_memory_error(art):
  """Why 4: a 4 TiB shape raised MemoryError; here the manifest and the entry both declare it."""
  m = _manifest(art)
  spec = m["params"][0]
  spec["shape"] = [1 << 20, 1 << 20]  # float32: 4 TiB
  _write_manifest(art, m)
  _check(art, r"declares \d+ bytes of arrays; the file holds \d+")
  # the .npy header may lie too: 4 TiB declared in a few bytes of data
  arrays = _arrays(art)
  buf = io.BytesIO()
  np.lib.format.write_array_header_1_0(
    buf, {"descr": "<f4", "fortran_order": False, "shape": (1 << 20, 1 << 20)}
  )
  raw = _npz_bytes({k: v for k, v in arrays.items() if k != "param:" + spec["name"]})
  out = io.BytesIO(raw)
  with zipfile.ZipFile(out, "a") as zf:
    zf.writestr(f"param:{spec['name']}.npy", buf.getvalue() + b"\0" * 16)
  spec["shape"] = [3, 12]
  _write_manifest(art, m)
  _rehash(art, m["params_file"], out.getvalue())
  _check(art, rf"param:{spec['name']} is float32\[1048576, 1048576\]; expected float32\[3, 12\]")


def test_oversized_file_size_declaration_is_refused_before_reading(art):
  m = _manifest(art)
  name = m["params_file"]
  with open(art / name, "r+b") as f:
    f.truncate(1 << 30)  # sparse: 1 GiB on paper
  m["sizes"][name] = 1 << 30
  _write_manifest(art, m)
  _check(art, rf"field 'sizes' gives {name} 1073741824 bytes; the arrays it lists take at most")


def test_compressed_and_mismatched_entries_are_refused(art):
  arrays = _arrays(art)
  buf = io.BytesIO()
  np.savez_compressed(buf, **arrays)
  _rehash(art, _manifest(art)["params_file"], buf.getvalue())
  _check(art, r"entry param:\S+ is compressed; expected stored .npy entries")
  first = next(iter(arrays))
  arrays[first] = arrays[first].astype(np.float16)
  _rehash(art, _manifest(art)["params_file"], _npz_bytes(arrays))
  _check(art, rf"{first} is float16\[3, 12\]; expected float32\[3, 12\] from manifest.json")


# ------------------------------------------------------------ exported functions


def test_step_swapped_for_apply_with_rewritten_hashes_is_refused(art):
  """Why 5: only the input aval was compared; ``step`` replaced by ``apply`` loaded fine."""
  m = _manifest(art)
  _rehash(art, m["functions"]["step"], (art / m["functions"]["apply"]).read_bytes())
  _check(art, r"step\.\w{16}\.jaxexport: inputs are .*; manifest.json describes step as")


def test_another_models_apply_with_rewritten_hashes_is_refused(art, artifacts):
  other = artifacts[5]
  _rehash(
    art,
    _manifest(art)["functions"]["apply"],
    (other / _manifest(other)["functions"]["apply"]).read_bytes(),
  )
  _check(
    art,
    r"apply\.\w{16}\.jaxexport: apply input params\['0\.b'\] is float32\[15\]; manifest.json "
    r"says float32\[12\]",
  )


def test_float16_manifest_and_params_for_a_float32_function_are_refused(art):
  m = _manifest(art)
  for spec in m["params"]:
    spec["dtype"] = spec["stored_as"] = "float16"
  _write_manifest(art, m)
  arrays = {
    k: v.astype(np.float16) if k.startswith("param:") else v for k, v in _arrays(art).items()
  }
  _rehash(art, m["params_file"], _npz_bytes(arrays))
  _check(art, r"apply input params\['0\.b'\] is float32\[12\]; manifest.json says float16\[12\]")


def test_output_and_platform_mismatches_are_refused(art):
  m = _manifest(art)
  m["output"]["shape"] = ["batch", "time", 5]
  _write_manifest(art, m)
  _check(art, r"apply output ys is float32\[b,t,4\]; manifest.json says float32\[b,t,5\]")
  m["output"]["shape"] = ["batch", "time", 4]
  m["platforms"] = ["cuda"]
  _write_manifest(art, m)
  _check(art, r"lowered for platforms \('cpu',\); manifest.json says \('cuda',\)")


# ------------------------------------------------------------ the manifest itself


def test_deep_manifest_is_a_value_error_not_a_recursion_error(art):
  """Why 8: a manifest nested 100,000 levels deep raised RecursionError."""
  (art / "manifest.json").write_text('{"a": ' * 100_000 + "1" + "}" * 100_000)
  _check(art, r"manifest.json: JSON nested more than 64 levels deep; expected at most 64")


def test_oversized_manifest_is_refused_unread(art):
  with open(art / "manifest.json", "r+b") as f:
    f.truncate(loading.MAX_MANIFEST_BYTES + 1)  # sparse
  _check(art, rf"manifest.json: {loading.MAX_MANIFEST_BYTES + 1} bytes; expected at most")


def test_expected_digest_is_the_trust_anchor(art, artifacts):
  """A manifest rewritten with its files loads by hashes alone; its digest tells it apart."""
  trusted = jaxrnn.export.digest(art)
  assert trusted == loading.sha256(art / "manifest.json")
  jaxrnn.export.load(art, expected_digest=trusted)
  other = artifacts[5]
  for name in os.listdir(art):
    os.remove(art / name)
  for name in os.listdir(other):
    shutil.copy(other / name, art / name)  # a whole other artifact, consistent in itself
  jaxrnn.export.load(art)
  with pytest.raises(
    ValueError, match=rf"manifest.json: sha256 is \w+; expected_digest is {trusted}"
  ):
    jaxrnn.export.load(art, expected_digest=trusted)
  with pytest.raises(ValueError, match=r"expected_digest='ABC': expected a sha256 as 64 lowercase"):
    jaxrnn.export.load(art, expected_digest="ABC")
