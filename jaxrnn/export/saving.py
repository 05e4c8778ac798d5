"""Writes a model's inference functions with `jax.export`, weights alongside."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

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
from jaxrnn.layers import SequenceModel
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
  the jaxrnn and jax versions, the model's config and a sha256 of every file.
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

  p_names, p_leaves, p_tree = _names(params)
  if not p_leaves:
    raise ValueError("save: params has no arrays.")
  p_leaves = [np.asarray(leaf) for leaf in p_leaves]
  dtype = p_leaves[0].dtype
  if input_size is None:
    input_size = _input_size(params)
  init = model.initial_carry(params, ())
  s_names, s_leaves, s_tree = _names(init)
  s_leaves = [np.asarray(leaf) for leaf in s_leaves]
  time_major = bool(dict(model.config).get("time_major", False))

  reason = None
  step_fn = None
  if streaming is not False:
    try:
      step_fn = stream(model).step
    except ValueError as e:
      if streaming:
        raise
      reason = str(e)
  else:
    reason = "it was saved with streaming=False."

  def unflatten(names, tree, d):
    return jax.tree.unflatten(tree, [d[n] for n in names])

  def flat_state(state):
    leaves = jax.tree.leaves(state)
    return dict(zip(s_names, leaves, strict=True))

  def apply(p, xs, s):
    carry, ys = model.apply(
      unflatten(p_names, p_tree, p), xs, unflatten(s_names, s_tree, s), deterministic=True
    )
    return flat_state(carry), ys

  def apply_lengths(p, xs, s, seq_lengths):
    carry, ys = model.apply(
      unflatten(p_names, p_tree, p),
      xs,
      unflatten(s_names, s_tree, s),
      seq_lengths=seq_lengths,
      deterministic=True,
    )
    return flat_state(carry), ys

  def step(p, s, x, reset):
    state, y = step_fn(unflatten(p_names, p_tree, p), unflatten(s_names, s_tree, s), x, reset)
    return flat_state(state), y

  b, t = jax.export.symbolic_shape("b, t")
  sds = jax.ShapeDtypeStruct
  p_spec = {n: sds(a.shape, a.dtype) for n, a in zip(p_names, p_leaves, strict=True)}
  s_spec = {n: sds((b,) + a.shape, a.dtype) for n, a in zip(s_names, s_leaves, strict=True)}
  xs_spec = sds((t, b, input_size) if time_major else (b, t, input_size), dtype)
  functions = {
    "apply": (apply, (p_spec, xs_spec, s_spec)),
    "apply_lengths": (apply_lengths, (p_spec, xs_spec, s_spec, sds((b,), jnp.int32))),
  }
  if step_fn is not None:
    functions["step"] = (step, (p_spec, s_spec, sds((b, input_size), dtype), sds((b,), jnp.bool_)))

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
  out_size = int(exported.out_avals[-1].shape[-1])

  root.mkdir(parents=True, exist_ok=True)
  (root / MANIFEST).unlink(missing_ok=True)  # an artifact without a manifest never loads
  for name, blob in blobs.items():
    (root / name).write_bytes(blob)
  arrays = {f"param:{n}": a for n, a in zip(p_names, p_leaves, strict=True)}
  arrays.update({f"state:{n}": a for n, a in zip(s_names, s_leaves, strict=True)})
  with open(root / PARAMS_FILE, "wb") as f:
    np.savez(f, **arrays)

  manifest = {
    "format": FORMAT,
    "format_version": FORMAT_VERSION,
    "jaxrnn_version": __version__,
    "jax_version": jax.__version__,
    "model": {"name": model.name, "config": to_json(dict(model.config))},
    "platforms": list(platforms),
    "input": {
      "size": input_size,
      "dtype": str(dtype),
      "time_major": time_major,
      "layout": "(time, batch, features)" if time_major else "(batch, time, features)",
    },
    "output_size": out_size,
    "params": [
      {"name": n, "shape": list(a.shape), "dtype": str(a.dtype)}
      for n, a in zip(p_names, p_leaves, strict=True)
    ],
    "state": [
      {"name": n, "shape": list(a.shape), "dtype": str(a.dtype)}
      for n, a in zip(s_names, s_leaves, strict=True)
    ],
    "streaming": {"available": step_fn is not None, "reason": reason},
    "functions": {k: FUNCTION_FILES[k] for k in functions},
    "files": {name: sha256(root / name) for name in [*blobs, PARAMS_FILE]},
  }
  tmp = root / (MANIFEST + ".tmp")
  tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
  os.replace(tmp, root / MANIFEST)
  return manifest
