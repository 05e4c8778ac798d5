"""Loads an artifact written by `jaxrnn.export.save`, without jaxrnn.

This module imports only the standard library, numpy and jax, never jaxrnn, so a
serving process can load it by file path and run a model without the code that
built it::

    import importlib.util
    spec = importlib.util.spec_from_file_location("jaxrnn_loading", ".../jaxrnn/export/loading.py")
    loading = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loading)
    artifact = loading.load("model_dir")

An artifact is a directory (format 3; ``<id>`` is 16 hex digits, new at every save):

    manifest.json             format version, jaxrnn and jax versions, the model's name,
                              config and settings (recorded; load checks the config),
                              the input and output specs (shape pattern such as
                              ["batch", "time", 3] and dtype), names, shapes and dtypes
                              of params and state, target platforms, and the sha256 and
                              size of every other file
    params.<id>.npz           the weights ("param:<name>") and the unbatched initial state
                              ("state:<name>"), uncompressed .npy entries; a dtype that
                              .npy cannot hold (bfloat16, float8) is stored as its bits,
                              an unsigned view of the same width, and each entry's
                              "stored_as" in the manifest says which
    apply.<id>.jaxexport      jax.export of apply(params, xs, state) -> (state, ys)
    apply_masked.<id>.jaxexport  the same with seq_lengths and resets
    step.<id>.jaxexport       jax.export of the streaming step(params, state, x, reset)
                              (absent for models that cannot stream)

Format 2 (still read) named the files ``params.npz``, ``apply.jaxexport``... and recorded
no sizes. Whatever the format, `load` trusts nothing a file does not prove: it opens only
plain files directly inside the directory (never a symlink, never a name with a separator
or ``..``), checks each file's size and sha256 against the manifest before using a byte of
it, reads of ``params.npz`` only the entries the manifest lists, each after its header's
shape and dtype match the manifest's (so nothing larger than declared is allocated), and
checks every exported function's input and output avals against the manifest's specs.

The functions take the weights as arguments (they are not baked in), with a
symbolic batch size ``b`` and length ``t``, so one artifact serves every batch
size and sequence length.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import pathlib
import re
import stat
import zipfile
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

FORMAT = "jaxrnn.export"
# 2: input/output specs, "stored_as", apply_masked (seq_lengths and resets); 3: every file but
# the manifest named anew at each save ("params_file"), with its size ("sizes"), so that an
# overwrite replaces the manifest last, in one atomic rename
FORMAT_VERSION = 3
READ_VERSIONS = (2, 3)
MANIFEST = "manifest.json"
PARAMS_FILE = "params.npz"  # format 2's name; format 3 records "params_file"
FUNCTION_FILES = {  # format 2's names; format 3 inserts the save's id before the extension
  "apply": "apply.jaxexport",
  "apply_masked": "apply_masked.jaxexport",
  "step": "step.jaxexport",
}
MAX_MANIFEST_BYTES = 16 << 20  # a manifest is a few KiB; checkpoint records are bounded alike
MAX_JSON_DEPTH = 64  # a stack of bidirectional layers nests about 6 levels deep
BATCH, TIME = "batch", "time"  # the symbolic dimensions of a shape pattern

State = dict[str, jax.Array]


class Artifact(NamedTuple):
  """A loaded model: pure callables with the weights bound, already on device.

  A state is a dict from the names in ``manifest["state"]`` (for a stack,
  ``"0.h"``, ``"0.c"``, ``"1.h"``...) to arrays ``(batch, *shape)``. The input
  an artifact takes is ``manifest["input"]``: a shape pattern such as
  ``["batch", "time", 3]`` (``["time", "batch", 3]`` time-major; ``["batch",
  "time"]`` for token ids) and a dtype.

  Attributes:
    apply: ``apply(xs, state=None, *, seq_lengths=None, resets=None) -> (state,
      ys)``, the model's deterministic ``apply``: ``xs`` as the input pattern
      says, e.g. ``(batch, time, input_size)``; a floating artifact casts
      floating inputs to its dtype, an integer one integer inputs;
      ``seq_lengths`` integer ``(batch,)``; ``resets`` boolean ``(batch,
      time)`` (``(time, batch)`` time-major), True at t starts a new segment
      at t, as in `jaxrnn.scan`.
    init_state: ``init_state(batch_size) -> state``, the initial state.
    step: ``step(state, x, reset=None) -> (state, y)``, one streaming step with
      ``x`` ``(batch, *features)`` and an optional boolean ``(batch,)`` mask of
      rows to restart from the initial state first.
    manifest: the parsed ``manifest.json``.
  """

  apply: Callable[..., tuple[State, jax.Array]]
  init_state: Callable[[int], State]
  step: Callable[..., tuple[State, jax.Array]]
  manifest: dict[str, Any]


def _pairs(value: tuple | list) -> bool:
  """``value`` is a non-empty sequence of ``(name, value)`` pairs with distinct names."""
  if not value or not all(
    isinstance(p, tuple | list) and len(p) == 2 and isinstance(p[0], str) for p in value
  ):
    return False
  return len({p[0] for p in value}) == len(value)


def to_json(value: Any, where: str | None = None) -> Any:
  """A config value as JSON data, the form artifacts and checkpoints record.

  Tuples of ``(name, value)`` pairs with distinct names become objects (a
  model's ``config`` is such pairs), other tuples lists, NumPy scalars Python
  numbers. Any other object becomes its repr, or, given ``where`` (the field's
  name, for the message), raises.

  Raises:
    ValueError: with ``where``, for a value that is not JSON data.

  Example:
    >>> to_json((("hidden_size", 8), ("sizes", (1, 2)), ("dtype", "float32")))
    {'hidden_size': 8, 'sizes': [1, 2], 'dtype': 'float32'}
  """
  sub = (lambda k: None) if where is None else (lambda k: f"{where}{k}")
  if value is None or isinstance(value, bool | int | float | str):
    return value
  if isinstance(value, Mapping):
    return {str(k): to_json(v, sub(f".{k}")) for k, v in value.items()}
  if isinstance(value, tuple | list):
    if _pairs(value):
      return {k: to_json(v, sub(f".{k}")) for k, v in value}
    return [to_json(v, sub(f"[{i}]")) for i, v in enumerate(value)]
  if isinstance(value, np.generic):
    return value.item()
  if where is None:
    return repr(value)
  raise ValueError(
    f"model config field {where} = {value!r} ({type(value).__name__}) is not JSON-serialisable; "
    "expected None, bool, int, float, str, or tuples/dicts of them."
  )


def sha256(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def stored_dtype(dtype: Any) -> np.dtype:
  """The dtype an array is written to ``params.npz`` as: its own where ``.npy`` holds it
  (bool, integers, float16/32/64, complex), else an unsigned integer view of the same
  width (bfloat16 -> uint16, float8 -> uint8) that keeps its bits.

  Example:
    >>> stored_dtype(jnp.bfloat16), stored_dtype(np.float16)
    (dtype('uint16'), dtype('float16'))
  """
  dtype = np.dtype(dtype)
  return dtype if dtype.kind in "biufc" else np.dtype(f"uint{8 * dtype.itemsize}")


def x64_arrays(manifest: dict) -> list[str]:
  """The arrays of an artifact that need ``jax_enable_x64`` (64-bit dtypes: float64, int64,
  uint64, complex128; complex64 is two 32-bit parts), by name."""
  entries = [("input", manifest["input"]["dtype"])]
  for key, prefix in (("params", "param:"), ("state", "state:")):
    entries += [(prefix + e["name"], e["dtype"]) for e in manifest[key]]
  wide = lambda d: d.itemsize == (16 if d.kind == "c" else 8)  # noqa: E731
  return [name for name, dtype in entries if wide(np.dtype(dtype))]


class _Missing(str):
  """The value `first_difference` reports for a key one side lacks (``'<missing>'``)."""


MISSING = _Missing("<missing>")


def _same(got: Any, expected: Any) -> bool:
  """Equal JSON leaves: numbers by value (0 == 0.0), others by type and value."""
  numbers = [isinstance(v, int | float) and not isinstance(v, bool) for v in (got, expected)]
  if all(numbers):
    return got == expected
  return type(got) is type(expected) and got == expected


def first_difference(
  got: Any, expected: Any, where: str = "", first: tuple[str, ...] = (), partial: bool = False
) -> tuple[str, Any, Any] | None:
  """The first field where two JSON values differ: ``(field, got, expected)``, or None.

  Dicts are compared key by key (the keys in ``first`` that both hold, then the
  others sorted), lists of equal length item by item, numbers by value (``0``
  equals ``0.0``; ``True`` is not ``1``). A key that one side lacks is reported
  with `MISSING` (``is MISSING`` tells it from a value) on that side. With
  ``partial``, only the keys ``expected`` holds are compared, at every depth.

  Example:
    >>> first_difference({"a": 1, "b": [2, 3]}, {"a": 1.0, "b": [2, 4]})
    ('b[1]', 3, 4)
    >>> first_difference({"a": 1, "c": {"d": 0, "e": 5}}, {"c": {"d": 0.0}}, partial=True)
  """
  if isinstance(got, dict) and isinstance(expected, dict):
    keys = set(expected) if partial else set(got) | set(expected)
    order = [k for k in first if k in keys]
    for key in order + sorted(keys - set(order)):
      sub = f"{where}.{key}" if where else key
      if key not in got or key not in expected:
        return sub, got.get(key, MISSING), expected.get(key, MISSING)
      diff = first_difference(got[key], expected[key], sub, first, partial)
      if diff:
        return diff
    return None
  if isinstance(got, list) and isinstance(expected, list) and len(got) == len(expected):
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
      diff = first_difference(g, e, f"{where}[{i}]", first, partial)
      if diff:
        return diff
    return None
  return None if _same(got, expected) else (where, got, expected)


def _field(manifest: dict, dotted: str, kind: type | tuple[type, ...]) -> Any:
  value: Any = manifest
  for part in dotted.split("."):
    if not isinstance(value, dict) or part not in value:
      raise ValueError(f"{MANIFEST}: field {dotted!r} is missing.")
    value = value[part]
  if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
    names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
    raise ValueError(
      f"{MANIFEST}: field {dotted!r} is {value!r} ({type(value).__name__}); expected {names}."
    )
  return value


class Spec(NamedTuple):
  """One array of ``params.npz`` as the manifest lists it."""

  name: str
  shape: tuple[int, ...]
  dtype: np.dtype
  stored_as: np.dtype


def _specs(manifest: dict, key: str) -> list[Spec]:
  specs = []
  for i, entry in enumerate(_field(manifest, key, list)):
    try:
      dtype = np.dtype(entry["dtype"])
      specs.append(
        Spec(
          str(entry["name"]),
          tuple(int(d) for d in entry["shape"]),
          dtype,
          np.dtype(entry["stored_as"]),
        )
      )
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(
        f"{MANIFEST}: {key}[{i}] is {entry!r}; expected {{'name', 'shape', 'dtype', "
        f"'stored_as'}} ({e})."
      ) from None
    if specs[-1].stored_as != stored_dtype(dtype):
      raise ValueError(
        f"{MANIFEST}: {key}[{i}] ({specs[-1].name}) is stored as {specs[-1].stored_as}; "
        f"expected {stored_dtype(dtype)} for {dtype}."
      )
  return specs


def pattern(manifest: dict, key: str) -> tuple[str | int, ...]:
  """``manifest[key]["shape"]``, checked: "batch" and "time" (in either order) then sizes."""
  shape = tuple(_field(manifest, f"{key}.shape", list))
  head, sizes = shape[:2], shape[2:]
  if sorted(map(str, head)) != [BATCH, TIME] or not all(
    isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in sizes
  ):
    raise ValueError(
      f"{MANIFEST}: field '{key}.shape' is {list(shape)}; expected ['batch', 'time', *sizes] "
      "or ['time', 'batch', *sizes]."
    )
  return shape


def json_depth(text: str, limit: int | None = None) -> int:
  """How deep the arrays and objects of a JSON text nest, counted without parsing it (and no
  further than ``limit + 1`` levels, where the count stops).

  Example:
    >>> json_depth('{"a": [1, {"b": "[[["}]}'), json_depth("3")
    (3, 0)
  """
  depth = deepest = 0
  for match in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[\]{}]+', text):  # a string, or brackets
    run = match.group()
    if run[0] == '"':
      continue  # strings hold no structure
    for c in run:
      depth += 1 if c in "[{" else -1
      deepest = max(deepest, depth)
      if limit is not None and deepest > limit:
        return deepest
  return deepest


def parse_json(
  data: bytes, where: str, *, max_bytes: int = MAX_MANIFEST_BYTES, max_depth: int = MAX_JSON_DEPTH
) -> Any:
  """JSON from an untrusted file, bounded: at most ``max_bytes``, nested ``max_depth`` deep.

  Raises:
    ValueError: naming ``where``, for a larger or deeper text, or one that is not UTF-8 JSON
      (never a `RecursionError` or `MemoryError`).

  Example:
    >>> parse_json(b'{"a": [1, 2]}', "x.json")
    {'a': [1, 2]}
    >>> parse_json(b"[" * 100 + b"]" * 100, "x.json")
    Traceback (most recent call last):
    ValueError: x.json: JSON nested more than 64 levels deep; expected at most 64.
  """
  if len(data) > max_bytes:
    raise ValueError(f"{where}: {len(data)} bytes; expected at most {max_bytes}.")
  try:
    text = bytes(data).decode("utf-8")
    if json_depth(text, max_depth) > max_depth:
      raise ValueError(
        f"{where}: JSON nested more than {max_depth} levels deep; expected at most {max_depth}."
      )
    return json.loads(text)
  except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
    raise ValueError(f"{where}: not valid JSON, the file is corrupt or truncated ({e}).") from None


def check_name(name: Any, field: str) -> str:
  """``name`` if it names a file directly inside a directory: no separator, no ``..``.

  Example:
    >>> check_name("apply.jaxexport", "functions.apply")
    'apply.jaxexport'
    >>> check_name("../x.jaxexport", "functions.apply")
    Traceback (most recent call last):
    ValueError: manifest.json: field 'functions.apply' is '../x.jaxexport'; expected the name ...
  """
  bad = not isinstance(name, str) or not name or name in (".", "..") or ".." in name
  if bad or any(c in name for c in "/\\\0:") or pathlib.PurePath(name).is_absolute():
    raise ValueError(
      f"{MANIFEST}: field {field!r} is {name!r}; expected the name of a file directly inside "
      "the artifact directory (no separator, no '..', not absolute)."
    )
  return name


class _Vanished(ValueError):
  """A file the manifest lists is gone: an overwrite may have replaced the artifact meanwhile."""


def _refuse_symlinks(root: pathlib.Path) -> None:
  """``root`` is a directory (itself perhaps a symlink) that holds no symlink."""
  if not root.is_dir():
    raise ValueError(f"{root}: no {MANIFEST}; expected a directory written by jaxrnn.export.save.")
  with os.scandir(root) as entries:
    links = sorted(e.name for e in entries if e.is_symlink())
  if links:
    raise ValueError(
      f"{root}: holds the symlink {links[0]!r}; expected only plain files (an artifact never "
      "holds symlinks, and load follows none)."
    )


def _read_plain(root: pathlib.Path, name: str, size: int | None, limit: int | None) -> bytes:
  """The bytes of the plain file ``root/name``: exactly ``size`` of them, or at most ``limit``."""
  path = root / name
  flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
  try:
    if stat.S_ISLNK(os.lstat(path).st_mode):
      raise ValueError(f"{path}: a symlink; expected a plain file (load follows no symlink).")
    fd = os.open(path, flags | getattr(os, "O_BINARY", 0))  # O_NOFOLLOW: no link swapped in
  except FileNotFoundError:
    raise _Vanished(f"{path}: missing; the manifest lists it.") from None
  except OSError as e:
    raise ValueError(f"{path}: cannot be opened as a plain file ({e.strerror}).") from None
  with os.fdopen(fd, "rb") as f:
    st = os.fstat(f.fileno())
    if not stat.S_ISREG(st.st_mode):
      raise ValueError(f"{path}: not a plain file; expected one written by jaxrnn.export.save.")
    if size is not None and st.st_size != size:
      raise ValueError(
        f"{name}: {st.st_size} bytes; expected {size} from {MANIFEST} (the file is corrupt, "
        "truncated or from another artifact)."
      )
    bound = size if size is not None else limit
    if bound is not None and st.st_size > bound:
      raise ValueError(f"{name}: {st.st_size} bytes; expected at most {bound}.")
    if bound is None:
      return f.read()
    data = f.read(st.st_size)  # never read(bound): it would allocate the bound up front
    if len(data) != st.st_size or f.read(1):
      raise ValueError(f"{name}: changed size while being read; expected {st.st_size} bytes.")
  return data


def _read_manifest(root: pathlib.Path) -> tuple[dict[str, Any], bytes]:
  """The checked manifest and its bytes, read once (the bytes are what a digest covers)."""
  _refuse_symlinks(root)
  if not os.path.lexists(root / MANIFEST):
    raise ValueError(f"{root}: no {MANIFEST}; expected a directory written by jaxrnn.export.save.")
  data = _read_plain(root, MANIFEST, None, MAX_MANIFEST_BYTES)
  manifest = parse_json(data, str(root / MANIFEST))
  if not isinstance(manifest, dict):
    raise ValueError(
      f"{root / MANIFEST}: holds a {type(manifest).__name__}; expected a JSON object."
    )
  if _field(manifest, "format", str) != FORMAT:
    raise ValueError(f"{MANIFEST}: field 'format' is {manifest['format']!r}; expected {FORMAT!r}.")
  version = _field(manifest, "format_version", int)
  if version not in READ_VERSIONS:
    raise ValueError(
      f"{MANIFEST}: field 'format_version' is {version}; expected one of {READ_VERSIONS} (the "
      "versions this loader reads)."
    )
  for key, kind in [
    ("jaxrnn_version", str),
    ("jax_version", str),
    ("model.name", str),
    ("model.config", dict),
    ("platforms", list),
    ("input.dtype", str),
    ("output.dtype", str),
    ("streaming.available", bool),
    ("resets.available", bool),
    ("functions", dict),
    ("files", dict),
  ]:
    _field(manifest, key, kind)
  pattern(manifest, "input")
  pattern(manifest, "output")
  _specs(manifest, "params")
  _specs(manifest, "state")
  _file_names(manifest)
  return manifest, data


def _file_names(manifest: dict) -> dict[str, tuple[str, str, int | None]]:
  """``{key: (file name, sha256, size or None)}`` for params and each function, checked."""
  version, files = manifest["format_version"], manifest["files"]
  sizes = _field(manifest, "sizes", dict) if version >= 3 else {}
  names = {"params": _field(manifest, "params_file", str) if version >= 3 else PARAMS_FILE}
  for key, name in manifest["functions"].items():
    if key not in FUNCTION_FILES:
      raise ValueError(
        f"{MANIFEST}: field 'functions' names {key!r}; expected keys from {list(FUNCTION_FILES)}."
      )
    names[key] = name
  out = {}
  for key, name in names.items():
    field = "params_file" if key == "params" else f"functions.{key}"
    check_name(name, field)
    digest, size = files.get(name), sizes.get(name)
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
      raise ValueError(f"{MANIFEST}: field 'files' has no sha256 for {name!r}.")
    if version >= 3 and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
      raise ValueError(f"{MANIFEST}: field 'sizes' has no size for {name!r}.")
    out[key] = (name, digest, size)
  if len({name for name, _, _ in out.values()}) != len(out):
    raise ValueError(f"{MANIFEST}: names one file for two purposes ({sorted(names.values())}).")
  return out


def read_manifest(path: str | pathlib.Path) -> dict[str, Any]:
  """Reads and checks ``manifest.json`` (no arrays, no compiled code).

  The manifest is read as `load` reads it: a plain file (not a symlink) of at
  most ``MAX_MANIFEST_BYTES``, JSON nested at most ``MAX_JSON_DEPTH`` deep,
  whose file names are plain names inside the directory.

  Raises:
    ValueError: a missing, truncated, oversized, too deeply nested or malformed
      manifest, a symlink in the directory, or a format version this loader
      does not read.
  """
  return _read_manifest(pathlib.Path(path))[0]


def digest(path: str | pathlib.Path) -> str:
  """The sha256 of an artifact's ``manifest.json``: the trust anchor `load` takes.

  The manifest holds the sha256 and size of every other file, so this one digest
  pins the whole artifact: record it where you trust it (next to the code that
  serves the model) and pass it to ``load(path, expected_digest=...)``.

  Example:
    >>> import tempfile, jax, jaxrnn
    >>> model = jaxrnn.rnn_layers("gru", 4)
    >>> path = tempfile.mkdtemp()
    >>> _ = jaxrnn.export.save(path, model, model.init(jax.random.key(0), input_size=3))
    >>> trusted = digest(path)
    >>> artifact = load(path, expected_digest=trusted)
    >>> load(path, expected_digest="0" * 64)
    Traceback (most recent call last):
    ValueError: manifest.json: sha256 is ...; expected_digest is 000...0 (this is not the ...
  """
  _refuse_symlinks(pathlib.Path(path))
  return hashlib.sha256(
    _read_plain(pathlib.Path(path), MANIFEST, None, MAX_MANIFEST_BYTES)
  ).hexdigest()


KIND_FIELDS = ("name", "kind", "cell")  # compared first: they say what kind a model is


def _check_expected(manifest: dict, expected_config: Any, expected_version: Any) -> None:
  """The manifest records ``expected_version`` and ``expected_config`` (see `load`)."""
  if expected_version is not None and manifest["jaxrnn_version"] != expected_version:
    raise ValueError(
      f"{MANIFEST}: field 'jaxrnn_version' is {manifest['jaxrnn_version']!r}; "
      f"expected {expected_version!r}."
    )
  if expected_config is None:
    return
  name = getattr(expected_config, "name", None)
  if isinstance(name, str) and hasattr(expected_config, "config"):  # a model: name and config
    if manifest["model"]["name"] != name:
      raise ValueError(
        f"{MANIFEST}: the model is a {manifest['model']['name']!r}; expected a {name!r}."
      )
    expected_config = expected_config.config
  partial = isinstance(expected_config, Mapping)  # a dict checks only the fields it gives
  try:
    expected = to_json(dict(expected_config))
  except (TypeError, ValueError):
    raise ValueError(
      f"expected_config={expected_config!r}: expected a model, its config or a dict of fields."
    ) from None
  got = manifest["model"]["config"]
  diff = first_difference(got, expected, first=KIND_FIELDS, partial=partial)
  if diff:
    field, got, want = diff
    raise ValueError(f"{MANIFEST}: model config field {field!r} is {got!r}; expected {want!r}.")


def _verified_bytes(root: pathlib.Path, entry: tuple[str, str, int | None], limit=None) -> bytes:
  """A file's bytes once its size (format 3) and sha256 match the manifest's."""
  name, expected, size = entry
  data = _read_plain(root, name, size, limit)
  got = hashlib.sha256(data).hexdigest()
  if got != expected:
    raise ValueError(
      f"{name}: sha256 is {got}; expected {expected} from {MANIFEST} (the file is corrupt, "
      "truncated or from another artifact)."
    )
  return data


NPZ_ENTRY_OVERHEAD = 4096  # an .npy header and the zip's headers of one entry, at most


def _nbytes(spec: Spec) -> int:
  return int(np.prod(spec.shape, dtype=object)) * spec.stored_as.itemsize


def npz_bound(manifest: dict) -> int:
  """The most bytes a ``params.npz`` holding just the arrays the manifest lists can take."""
  specs = _specs(manifest, "params") + _specs(manifest, "state")
  return sum(_nbytes(s) + NPZ_ENTRY_OVERHEAD + 2 * len(s.name) for s in specs) + 1024


def _read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, file: str, spec: Spec, name: str):
  """One ``.npy`` entry, its header checked against ``spec`` before its data is read."""
  if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
    raise ValueError(
      f"{file}: entry {name} is compressed; expected stored .npy entries, as save writes them."
    )
  with zf.open(info) as f:
    try:
      version = np.lib.format.read_magic(f)
      read = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
      }
      if version not in read:
        raise ValueError(f"version {version}; expected 1.0 or 2.0")
      shape, fortran, dtype = read[version](f, max_header_size=NPZ_ENTRY_OVERHEAD)
    except ValueError as e:
      raise ValueError(f"{file}: entry {name} has a damaged .npy header ({e}).") from None
    if shape != spec.shape or dtype != spec.stored_as or fortran:
      raise ValueError(
        f"{file}: {name} is {dtype}{list(shape)}; expected {spec.stored_as}{list(spec.shape)} "
        f"from {MANIFEST}."
      )
    nbytes = _nbytes(spec)
    if info.file_size - f.tell() != nbytes:
      raise ValueError(
        f"{file}: {name} holds {info.file_size - f.tell()} bytes of data; its header "
        f"{dtype}{list(shape)} needs {nbytes}."
      )
    data = f.read(nbytes)  # zipfile checks the entry's CRC-32 at its end
  return np.frombuffer(data, spec.stored_as).reshape(spec.shape).view(spec.dtype)


def _read_arrays(data: bytes, manifest: dict, file: str) -> tuple[dict, dict]:
  """The params and initial state, each array in its own dtype (a stored view undone).

  Only the entries the manifest lists are read, each after its header matches the
  manifest's shape and dtype; an entry it does not list is refused unread.
  """
  groups = {"param:": _specs(manifest, "params"), "state:": _specs(manifest, "state")}
  wanted = {f"{prefix}{spec.name}": spec for prefix, specs in groups.items() for spec in specs}
  try:
    zf = zipfile.ZipFile(io.BytesIO(data))
    infos = zf.infolist()
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f"{file}: not a readable .npz ({e}).") from None
  found = [i.filename.removesuffix(".npy") for i in infos]
  for name in found:
    if name not in wanted:
      raise ValueError(f"{file}: holds {name!r}, which {MANIFEST} does not list; refused unread.")
  if len(set(found)) != len(found):
    raise ValueError(f"{file}: holds an entry twice; expected each array once.")
  for name in wanted:
    if name not in found:
      raise ValueError(f"{file}: no array {name!r}; {MANIFEST} lists it.")
  declared = sum(_nbytes(spec) for spec in wanted.values())
  if declared > len(data):
    raise ValueError(
      f"{file}: {MANIFEST} declares {declared} bytes of arrays; the file holds {len(data)}."
    )
  arrays = {}
  try:
    for info, name in zip(infos, found, strict=True):
      arrays[name] = _read_entry(zf, info, file, wanted[name], name)
  except (OSError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f"{file}: not a readable .npz ({e}).") from None
  return tuple(
    {spec.name: arrays[prefix + spec.name] for spec in specs} for prefix, specs in groups.items()
  )


def _deserialize(name: str, data: bytes) -> jax.export.Exported:
  try:
    return jax.export.deserialize(bytearray(data))
  except ImportError:
    raise
  except Exception as e:  # flatbuffers raises assorted errors on garbage
    raise ValueError(f"{name}: not a jax.export serialization ({type(e).__name__}: {e}).") from None


def _no_step(reason: str) -> Callable[..., Any]:
  def unavailable(*args, **kwargs):
    raise ValueError(f"this artifact has no streaming step: {reason}")

  return unavailable


def _check_x64(manifest: dict) -> None:
  names = x64_arrays(manifest)
  if names and jax.dtypes.canonicalize_dtype(np.float64) != np.float64:
    raise ValueError(
      f"the artifact holds 64-bit arrays ({', '.join(names[:3])}, ...), which JAX turns into "
      "32-bit ones unless jax_enable_x64 is set: call jax.config.update('jax_enable_x64', True) "
      "at start-up, or load and run it inside `with jax.enable_x64(True):`."
    )


def load(
  path: str | pathlib.Path,
  *,
  expected_config: Any = None,
  expected_version: str | None = None,
  expected_digest: str | None = None,
) -> Artifact:
  """Loads an artifact directory written by `jaxrnn.export.save`.

  Nothing a file does not prove is trusted. Only plain files directly inside
  ``path`` are opened (``path`` itself may be a symlink; a symlink inside it,
  or a manifest naming a file with a separator, ``..`` or an absolute path, is
  refused); the manifest is bounded (`read_manifest`); every file's size and
  sha256 are checked against the manifest before it is used; of ``params.npz``
  only the entries the manifest lists are read, each after its header's shape
  and dtype match the manifest's, so no more is allocated than it declares;
  and every exported function's input and output avals (params, state,
  inputs, outputs) and platforms must be the manifest's. An artifact being
  overwritten meanwhile is read whole, the old one or the new one (`save`
  replaces the manifest last). An artifact with 64-bit arrays (a float64
  model, int64 inputs) loads and runs only with ``jax_enable_x64`` set.

  The sha256 digests prove that the files are the ones the manifest lists,
  not that the manifest is the one you exported: a manifest rewritten along
  with its files (another model's functions of the same signature) loads
  unless you pass ``expected_digest``, the `digest` of the artifact you trust.

  Args:
    path: the artifact directory.
    expected_config: if given, what the manifest must record: a
      `SequenceModel` (its name and whole config) or its ``config`` (the whole
      config), or a dict of some fields only, at any depth, e.g. ``{"kind":
      "gru", "cell_config": {"hidden_size": 8}}``. Numbers compare by value
      (``0`` equals ``0.0``).
    expected_version: if given, the jaxrnn version that must have written it.
    expected_digest: if given, the sha256 (64 hex digits) that
      ``manifest.json`` must have, e.g. ``digest(path)`` taken at export.

  Returns:
    An `Artifact` ``(apply, init_state, step, manifest)``.

  Raises:
    ValueError: a missing, corrupt, truncated, oversized or unlisted file; a
      symlink or an escaping name; a manifest of another digest or format
      version, or whose config or version differs from the expected ones (the
      message names the first field that differs, a model's kind first); an
      exported function the manifest does not describe; 64-bit arrays without
      ``jax_enable_x64``; and, from the returned callables, inputs of the wrong
      rank, feature shape, dtype or batch size.

  Example:
    >>> import tempfile, jax, jaxrnn
    >>> model = jaxrnn.rnn_layers("gru", 4)
    >>> path = tempfile.mkdtemp()
    >>> _ = jaxrnn.export.save(path, model, model.init(jax.random.key(0), input_size=3))
    >>> artifact = load(path, expected_config={"kind": "gru", "dropout_rate": 0})
    >>> artifact.manifest["input"], artifact.manifest["output"]
    ({'shape': ['batch', 'time', 3], 'dtype': 'float32'}, {'shape': ['batch', 'time', 4],
     'dtype': 'float32'})
    >>> load(path, expected_config={"kind": "lstm"})
    Traceback (most recent call last):
    ValueError: manifest.json: model config field 'kind' is 'gru'; expected 'lstm'.
  """
  if expected_digest is not None and (
    not isinstance(expected_digest, str) or not re.fullmatch(r"[0-9a-f]{64}", expected_digest)
  ):
    raise ValueError(
      f"expected_digest={expected_digest!r}: expected a sha256 as 64 lowercase hex digits."
    )
  root = pathlib.Path(path)
  for attempt in range(3):  # an overwrite that lands meanwhile removes the old files
    manifest, data = _read_manifest(root)
    try:
      return _load(root, manifest, data, expected_config, expected_version, expected_digest)
    except _Vanished:
      if attempt == 2 or _read_manifest(root)[1] == data:
        raise
  raise AssertionError("unreachable")


def _load(root, manifest, data, expected_config, expected_version, expected_digest) -> Artifact:
  """`load` of one manifest, read once as ``data``."""
  got = hashlib.sha256(data).hexdigest()
  if expected_digest is not None and got != expected_digest:
    raise ValueError(
      f"{MANIFEST}: sha256 is {got}; expected_digest is {expected_digest} (this is not the "
      "artifact you trust)."
    )
  _check_expected(manifest, expected_config, expected_version)
  _check_x64(manifest)
  files = _file_names(manifest)
  bound = npz_bound(manifest)
  if files["params"][2] is not None and files["params"][2] > bound:
    raise ValueError(
      f"{MANIFEST}: field 'sizes' gives {files['params'][0]} {files['params'][2]} bytes; the "
      f"arrays it lists take at most {bound}."
    )
  raw = _verified_bytes(root, files["params"], bound)
  params, state0 = _read_arrays(raw, manifest, files["params"][0])
  exported = _read_functions(root, manifest, files)
  shape = pattern(manifest, "input")
  _check_input(manifest, shape, exported["apply"], len(params))
  check_functions(manifest, exported, {k: files[k][0] for k in exported})
  model = _Model(
    params={k: jnp.asarray(v) for k, v in params.items()},  # on device once
    state0=state0,
    calls={k: jax.jit(e.call) for k, e in exported.items()},
    features=tuple(shape[2:]),
    dtype=np.dtype(manifest["input"]["dtype"]),
    time_major=shape[0] == TIME,
    no_resets=None if manifest["resets"]["available"] else str(manifest["resets"].get("reason")),
  )
  apply, init_state = functools.partial(_apply, model), functools.partial(_init_state, model)
  if "step" not in exported:
    reason = manifest["streaming"].get("reason") or "it was saved with streaming=False."
    return Artifact(apply, init_state, _no_step(reason), manifest)
  return Artifact(apply, init_state, functools.partial(_step, model), manifest)


def _read_functions(root: pathlib.Path, manifest: dict, files: dict) -> dict:
  """The exported functions the manifest lists, each checked against its size and sha256."""
  exported = {}
  for key in FUNCTION_FILES:
    if key in files:
      exported[key] = _deserialize(files[key][0], _verified_bytes(root, files[key]))
  for key in ("apply", "apply_masked"):
    if key not in exported:
      raise ValueError(f"{MANIFEST}: field 'functions' has no {key!r}.")
  return exported


def _aval(shape: Any, dtype: Any) -> str:
  """An aval as text, symbolic sizes by name: ``float32[b,t,3]``."""
  return f"{np.dtype(dtype)}[{','.join(str(d) for d in shape)}]"


def _signatures(manifest: dict) -> dict[str, tuple[list, list]]:
  """What each exported function must take and return, by the manifest: ``(name, aval)`` lists."""
  sym = {BATCH: "b", TIME: "t"}
  pattern_in, pattern_out = pattern(manifest, "input"), pattern(manifest, "output")
  dtype_in, dtype_out = manifest["input"]["dtype"], manifest["output"]["dtype"]
  params = {s.name: _aval(s.shape, s.dtype) for s in _specs(manifest, "params")}
  state = {s.name: _aval(("b", *s.shape), s.dtype) for s in _specs(manifest, "state")}
  xs = _aval([sym.get(d, d) for d in pattern_in], dtype_in)
  ys = _aval([sym.get(d, d) for d in pattern_out], dtype_out)
  x, y = _aval(["b", *pattern_in[2:]], dtype_in), _aval(["b", *pattern_out[2:]], dtype_out)
  lengths = _aval(["b"], np.int32)
  resets, reset = _aval([sym[d] for d in pattern_in[:2]], np.bool_), _aval(["b"], np.bool_)
  head = [("params", params), ("xs", xs), ("state", state)]
  return {
    "apply": (head, [("state", state), ("ys", ys)]),
    "apply_masked": (
      head + [("seq_lengths", lengths), ("resets", resets)],
      [("state", state), ("ys", ys)],
    ),
    "step": (
      [("params", params), ("state", state), ("x", x), ("reset", reset)],
      [("state", state), ("y", y)],
    ),
  }


def check_functions(manifest: dict, exported: dict, names: dict[str, str]) -> None:
  """Every exported function takes and returns exactly what the manifest's specs say.

  Raises:
    ValueError: naming the function's file, the argument or result, and both avals.
  """
  platforms = tuple(manifest["platforms"])
  for key, exp in exported.items():
    if tuple(exp.platforms) != platforms:
      raise ValueError(
        f"{names[key]}: lowered for platforms {tuple(exp.platforms)}; {MANIFEST} says {platforms}."
      )
    ins, outs = _signatures(manifest)[key]
    for what, tree, avals, want in [
      ("inputs", exp.in_tree, exp.in_avals, (tuple(v for _, v in ins), {})),
      ("outputs", exp.out_tree, exp.out_avals, tuple(v for _, v in outs)),
    ]:
      spec = jax.tree.structure(want)
      if tree != spec:
        raise ValueError(
          f"{names[key]}: {what} are {tree}; {MANIFEST} describes {key} as {spec} (another "
          "function, or another model's)."
        )
      labels = [
        label if k is None else f"{label}[{k!r}]"
        for label, value in (ins if what == "inputs" else outs)
        for k in (sorted(value) if isinstance(value, dict) else [None])
      ]
      for label, aval, expected in zip(labels, avals, jax.tree.leaves(want), strict=True):
        if _aval(aval.shape, aval.dtype) != expected:
          raise ValueError(
            f"{names[key]}: {key} {what[:-1]} {label} is {_aval(aval.shape, aval.dtype)}; "
            f"{MANIFEST} says {expected}."
          )


def layout(shape: tuple[str | int, ...]) -> str:
  """A shape pattern as text: ``["batch", "time", 3]`` -> ``"(batch, time, 3)"``."""
  return "(" + ", ".join(map(str, shape)) + ")"


def _check_input(manifest: dict, shape: tuple, apply: jax.export.Exported, num_params: int) -> None:
  """The manifest's input pattern and dtype are what the exported ``apply`` takes."""
  dtype = np.dtype(manifest["input"]["dtype"])
  xs_aval = apply.in_avals[num_params]  # in_avals: params (dict), xs, state...
  takes = tuple(xs_aval.shape[2:])
  if takes != tuple(shape[2:]) or len(xs_aval.shape) != len(shape) or xs_aval.dtype != dtype:
    raise ValueError(
      f"{MANIFEST}: field 'input' says {dtype}{layout(shape)}, but "
      f"{manifest['functions']['apply']} takes {xs_aval.dtype}{layout(xs_aval.shape)}."
    )


class _Model(NamedTuple):
  """What a loaded artifact's callables close over."""

  params: dict[str, jax.Array]
  state0: dict[str, np.ndarray]
  calls: dict[str, Callable[..., Any]]
  features: tuple[int, ...]  # the input's shape past (batch, time)
  dtype: np.dtype
  time_major: bool
  no_resets: str | None  # why apply takes no resets, or None when it does


def _as_array(x: Any) -> Any:
  return x if isinstance(x, jax.Array | jax.core.Tracer) else np.asarray(x)


def _as_input(m: _Model, x: Any, what: str, head: tuple[str, ...]) -> jax.Array:
  """``x`` checked against ``(*head, *features)`` and cast to the artifact's input dtype."""
  x = _as_array(x)
  expected = (*head, *m.features)
  if x.ndim != len(expected) or tuple(x.shape[len(head) :]) != m.features:
    raise ValueError(f"{what} has shape {tuple(x.shape)}; expected {layout(expected)}.")
  if x.dtype != m.dtype:
    kind = jnp.floating if jnp.issubdtype(m.dtype, jnp.floating) else jnp.integer
    if not jnp.issubdtype(m.dtype, kind) or not jnp.issubdtype(x.dtype, kind):
      name = "a floating" if kind is jnp.floating else "an integer"
      raise ValueError(f"{what} has dtype {x.dtype}; expected {name} dtype ({m.dtype}).")
    x = x.astype(m.dtype)
  return jnp.asarray(x)


def _init_state(m: _Model, batch_size: int) -> State:
  if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
    raise ValueError(f"batch_size={batch_size!r}: expected a positive int.")
  return {
    k: jnp.broadcast_to(jnp.asarray(v), (int(batch_size),) + v.shape) for k, v in m.state0.items()
  }


def _as_state(m: _Model, state: Any, batch: int) -> State:
  if state is None:
    return _init_state(m, batch)
  if not isinstance(state, dict) or set(state) != set(m.state0):
    got = sorted(state) if isinstance(state, dict) else type(state).__name__
    raise ValueError(f"state has keys {got}; expected a dict with keys {sorted(m.state0)}.")
  out = {}
  for k, v in m.state0.items():
    leaf = state[k]
    want = (batch,) + v.shape
    if tuple(jnp.shape(leaf)) != want:
      raise ValueError(f"state[{k!r}] has shape {tuple(jnp.shape(leaf))}; expected {want}.")
    out[k] = jnp.asarray(leaf, v.dtype)
  return out


def _as_lengths(seq_lengths: Any, batch: int, length: int) -> jax.Array:
  if seq_lengths is None:
    return jnp.full((batch,), length, jnp.int32)
  seq_lengths = _as_array(seq_lengths)
  if not jnp.issubdtype(seq_lengths.dtype, jnp.integer) or seq_lengths.shape != (batch,):
    raise ValueError(
      f"seq_lengths is {seq_lengths.dtype}{list(seq_lengths.shape)}; expected integers of "
      f"shape ({batch},), one length per sequence."
    )
  if not isinstance(seq_lengths, jax.core.Tracer):
    lo, hi = int(np.min(seq_lengths)), int(np.max(seq_lengths))
    if lo < 0 or hi > length:
      raise ValueError(f"seq_lengths must lie in [0, T={length}]; got values from {lo} to {hi}.")
  return jnp.asarray(seq_lengths, jnp.int32)


def _as_mask(mask: Any, what: str, shape: tuple[int, ...], names: str, meaning: str) -> jax.Array:
  """A boolean mask of ``shape``: ``resets`` ``(batch, time)``, a step's ``reset`` ``(batch,)``."""
  if mask is None:
    return jnp.zeros(shape, jnp.bool_)
  mask = _as_array(mask)
  if mask.dtype != np.bool_:
    raise ValueError(f"{what} has dtype {mask.dtype}; expected bool ({meaning}).")
  if tuple(mask.shape) != shape:
    raise ValueError(f"{what} has shape {tuple(mask.shape)}; expected {names} = {shape}.")
  return jnp.asarray(mask)


def _apply(
  m: _Model, xs: Any, state: Any = None, *, seq_lengths: Any = None, resets: Any = None
) -> tuple[State, jax.Array]:
  head = (TIME, BATCH) if m.time_major else (BATCH, TIME)
  xs = _as_input(m, xs, "xs", head)
  batch, length = (xs.shape[1], xs.shape[0]) if m.time_major else xs.shape[:2]
  state = _as_state(m, state, batch)
  if seq_lengths is None and resets is None:
    return m.calls["apply"](m.params, xs, state)
  if resets is not None and m.no_resets:
    raise ValueError(f"this artifact's apply takes no resets: {m.no_resets}")
  lengths = _as_lengths(seq_lengths, batch, length)
  meaning = "True at t starts a new segment at t"
  resets = _as_mask(resets, "resets", xs.shape[:2], layout(head), meaning)
  return m.calls["apply_masked"](m.params, xs, state, lengths, resets)


def _step(m: _Model, state: Any, x: Any, reset: Any = None) -> tuple[State, jax.Array]:
  x = _as_input(m, x, "x", (BATCH,))
  state = _as_state(m, state, x.shape[0])
  reset = _as_mask(reset, "reset", (x.shape[0],), "(batch,)", "True restarts a row")
  return m.calls["step"](m.params, state, x, reset)
