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
                              input/output sizes, names and shapes of params and state,
                              target platforms, and a sha256 of every other file
    params.npz                the weights ("param:<name>") and the unbatched initial state
                              ("state:<name>"), read with np.load(allow_pickle=False)
    apply.jaxexport           jax.export of apply(params, xs, state) -> (state, ys)
    apply_lengths.jaxexport   the same with seq_lengths
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
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

FORMAT = "jaxrnn.export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PARAMS_FILE = "params.npz"
FUNCTION_FILES = {
  "apply": "apply.jaxexport",
  "apply_lengths": "apply_lengths.jaxexport",
  "step": "step.jaxexport",
}

State = dict[str, jax.Array]


class Artifact(NamedTuple):
  """A loaded model: pure callables with the weights bound, already on device.

  A state is a dict from the names in ``manifest["state"]`` (for a stack,
  ``"0.h"``, ``"0.c"``, ``"1.h"``...) to arrays ``(batch, *shape)``.

  Attributes:
    apply: ``apply(xs, state=None, *, seq_lengths=None) -> (state, ys)``, the
      model's deterministic ``apply``: ``xs`` is ``(batch, time, input_size)``
      (``(time, batch, input_size)`` for time-major models), floating inputs
      are cast to the artifact's dtype; ``seq_lengths`` integer ``(batch,)``.
    init_state: ``init_state(batch_size) -> state``, the initial state.
    step: ``step(state, x, reset=None) -> (state, y)``, one streaming step with
      ``x`` ``(batch, input_size)`` and an optional boolean ``(batch,)`` mask of
      rows to restart from the initial state first.
    manifest: the parsed ``manifest.json``.
  """

  apply: Callable[..., tuple[State, jax.Array]]
  init_state: Callable[[int], State]
  step: Callable[..., tuple[State, jax.Array]]
  manifest: dict[str, Any]


def to_json(value: Any) -> Any:
  """A config value as JSON data: tuples become lists; other objects their repr."""
  if value is None or isinstance(value, bool | int | float | str):
    return value
  if isinstance(value, tuple | list):
    return [to_json(v) for v in value]
  if isinstance(value, dict):
    return {str(k): to_json(v) for k, v in value.items()}
  if isinstance(value, np.generic):
    return value.item()
  return repr(value)


def sha256(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


class _Missing(str):
  """The value `first_difference` reports for a key one side lacks (``'<missing>'``)."""


MISSING = _Missing("<missing>")


def first_difference(
  got: Any, expected: Any, where: str = "", first: tuple[str, ...] = ()
) -> tuple[str, Any, Any] | None:
  """The first field where two JSON values differ: ``(field, got, expected)``, or None.

  Dicts are compared key by key (the keys in ``first`` that both hold, then the
  others sorted), lists of equal length item by item; a key that one side
  lacks is reported with `MISSING` (``is MISSING`` tells it from a value) on that side.

  Example:
    >>> first_difference({"a": 1, "b": [2, 3]}, {"a": 1, "b": [2, 4]})
    ('b[1]', 3, 4)
  """
  if isinstance(got, dict) and isinstance(expected, dict):
    order = [k for k in first if k in got and k in expected]
    for key in order + sorted((set(got) | set(expected)) - set(order)):
      sub = f"{where}.{key}" if where else key
      if key not in got or key not in expected:
        return sub, got.get(key, MISSING), expected.get(key, MISSING)
      diff = first_difference(got[key], expected[key], sub, first)
      if diff:
        return diff
    return None
  if isinstance(got, list) and isinstance(expected, list) and len(got) == len(expected):
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
      diff = first_difference(g, e, f"{where}[{i}]", first)
      if diff:
        return diff
    return None
  if got != expected or type(got) is not type(expected):
    return where, got, expected
  return None


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


def _specs(manifest: dict, key: str) -> list[tuple[str, tuple[int, ...], np.dtype]]:
  specs = []
  for i, entry in enumerate(_field(manifest, key, list)):
    try:
      specs.append(
        (str(entry["name"]), tuple(int(d) for d in entry["shape"]), np.dtype(entry["dtype"]))
      )
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(
        f"{MANIFEST}: {key}[{i}] is {entry!r}; expected {{'name', 'shape', 'dtype'}} ({e})."
      ) from None
  return specs


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
    ("input.size", int),
    ("input.dtype", str),
    ("input.time_major", bool),
    ("output_size", int),
    ("streaming.available", bool),
    ("functions", dict),
    ("files", dict),
  ]:
    _field(manifest, key, kind)
  _specs(manifest, "params")
  _specs(manifest, "state")
  return manifest


def _check_expected(manifest: dict, expected_config: Any, expected_version: Any) -> None:
  if expected_version is not None and manifest["jaxrnn_version"] != expected_version:
    raise ValueError(
      f"{MANIFEST}: field 'jaxrnn_version' is {manifest['jaxrnn_version']!r}; "
      f"expected {expected_version!r}."
    )
  if expected_config is not None:
    config = getattr(expected_config, "config", expected_config)  # a SequenceModel too
    expected = to_json(dict(config))
    diff = first_difference(manifest["model"]["config"], expected)
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
  try:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
      arrays = {k: npz[k] for k in npz.files}
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f"{PARAMS_FILE}: not a readable .npz ({e}).") from None
  out = []
  for prefix, key in (("param:", "params"), ("state:", "state")):
    group = {}
    for name, shape, dtype in _specs(manifest, key):
      if prefix + name not in arrays:
        raise ValueError(f"{PARAMS_FILE}: no array {prefix + name!r}; {MANIFEST} lists it.")
      a = arrays[prefix + name]
      if a.shape != shape or a.dtype != dtype:
        raise ValueError(
          f"{PARAMS_FILE}: {prefix + name} is {a.dtype}{list(a.shape)}; expected "
          f"{dtype}{list(shape)} from {MANIFEST}."
        )
      group[name] = a
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


def load(
  path: str | pathlib.Path,
  *,
  expected_config: Any = None,
  expected_version: str | None = None,
) -> Artifact:
  """Loads an artifact directory written by `jaxrnn.export.save`.

  Every file is checked against the sha256 in the manifest, and the arrays
  against the names, shapes and dtypes it lists, before anything runs.

  Args:
    path: the artifact directory.
    expected_config: if given, the model's config (``model.config``, a
      `SequenceModel`, or a dict) that the manifest must record.
    expected_version: if given, the jaxrnn version that must have written it.

  Returns:
    An `Artifact` ``(apply, init_state, step, manifest)``.

  Raises:
    ValueError: a missing, corrupt or truncated file; a manifest of another
      format version, or whose config or version differs from the expected
      ones; and, from the returned callables, inputs of the wrong rank,
      feature size, dtype or batch size.
  """
  root = pathlib.Path(path)
  manifest = read_manifest(root)
  _check_expected(manifest, expected_config, expected_version)
  params, state0 = _read_arrays(_verified_bytes(root, PARAMS_FILE, manifest["files"]), manifest)
  exported = _read_functions(root, manifest)
  _check_input(manifest, exported["apply"], len(params))
  model = _Model(
    params={k: jnp.asarray(v) for k, v in params.items()},  # on device once
    state0=state0,
    calls={k: jax.jit(e.call) for k, e in exported.items()},
    input_size=manifest["input"]["size"],
    dtype=np.dtype(manifest["input"]["dtype"]),
    time_major=manifest["input"]["time_major"],
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
  for key in ("apply", "apply_lengths"):
    if key not in exported:
      raise ValueError(f"{MANIFEST}: field 'functions' has no {key!r}.")
  return exported


def _check_input(manifest: dict, apply: jax.export.Exported, num_params: int) -> None:
  """The manifest's input size and dtype are what the exported ``apply`` takes."""
  input_size = manifest["input"]["size"]
  dtype = np.dtype(manifest["input"]["dtype"])
  xs_aval = apply.in_avals[num_params]  # in_avals: params (dict), xs, state...
  if xs_aval.shape[-1] != input_size or xs_aval.dtype != dtype:
    raise ValueError(
      f"{MANIFEST}: field 'input' says {dtype}[..., {input_size}], but "
      f"{manifest['functions']['apply']} takes {xs_aval.dtype}[..., {xs_aval.shape[-1]}]."
    )


class _Model(NamedTuple):
  """What a loaded artifact's callables close over."""

  params: dict[str, jax.Array]
  state0: dict[str, np.ndarray]
  calls: dict[str, Callable[..., Any]]
  input_size: int
  dtype: np.dtype
  time_major: bool


def _as_input(m: _Model, x: Any, what: str, shape: str, rank: int) -> jax.Array:
  if not isinstance(x, jax.Array | jax.core.Tracer):
    x = np.asarray(x)
  if x.ndim != rank or x.shape[-1] != m.input_size:
    raise ValueError(
      f"{what} has shape {tuple(x.shape)}; expected {shape} with features={m.input_size}."
    )
  if x.dtype != m.dtype:
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f"{what} has dtype {x.dtype}; expected a floating dtype ({m.dtype}).")
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
  if not isinstance(seq_lengths, jax.Array | jax.core.Tracer):
    seq_lengths = np.asarray(seq_lengths)
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


def _apply(
  m: _Model, xs: Any, state: Any = None, *, seq_lengths: Any = None
) -> tuple[State, jax.Array]:
  layout = "(time, batch, features)" if m.time_major else "(batch, time, features)"
  xs = _as_input(m, xs, "xs", layout, 3)
  batch, length = (xs.shape[1], xs.shape[0]) if m.time_major else xs.shape[:2]
  state = _as_state(m, state, batch)
  if seq_lengths is None:
    return m.calls["apply"](m.params, xs, state)
  lengths = _as_lengths(seq_lengths, batch, length)
  return m.calls["apply_lengths"](m.params, xs, state, lengths)


def _step(m: _Model, state: Any, x: Any, reset: Any = None) -> tuple[State, jax.Array]:
  x = _as_input(m, x, "x", "(batch, features)", 2)
  state = _as_state(m, state, x.shape[0])
  if reset is None:
    reset = jnp.zeros((x.shape[0],), jnp.bool_)
  elif not isinstance(reset, jax.Array | jax.core.Tracer):
    reset = np.asarray(reset)
  if reset.dtype != np.bool_:
    raise ValueError(f"reset has dtype {reset.dtype}; expected bool (True restarts a row).")
  if tuple(reset.shape) != (x.shape[0],):
    raise ValueError(f"reset has shape {tuple(reset.shape)}; expected ({x.shape[0]},).")
  return m.calls["step"](m.params, state, x, jnp.asarray(reset))
