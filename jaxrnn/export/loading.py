"""Loads an artifact written by `jaxrnn.export.save`, without jaxrnn.

This module imports only the standard library, numpy and jax, never jaxrnn, so a
serving process can load it by file path and run a model without the code that
built it::

    import importlib.util
    spec = importlib.util.spec_from_file_location("jaxrnn_loading", ".../jaxrnn/export/loading.py")
    loading = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loading)
    artifact = loading.load("model_dir")

An artifact is a directory:

    manifest.json             format version, jaxrnn and jax versions, the model's name,
                              config and settings (recorded; load checks the config),
                              the input and output specs (shape pattern such as
                              ["batch", "time", 3] and dtype), names, shapes and dtypes
                              of params and state, target platforms, and a sha256 of
                              every other file
    params.npz                the weights ("param:<name>") and the unbatched initial state
                              ("state:<name>"), read with np.load(allow_pickle=False); a
                              dtype that .npy cannot hold (bfloat16, float8) is stored as
                              its bits, an unsigned view of the same width, and each
                              entry's "stored_as" in the manifest says which
    apply.jaxexport           jax.export of apply(params, xs, state) -> (state, ys)
    apply_masked.jaxexport    the same with seq_lengths and resets
    step.jaxexport            jax.export of the streaming step(params, state, x, reset)
                              (absent for models that cannot stream)

The functions take the weights as arguments (they are not baked in), with a
symbolic batch size ``b`` and length ``t``, so one artifact serves every batch
size and sequence length.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import pathlib
import zipfile
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

FORMAT = "jaxrnn.export"
FORMAT_VERSION = 2  # 2: input/output specs, "stored_as", apply_masked (seq_lengths and resets)
MANIFEST = "manifest.json"
PARAMS_FILE = "params.npz"
FUNCTION_FILES = {
  "apply": "apply.jaxexport",
  "apply_masked": "apply_masked.jaxexport",
  "step": "step.jaxexport",
}
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
  """The arrays of an artifact that need ``jax_enable_x64`` (64-bit dtypes), by name."""
  entries = [("input", manifest["input"]["dtype"])]
  for key, prefix in (("params", "param:"), ("state", "state:")):
    entries += [(prefix + e["name"], e["dtype"]) for e in manifest[key]]
  return [name for name, dtype in entries if np.dtype(dtype).itemsize == 8]


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


def read_manifest(path: str | pathlib.Path) -> dict[str, Any]:
  """Reads and checks ``manifest.json`` (no arrays, no compiled code).

  Raises:
    ValueError: a missing, truncated or malformed manifest, or a format
      version this loader does not read.
  """
  file = pathlib.Path(path) / MANIFEST
  if not file.is_file():
    raise ValueError(f"{path}: no {MANIFEST}; expected a directory written by jaxrnn.export.save.")
  try:
    manifest = json.loads(file.read_text(encoding="utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(
      f"{file}: not valid JSON, the manifest is corrupt or truncated ({e})."
    ) from None
  if not isinstance(manifest, dict):
    raise ValueError(f"{file}: holds a {type(manifest).__name__}; expected a JSON object.")
  if _field(manifest, "format", str) != FORMAT:
    raise ValueError(f"{MANIFEST}: field 'format' is {manifest['format']!r}; expected {FORMAT!r}.")
  version = _field(manifest, "format_version", int)
  if version != FORMAT_VERSION:
    raise ValueError(
      f"{MANIFEST}: field 'format_version' is {version}; expected {FORMAT_VERSION} (this loader "
      "reads only that version)."
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
  return manifest


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


def _verified_bytes(root: pathlib.Path, name: str, files: dict) -> bytes:
  file = root / name
  if name not in files:
    raise ValueError(f"{MANIFEST}: field 'files' has no sha256 for {name!r}.")
  if not file.is_file():
    raise ValueError(f"{file}: missing; the manifest lists it.")
  data = file.read_bytes()
  digest = hashlib.sha256(data).hexdigest()
  if digest != files[name]:
    raise ValueError(
      f"{name}: sha256 is {digest}; expected {files[name]} from {MANIFEST} (the file is corrupt, "
      "truncated or from another artifact)."
    )
  return data


def _read_arrays(data: bytes, manifest: dict) -> tuple[dict, dict]:
  """The params and initial state, each array in its own dtype (a stored view undone)."""
  try:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
      arrays = {k: npz[k] for k in npz.files}
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f"{PARAMS_FILE}: not a readable .npz ({e}).") from None
  out = []
  for prefix, key in (("param:", "params"), ("state:", "state")):
    group = {}
    for spec in _specs(manifest, key):
      name = prefix + spec.name
      if name not in arrays:
        raise ValueError(f"{PARAMS_FILE}: no array {name!r}; {MANIFEST} lists it.")
      a = arrays[name]
      if a.shape != spec.shape or a.dtype != spec.stored_as:
        raise ValueError(
          f"{PARAMS_FILE}: {name} is {a.dtype}{list(a.shape)}; expected "
          f"{spec.stored_as}{list(spec.shape)} from {MANIFEST}."
        )
      group[spec.name] = a.view(spec.dtype)
    out.append(group)
  return out[0], out[1]


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
) -> Artifact:
  """Loads an artifact directory written by `jaxrnn.export.save`.

  Every file is checked against the sha256 in the manifest, and the arrays
  against the names, shapes and dtypes it lists, before anything runs. An
  artifact with 64-bit arrays (a float64 model, int64 inputs) loads and runs
  only with ``jax_enable_x64`` set.

  Args:
    path: the artifact directory.
    expected_config: if given, what the manifest must record: a
      `SequenceModel` (its name and whole config) or its ``config`` (the whole
      config), or a dict of some fields only, at any depth, e.g. ``{"kind":
      "gru", "cell_config": {"hidden_size": 8}}``. Numbers compare by value
      (``0`` equals ``0.0``).
    expected_version: if given, the jaxrnn version that must have written it.

  Returns:
    An `Artifact` ``(apply, init_state, step, manifest)``.

  Raises:
    ValueError: a missing, corrupt or truncated file; a manifest of another
      format version, or whose config or version differs from the expected
      ones (the message names the first field that differs, a model's kind
      first); 64-bit arrays without ``jax_enable_x64``; and, from the returned
      callables, inputs of the wrong rank, feature shape, dtype or batch size.

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
  root = pathlib.Path(path)
  manifest = read_manifest(root)
  _check_expected(manifest, expected_config, expected_version)
  _check_x64(manifest)
  params, state0 = _read_arrays(_verified_bytes(root, PARAMS_FILE, manifest["files"]), manifest)
  exported = _read_functions(root, manifest)
  shape = pattern(manifest, "input")
  _check_input(manifest, shape, exported["apply"], len(params))
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


def _read_functions(root: pathlib.Path, manifest: dict) -> dict[str, jax.export.Exported]:
  """The exported functions the manifest lists, each checked against its sha256."""
  files, functions = manifest["files"], manifest["functions"]
  exported = {}
  for key in FUNCTION_FILES:
    if key in functions:
      exported[key] = _deserialize(functions[key], _verified_bytes(root, functions[key], files))
  for key in ("apply", "apply_masked"):
    if key not in exported:
      raise ValueError(f"{MANIFEST}: field 'functions' has no {key!r}.")
  return exported


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
