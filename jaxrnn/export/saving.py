"""Writes a model's inference functions with `jax.export`, weights alongside."""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
import pathlib
import re
import secrets
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn import params_check
from jaxrnn.cells import kernel
from jaxrnn.cells.base import PyTree
from jaxrnn.export import _writing
from jaxrnn.export.loading import (
  BATCH,
  FORMAT,
  FORMAT_VERSION,
  FUNCTION_FILES,
  MANIFEST,
  PARAMS_FILE,
  TIME,
  read_manifest,
  stored_dtype,
  to_json,
)
from jaxrnn.model import SequenceModel
from jaxrnn.stream import stream
from jaxrnn.version import __version__

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
# The names save writes: format 2's, and format 3's with a save's id (a killed save's
# leftovers, and the manifest it had not yet moved into place, have these names too).
OWN_FILES = re.compile(
  r"(params\.npz|(apply|apply_masked|step)\.jaxexport"
  r"|(params|apply|apply_masked|step)\.[0-9a-f]{16}\.(npz|jaxexport)"
  r"|manifest\.json\.[0-9a-f]{16}\.tmp)"
)


def _names(tree: PyTree) -> tuple[list[str], list[Any], Any]:
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  names = [jax.tree_util.keystr(p, simple=True, separator=".") for p, _ in leaves]
  return names, [leaf for _, leaf in leaves], treedef


def _input_size(params: PyTree) -> int:
  size = getattr(params, "input_size", None)
  if isinstance(size, int):
    return size
  if isinstance(params, tuple | list) and params:
    return _input_size(params[0])  # a stack's first layer, a bidirectional's forward
  raise ValueError(
    "save: cannot tell the input size from params of type "
    f"{type(params).__name__}; pass input_size=... or input_spec=..."
  )


def _input_spec(params: PyTree, input_spec: Any, input_size: int | None) -> jax.ShapeDtypeStruct:
  """One time step of one sequence: ``input_spec``, else ``(input_size,)`` in the params' dtype."""
  if input_spec is None:
    size = _input_size(params) if input_size is None else input_size
    return jax.ShapeDtypeStruct((size,), kernel.params_dtype(params))
  if input_size is not None:
    raise ValueError(
      f"save: input_size={input_size!r} and input_spec={input_spec!r}; expected one of them."
    )
  shape, dtype = getattr(input_spec, "shape", None), getattr(input_spec, "dtype", None)
  if (
    not isinstance(shape, tuple)
    or not all(isinstance(d, int) and d >= 0 for d in shape)
    or dtype is None
  ):
    raise ValueError(
      f"save: input_spec={input_spec!r}; expected a jax.ShapeDtypeStruct of one time step of "
      "one sequence, e.g. ShapeDtypeStruct((), jnp.int32) for token ids."
    )
  return jax.ShapeDtypeStruct(shape, dtype)


def _check_platforms(platforms: Any) -> tuple[str, ...]:
  if isinstance(platforms, str) or not isinstance(platforms, Sequence) or not platforms:
    raise ValueError(
      f"platforms={platforms!r}: expected a non-empty tuple such as ('cpu', 'cuda')."
    )
  for p in platforms:
    if p not in PLATFORMS:
      raise ValueError(f"platforms={tuple(platforms)!r}: {p!r} is not one of {PLATFORMS}.")
  if len(set(platforms)) != len(platforms):
    raise ValueError(f"platforms={tuple(platforms)!r}: names a platform twice.")
  return tuple(platforms)


def require_flatbuffers() -> None:
  if importlib.util.find_spec("flatbuffers") is None:
    raise ImportError(
      "jaxrnn.export needs the 'flatbuffers' package, which jax.export uses to serialize: "
      "pip install flatbuffers."
    )


def save(
  path: str | os.PathLike,
  model: SequenceModel,
  params: PyTree,
  *,
  platforms: Sequence[str] = ("cpu",),
  streaming: bool | None = None,
  input_size: int | None = None,
  input_spec: Any = None,
  overwrite: bool = False,
) -> dict[str, Any]:
  """Exports ``model`` with ``params`` as a directory that runs without jaxrnn.

  Three functions are exported with `jax.export`, jit-compiled and
  deterministic (no dropout), each with a symbolic batch size ``b`` and, where
  there is one, length ``t``, so one artifact serves any batch and length:
  ``apply`` ``(b, t, *features) -> (b, t, F)`` (``(t, b, ...)`` if the model
  is time-major), ``apply_masked`` (the same with ``seq_lengths`` ``(b,)``
  int32 and ``resets`` ``(b, t)`` bool, as `jaxrnn.scan` reads them), and the
  `jaxrnn.stream` ``step`` ``(b, *features) -> (b, F)`` with a ``reset``
  mask. ``features`` and the input dtype are ``input_spec``: by default
  ``(input_size,)`` in the params' dtype; a model of token ids declares
  ``jax.ShapeDtypeStruct((), jnp.int32)``. The weights are not baked in: they
  are stored once beside the functions, in ``params.npz``, in their own dtype
  (bfloat16 as its bits, a uint16 view; the manifest says which), with the
  unbatched initial state. ``manifest.json`` records the jaxrnn and jax
  versions, the model's config and execution settings (``unroll``, ``remat``,
  ``impl``; `load` checks only the config), the input and output specs (shape
  patterns such as ``["batch", "time", 3]`` and dtypes) and the sha256 and
  size of every file. A float64 model is saved and run with
  ``jax_enable_x64`` set. Load it with `jaxrnn.export.load`, or ``python -m
  jaxrnn.export``.

  The write is atomic and touches no file it did not write: every file but
  the manifest gets a name of its own (``params.<id>.npz``,
  ``apply.<id>.jaxexport``, ... with a new 16-hex-digit id per save), then
  the manifest replaces the old one in one `os.replace`, and only then are
  the files the old manifest listed removed. A reader (`load`), a kill or a
  full disk at any moment finds the old artifact or the new one, whole; a
  failed write removes what it wrote and raises; a killed one can leave
  unlisted files of its own, which `load` ignores and a later save with
  ``overwrite`` accepts. Two saves into one path at once each leave a whole
  artifact and the last manifest renamed wins. `jaxrnn.export.digest` of the
  saved path is the trust anchor for ``load(..., expected_digest=...)``.

  Args:
    path: a directory to create, or an empty one; with ``overwrite``, one
      holding an artifact (or only a killed save's leftovers).
    model: a `SequenceModel`.
    params: its parameters.
    platforms: the platforms to lower for, from ``('cpu', 'cuda', 'rocm',
      'tpu')``; lowering needs no such device here, running needs one there.
    streaming: export ``step`` too: None (default) when the model can stream
      (not bidirectional nor reverse), True to require it, False never.
    input_size: the input feature size, if params do not tell it.
    input_spec: instead of ``input_size``, one time step of one sequence as a
      `jax.ShapeDtypeStruct` (or anything with ``shape`` and ``dtype``):
      ``xs`` is then ``(batch, time, *input_spec.shape)`` of its dtype.
    overwrite: replace the artifact in ``path``, atomically.

  Returns:
    The manifest, as written to ``manifest.json``.

  Raises:
    ValueError: a bad ``platforms`` or ``input_spec``; ``streaming=True`` for
      a model that cannot stream; ``path`` a file, or a non-empty directory
      (without ``overwrite``; with it, one holding files of its own that are
      not an artifact), named with what it holds; a model that `jax.export`
      cannot lower.
    OSError: a failed write (a full disk), after removing what it wrote.
    ImportError: without the ``flatbuffers`` package.

  Example:
    >>> import tempfile, jax, jax.numpy as jnp, jaxrnn
    >>> model = jaxrnn.rnn_layers("gru", 8, num_layers=2)
    >>> params = model.init(jax.random.key(0), input_size=3)
    >>> path = tempfile.mkdtemp()
    >>> manifest = jaxrnn.export.save(path, model, params, platforms=("cpu", "cuda"))
    >>> artifact = jaxrnn.export.load(path)
    >>> state, ys = artifact.apply(jnp.ones((2, 5, 3)))
    >>> state, y = artifact.step(artifact.init_state(4), jnp.ones((4, 3)))
    >>> ys.shape, y.shape, sorted(state), manifest["input"]
    ((2, 5, 8), (4, 8), ['0.h', '1.h'], {'shape': ['batch', 'time', 3], 'dtype': 'float32'})
  """
  platforms, root, old = _check_save(model, platforms, streaming, path, overwrite)
  params_check.check(model, params, "export.save", "save(path, model, params, ...)")
  params_flat = _Flat.of(params)
  if not params_flat.leaves:
    raise ValueError("save: params has no arrays.")
  x_spec = _input_spec(params, input_spec, input_size)
  state_flat = _Flat.of(model.initial_carry(params, ()))
  time_major = bool(getattr(model, "time_major", False))  # a Cell's apply: batch-major
  step_fn, reason = _streaming_step(model, streaming)
  no_resets = _no_resets(model)
  functions = _functions(model, step_fn, params_flat, state_flat, x_spec, time_major, no_resets)
  blobs, outputs = _export(functions, platforms)
  token = secrets.token_hex(8)
  names = {key: FUNCTION_FILES[key].replace(".", f".{token}.") for key in blobs}
  params_file = PARAMS_FILE.replace(".", f".{token}.")
  head = [TIME, BATCH] if time_major else [BATCH, TIME]
  manifest = {
    "format": FORMAT,
    "format_version": FORMAT_VERSION,
    "jaxrnn_version": __version__,
    "jax_version": jax.__version__,
    "model": {
      "name": model.name,
      "config": to_json(dict(model.config)),
      "settings": to_json(dict(getattr(model, "settings", ()))),
    },
    "platforms": list(platforms),
    "input": {"shape": head + list(x_spec.shape), "dtype": str(np.dtype(x_spec.dtype))},
    "output": outputs,
    "params": params_flat.specs(),
    "state": state_flat.specs(),
    "streaming": {"available": step_fn is not None, "reason": reason},
    "resets": {"available": no_resets is None, "reason": no_resets},
    "functions": names,
    "params_file": params_file,
  }

  def finish(info: dict[str, tuple[str, int]]) -> dict[str, Any]:
    files = {name: digest for name, (digest, _) in info.items()}
    return {**manifest, "files": files, "sizes": {name: n for name, (_, n) in info.items()}}

  contents: dict[str, Any] = {names[key]: blob for key, blob in blobs.items()}
  contents[params_file] = functools.partial(_write_npz, p=params_flat, s=state_flat)
  return _writing.write_artifact(root, contents, finish, token, manifest_name=MANIFEST, old=old)


def _check_save(model, platforms, streaming, path, overwrite) -> tuple[tuple[str, ...], Any, list]:
  """The eager checks of `save`'s arguments; the platforms, the artifact's root, and the
  files of the artifact it replaces (to remove once the new one is in place)."""
  if not isinstance(model, SequenceModel):
    raise ValueError(f"save: expected a jaxrnn.SequenceModel, got {type(model).__name__}.")
  platforms = _check_platforms(platforms)
  if streaming not in (None, True, False):
    raise ValueError(f"streaming={streaming!r}: expected None, True or False.")
  require_flatbuffers()
  root = pathlib.Path(path)
  if root.exists() and not root.is_dir():
    raise ValueError(f"save: path={str(root)!r} is a file; expected a directory.")
  held = sorted(os.listdir(root)) if root.is_dir() else []
  shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
  if held and not overwrite:
    what = "an artifact already" if MANIFEST in held else "files"
    raise ValueError(
      f"save: path={str(root)!r} holds {what} ({shown}); expected a new or empty directory, "
      "or pass overwrite=True to replace an artifact."
    )
  if MANIFEST not in held and not all(OWN_FILES.fullmatch(name) for name in held):
    raise ValueError(
      f"save: path={str(root)!r} holds {shown} but no artifact ({MANIFEST}); overwrite=True "
      "replaces an artifact, never files save did not write."
    )
  return platforms, root, _old_files(root) if MANIFEST in held else []


def _old_files(root: pathlib.Path) -> list[str]:
  """The files the artifact in ``root`` lists that save writes (any other name is left alone)."""
  try:
    listed = read_manifest(root)["files"]
  except ValueError:  # unreadable: its files are left in place, unlisted
    return []
  return [name for name in listed if OWN_FILES.fullmatch(name)]


class _Flat(NamedTuple):
  """A pytree as named NumPy leaves: the names the artifact's dicts use, and its treedef."""

  names: list[str]
  leaves: list[np.ndarray]
  treedef: Any

  @classmethod
  def of(cls, tree: PyTree) -> _Flat:
    names, leaves, treedef = _names(tree)
    return cls(names, [np.asarray(leaf) for leaf in leaves], treedef)

  def unflatten(self, d: dict[str, Any]) -> PyTree:
    return jax.tree.unflatten(self.treedef, [d[n] for n in self.names])

  def flat(self, tree: PyTree) -> dict[str, Any]:
    return dict(zip(self.names, jax.tree.leaves(tree), strict=True))

  def spec(self, batch: tuple = ()) -> dict[str, jax.ShapeDtypeStruct]:
    return {
      n: jax.ShapeDtypeStruct(batch + a.shape, a.dtype)
      for n, a in zip(self.names, self.leaves, strict=True)
    }

  def specs(self) -> list[dict[str, Any]]:
    return [
      {"name": n, "shape": list(a.shape), "dtype": str(a.dtype), "stored_as": str(_stored(a).dtype)}
      for n, a in zip(self.names, self.leaves, strict=True)
    ]


def _stored(a: np.ndarray) -> np.ndarray:
  """``a`` as ``params.npz`` holds it: itself, or its bits (`loading.stored_dtype`)."""
  return a.view(stored_dtype(a.dtype))


def _streaming_step(model: SequenceModel, streaming: bool | None) -> tuple[Any, str | None]:
  """The `jaxrnn.stream` step to export, or None with the reason there is none."""
  if streaming is False:
    return None, "it was saved with streaming=False."
  try:
    return stream(model).step, None
  except ValueError as e:
    if streaming:
      raise
    return None, str(e)


def _no_resets(model: SequenceModel) -> str | None:
  """Why the model's ``apply`` takes no ``resets`` (a user's may omit it), or None."""
  try:
    parameters = inspect.signature(model.apply).parameters.values()
  except (TypeError, ValueError):  # no signature to read: assume the contract's
    return None
  if any(p.name == "resets" or p.kind is p.VAR_KEYWORD for p in parameters):
    return None
  return f"the model's apply ({model.name!r}) has no resets argument."


def _functions(model, step_fn, p: _Flat, s: _Flat, x_spec, time_major, no_resets) -> dict:
  """The functions to export, by key, each with the abstract arguments to lower it for."""

  def apply(params, xs, state):
    carry, ys = model.apply(p.unflatten(params), xs, s.unflatten(state), deterministic=True)
    return s.flat(carry), ys

  def apply_masked(params, xs, state, seq_lengths, resets):
    kw = {} if no_resets else dict(resets=resets)
    carry, ys = model.apply(
      p.unflatten(params), xs, s.unflatten(state), seq_lengths=seq_lengths, deterministic=True, **kw
    )
    return s.flat(carry), ys

  def step(params, state, x, reset):
    # Restarts here, not in stream's step, whose reset check reads the batch off x[..., :-1].
    state = kernel.restart(reset, state, s.flat(model.initial_carry(p.unflatten(params), ())))
    state, y = step_fn(p.unflatten(params), s.unflatten(state), x)
    return s.flat(state), y

  b, t = jax.export.symbolic_shape("b, t")
  sds = jax.ShapeDtypeStruct
  p_spec, s_spec = p.spec(), s.spec((b,))
  head = (t, b) if time_major else (b, t)
  xs_spec = sds(head + x_spec.shape, x_spec.dtype)
  functions = {
    "apply": (apply, (p_spec, xs_spec, s_spec)),
    "apply_masked": (
      apply_masked,
      (p_spec, xs_spec, s_spec, sds((b,), jnp.int32), sds(head, jnp.bool_)),
    ),
  }
  if step_fn is not None:
    step_x = sds((b, *x_spec.shape), x_spec.dtype)
    functions["step"] = (step, (p_spec, s_spec, step_x, sds((b,), jnp.bool_)))
  return functions


def _export(functions: dict, platforms: tuple[str, ...]) -> tuple[dict[str, bytes], dict]:
  """Each function through `jax.export`, serialized, by key; the output spec of apply."""
  blobs, exported = {}, {}
  for key, (fn, specs) in functions.items():
    try:
      exported[key] = jax.export.export(jax.jit(fn), platforms=platforms)(*specs)
    except ValueError:
      raise
    except Exception as e:  # lowering errors come in many types
      raise ValueError(
        f"save: jax.export could not lower {key} for platforms={platforms}: {type(e).__name__}: {e}"
      ) from e
    blobs[key] = bytes(exported[key].serialize())
  ys = exported["apply"].out_avals[-1]
  names = {"b": BATCH, "t": TIME}
  shape = [d if isinstance(d, int) else names[str(d)] for d in ys.shape]
  return blobs, {"shape": shape, "dtype": str(np.dtype(ys.dtype))}


def _write_npz(f: Any, p: _Flat, s: _Flat) -> None:
  """``params.npz``: the params and the unbatched initial state, uncompressed, as stored."""
  arrays = {f"param:{n}": _stored(a) for n, a in zip(p.names, p.leaves, strict=True)}
  arrays.update({f"state:{n}": _stored(a) for n, a in zip(s.names, s.leaves, strict=True)})
  np.savez(f, **arrays)
