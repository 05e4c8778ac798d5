"""Writes a model's inference functions with `jax.export`, weights alongside."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.cells.base import PyTree
from jaxrnn.export.loading import (
  FORMAT,
  FORMAT_VERSION,
  FUNCTION_FILES,
  MANIFEST,
  PARAMS_FILE,
  sha256,
  to_json,
)
from jaxrnn.model import SequenceModel
from jaxrnn.stream import stream
from jaxrnn.version import __version__

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


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
    f"{type(params).__name__}; pass input_size=..."
  )


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
  overwrite: bool = False,
) -> dict[str, Any]:
  """Exports ``model`` with ``params`` as a directory that runs without jaxrnn.

  Three functions are exported with `jax.export`, jit-compiled and
  deterministic (no dropout), each with a symbolic batch size ``b`` and, where
  there is one, length ``t``, so one artifact serves any batch and length:
  ``apply`` ``(b, t, I) -> (b, t, F)`` (``(t, b, ...)`` if the model is time-
  major), ``apply_lengths`` (the same with ``seq_lengths`` ``(b,)`` int32),
  and the `jaxrnn.stream` ``step`` ``(b, I) -> (b, F)`` with a ``reset`` mask.
  The weights are not baked in: they are stored once beside the functions, in
  ``params.npz``, with the unbatched initial state. ``manifest.json`` records
  the jaxrnn and jax versions, the model's config and execution settings
  (``unroll``, ``remat``, ``impl``; `load` checks only the config) and a sha256 of every file.
  Load it with `jaxrnn.export.load`, or ``python -m jaxrnn.export``.

  Args:
    path: a directory to create (or fill, if empty or ``overwrite``).
    model: a `SequenceModel`.
    params: its parameters.
    platforms: the platforms to lower for, from ``('cpu', 'cuda', 'rocm',
      'tpu')``; lowering needs no such device here, running needs one there.
    streaming: export ``step`` too: None (default) when the model can stream
      (not bidirectional nor reverse), True to require it, False never.
    input_size: the input feature size, if params do not tell it.
    overwrite: replace an existing artifact in ``path``.

  Returns:
    The manifest, as written to ``manifest.json``.

  Raises:
    ValueError: a bad ``platforms``; ``streaming=True`` for a model that
      cannot stream; ``path`` holding an artifact already (without
      ``overwrite``), or a file; a model that `jax.export` cannot lower.
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
    >>> ys.shape, y.shape, sorted(state)
    ((2, 5, 8), (4, 8), ['0.h', '1.h'])
  """
  platforms, root = _check_save(model, platforms, streaming, path, overwrite)
  params_flat = _Flat.of(params)
  if not params_flat.leaves:
    raise ValueError("save: params has no arrays.")
  dtype = params_flat.leaves[0].dtype
  if input_size is None:
    input_size = _input_size(params)
  state_flat = _Flat.of(model.initial_carry(params, ()))
  time_major = bool(dict(model.config).get("time_major", False))
  step_fn, reason = _streaming_step(model, streaming)
  functions = _functions(model, step_fn, params_flat, state_flat, input_size, dtype, time_major)
  blobs, out_size = _export(functions, platforms)
  _write_arrays(root, blobs, params_flat, state_flat)
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
    "input": {
      "size": input_size,
      "dtype": str(dtype),
      "time_major": time_major,
      "layout": "(time, batch, features)" if time_major else "(batch, time, features)",
    },
    "output_size": out_size,
    "params": params_flat.specs(),
    "state": state_flat.specs(),
    "streaming": {"available": step_fn is not None, "reason": reason},
    "functions": {k: FUNCTION_FILES[k] for k in functions},
    "files": {name: sha256(root / name) for name in [*blobs, PARAMS_FILE]},
  }
  tmp = root / (MANIFEST + ".tmp")
  tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
  os.replace(tmp, root / MANIFEST)
  return manifest


def _check_save(model, platforms, streaming, path, overwrite) -> tuple[tuple[str, ...], Any]:
  """The eager checks of `save`'s arguments; the platforms and the artifact's root."""
  if not isinstance(model, SequenceModel):
    raise ValueError(f"save: expected a jaxrnn.SequenceModel, got {type(model).__name__}.")
  platforms = _check_platforms(platforms)
  if streaming not in (None, True, False):
    raise ValueError(f"streaming={streaming!r}: expected None, True or False.")
  require_flatbuffers()
  root = pathlib.Path(path)
  if root.exists() and not root.is_dir():
    raise ValueError(f"save: path={str(root)!r} is a file; expected a directory.")
  if (root / MANIFEST).exists() and not overwrite:
    raise ValueError(
      f"save: path={str(root)!r} holds an artifact already; pass overwrite=True to replace it."
    )
  return platforms, root


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
      {"name": n, "shape": list(a.shape), "dtype": str(a.dtype)}
      for n, a in zip(self.names, self.leaves, strict=True)
    ]


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


def _functions(model, step_fn, p: _Flat, s: _Flat, input_size, dtype, time_major) -> dict:
  """The functions to export, by key, each with the abstract arguments to lower it for."""

  def apply(params, xs, state):
    carry, ys = model.apply(p.unflatten(params), xs, s.unflatten(state), deterministic=True)
    return s.flat(carry), ys

  def apply_lengths(params, xs, state, seq_lengths):
    carry, ys = model.apply(
      p.unflatten(params), xs, s.unflatten(state), seq_lengths=seq_lengths, deterministic=True
    )
    return s.flat(carry), ys

  def step(params, state, x, reset):
    state, y = step_fn(p.unflatten(params), s.unflatten(state), x, reset)
    return s.flat(state), y

  b, t = jax.export.symbolic_shape("b, t")
  sds = jax.ShapeDtypeStruct
  p_spec, s_spec = p.spec(), s.spec((b,))
  xs_spec = sds((t, b, input_size) if time_major else (b, t, input_size), dtype)
  functions = {
    "apply": (apply, (p_spec, xs_spec, s_spec)),
    "apply_lengths": (apply_lengths, (p_spec, xs_spec, s_spec, sds((b,), jnp.int32))),
  }
  if step_fn is not None:
    functions["step"] = (step, (p_spec, s_spec, sds((b, input_size), dtype), sds((b,), jnp.bool_)))
  return functions


def _export(functions: dict, platforms: tuple[str, ...]) -> tuple[dict[str, bytes], int]:
  """Each function through `jax.export`, serialized by file name; the output feature size."""
  blobs = {}
  for key, (fn, specs) in functions.items():
    try:
      exported = jax.export.export(jax.jit(fn), platforms=platforms)(*specs)
    except ValueError:
      raise
    except Exception as e:  # lowering errors come in many types
      raise ValueError(
        f"save: jax.export could not lower {key} for platforms={platforms}: {type(e).__name__}: {e}"
      ) from e
    blobs[FUNCTION_FILES[key]] = bytes(exported.serialize())
  return blobs, int(exported.out_avals[-1].shape[-1])


def _write_arrays(root: pathlib.Path, blobs: dict[str, bytes], p: _Flat, s: _Flat) -> None:
  """The serialized functions and ``params.npz``; the old manifest goes first."""
  root.mkdir(parents=True, exist_ok=True)
  (root / MANIFEST).unlink(missing_ok=True)  # an artifact without a manifest never loads
  for name, blob in blobs.items():
    (root / name).write_bytes(blob)
  arrays = {f"param:{n}": a for n, a in zip(p.names, p.leaves, strict=True)}
  arrays.update({f"state:{n}": a for n, a in zip(s.names, s.leaves, strict=True)})
  with open(root / PARAMS_FILE, "wb") as f:
    np.savez(f, **arrays)
