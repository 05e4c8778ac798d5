"""Checkpoints of parameters and optimizer state through orbax-checkpoint.

A checkpoint is one step directory written by `orbax.checkpoint.CheckpointManager`:
the arrays (``state``, orbax's tensorstore/OCDBT format) and a JSON record
(``meta``) with the jaxrnn version, the model's name, configuration and execution
settings, and the path, shape, dtype and SHA-256 of every array. Orbax writes into
a temporary directory and renames it when complete, so a process killed while
saving leaves the previous checkpoint intact and the half-written one invisible.

Loading never unpickles: the record is parsed as JSON, the arrays are read by
tensorstore and checked against their SHA-256, and anything unexpected (a file
that is not a checkpoint, a truncated or altered file, a model or tree that does
not match) raises a `ValueError` that says what differs.

orbax-checkpoint is the ``experiments`` extra; it is imported when a function
here is first called, so ``import jaxrnn`` needs only the core dependencies.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn._config import jsonable, model_difference, model_spec
from jaxrnn.cells.base import PyTree
from jaxrnn.version import __version__

__all__ = ["all_steps", "latest_step", "model_spec", "read_metadata", "restore", "save"]

FORMAT = "jaxrnn-checkpoint"
FORMAT_VERSION = 1


def _ocp():
  try:
    import orbax.checkpoint as ocp
  except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError(
      "jaxrnn.checkpoint needs orbax-checkpoint: pip install 'jaxrnn[experiments]'."
    ) from e
  return ocp


def _path_str(path) -> str:
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(f".{k.name}")
    elif isinstance(k, jax.tree_util.DictKey):
      parts.append(f"[{k.key!r}]")
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(f"[{k.idx}]")
    else:
      parts.append(str(k))
  return "".join(parts) or "<root>"


def _is_key(leaf: Any) -> bool:
  return hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _shape_dtype(leaf: Any) -> tuple[tuple[int, ...], np.dtype]:
  """Shape and dtype of a target leaf as stored (typed keys as their key data)."""
  if _is_key(leaf):
    leaf = jax.eval_shape(jax.random.key_data, leaf)
  if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
    leaf = np.asarray(leaf)
  return tuple(leaf.shape), np.dtype(leaf.dtype)


def _leaf_records(state: PyTree) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
  records, arrays = [], {}
  for i, (path, leaf) in enumerate(jax.tree_util.tree_flatten_with_path(state)[0]):
    record: dict[str, Any] = {"path": _path_str(path)}
    if _is_key(leaf):
      record["prng_impl"] = str(jax.random.key_impl(leaf))
      leaf = jax.random.key_data(leaf)
    arr = np.asarray(leaf)
    if arr.dtype == object:
      raise ValueError(f"state leaf {record['path']} is a Python object; expected an array.")
    record.update(
      shape=list(arr.shape), dtype=str(arr.dtype), sha256=hashlib.sha256(arr.tobytes()).hexdigest()
    )
    records.append(record)
    arrays[f"leaf_{i:05d}"] = arr
  return records, arrays


def _manager(directory: str, *, read_only: bool, keep: int | None = None):
  ocp = _ocp()
  # Readers use create=False rather than orbax's read_only, which logs warnings on every call;
  # they only list and restore, and with max_to_keep=None nothing is ever deleted.
  options = ocp.CheckpointManagerOptions(
    max_to_keep=None if read_only else keep, create=not read_only, enable_async_checkpointing=False
  )
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def _check_directory(directory: Any) -> str:
  if not isinstance(directory, str | os.PathLike):
    raise ValueError(f"directory={directory!r}: expected a path (str or os.PathLike).")
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    what = "a file" if os.path.exists(directory) else "missing"
    raise ValueError(
      f"{directory!r} is {what}; expected a checkpoint directory written by jaxrnn.checkpoint.save."
    )
  return directory


def save(
  directory: str | os.PathLike,
  step: int,
  state: PyTree,
  *,
  model: Any = None,
  metadata: Mapping[str, Any] | None = None,
  keep: int | None = None,
) -> str:
  """Saves ``state`` (params, optimizer state, anything) as checkpoint ``step``.

  The write is atomic: orbax writes into ``<step>.orbax-checkpoint-tmp`` and
  renames it to ``<step>`` when everything is on disk, so a process killed
  meanwhile leaves only the earlier checkpoints visible.

  Args:
    directory: the run's checkpoint directory, one subdirectory per step.
    step: a non-negative int, the name of this checkpoint.
    state: a pytree of arrays (NamedTuples, dicts, lists, None; typed PRNG
      keys are stored as their key data and rebuilt on restore).
    model: the `Cell` or `SequenceModel` (or a `model_spec` dict) whose
      ``name``, ``config`` and ``settings`` are recorded (`restore` checks
      the first two).
    metadata: extra JSON-serialisable information (seed, data, flags).
    keep: keep only the newest ``keep`` checkpoints; None keeps all.

  Returns:
    The path of the new checkpoint.

  Raises:
    ValueError: a bad ``step`` or ``keep``, an existing ``step``, or a state
      leaf or config that cannot be stored.

  Example:
    >>> import tempfile, jax, jaxrnn
    >>> from jaxrnn import checkpoint
    >>> cell = jaxrnn.lstm(4)
    >>> params = cell.init(jax.random.key(0), input_size=3)
    >>> d = tempfile.mkdtemp()
    >>> _ = checkpoint.save(d, 10, params, model=cell)
    >>> restored, info = checkpoint.restore(d, params, model=cell)
    >>> info["step"], restored.w_hh.shape
    (10, (4, 16))
  """
  if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
    raise ValueError(f"step={step!r}: expected a non-negative int.")
  if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
    raise ValueError(f"keep={keep!r}: expected a positive int or None.")
  step = int(step)
  records, arrays = _leaf_records(state)
  meta = {
    "format": FORMAT,
    "format_version": FORMAT_VERSION,
    "jaxrnn_version": __version__,
    "step": step,
    "model": model_spec(model),
    "leaves": records,
    "metadata": jsonable(dict(metadata or {}), "metadata"),
  }
  directory = os.fspath(directory)
  ocp = _ocp()
  manager = _manager(directory, read_only=False, keep=keep)
  try:
    if step in manager.all_steps():
      raise ValueError(f"checkpoint step {step} already exists in {directory!r}.")
    manager.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)),
      force=True,
    )
    manager.wait_until_finished()
  finally:
    manager.close()
  return os.path.join(directory, str(step))


def all_steps(directory: str | os.PathLike) -> list[int]:
  """The steps of the complete checkpoints in ``directory`` (ascending; [] if none or missing)."""
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    return []
  manager = _manager(directory, read_only=True)
  try:
    return sorted(int(s) for s in manager.all_steps())
  finally:
    manager.close()


def latest_step(directory: str | os.PathLike) -> int | None:
  """The newest complete checkpoint step in ``directory``, or None."""
  steps = all_steps(directory)
  return steps[-1] if steps else None


def _read_meta(manager, directory: str, step: int) -> dict[str, Any]:
  ocp = _ocp()
  try:
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  except Exception as e:  # orbax/json raise many types; none of them may escape as-is
    raise ValueError(
      f"checkpoint {directory!r} step {step}: its record is not valid jaxrnn JSON "
      f"({type(e).__name__}: {e})."
    ) from None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise ValueError(
      f"checkpoint {directory!r} step {step}: format is "
      f"{meta.get('format') if isinstance(meta, dict) else type(meta).__name__!r}; "
      f"expected {FORMAT!r}."
    )
  if meta.get("format_version") != FORMAT_VERSION:
    raise ValueError(
      f"checkpoint {directory!r} step {step}: format_version={meta.get('format_version')!r}; "
      f"this jaxrnn reads {FORMAT_VERSION}."
    )
  return meta


def read_metadata(directory: str | os.PathLike, step: int | None = None) -> dict[str, Any]:
  """The JSON record of a checkpoint (version, step, model, leaves, metadata), no arrays.

  Raises:
    ValueError: if ``directory`` holds no such jaxrnn checkpoint.
  """
  directory = _check_directory(directory)
  manager = _manager(directory, read_only=True)
  try:
    step = _pick_step(manager, directory, step)
    return _read_meta(manager, directory, step)
  finally:
    manager.close()


def _pick_step(manager, directory: str, step: int | None) -> int:
  steps = sorted(int(s) for s in manager.all_steps())
  if not steps:
    raise ValueError(f"{directory!r} holds no complete checkpoint.")
  if step is None:
    return steps[-1]
  if step not in steps:
    raise ValueError(f"step={step!r} is not in {directory!r}; it holds steps {steps}.")
  return step


def _check_readable(step_dir: str, where: str) -> None:
  """Reads every stored value of the arrays' OCDBT store, one at a time, synchronously.

  A truncated or replaced data file fails here, in one plain call, instead of
  inside orbax's concurrent reads, whose other in-flight reads would then call
  back into an event loop that orbax has already closed (an unraisable
  ``RuntimeError: Event loop is closed`` after the ``ValueError``). Stores in
  another layout are left to orbax and the SHA-256 checks.
  """
  state = os.path.join(step_dir, "state")
  if not os.path.exists(os.path.join(state, "manifest.ocdbt")):
    return
  import tensorstore as ts

  try:
    spec = {"driver": "ocdbt", "base": "file://" + os.path.abspath(state) + "/"}
    store = ts.KvStore.open(spec).result()
    for key in store.list().result():
      store.read(key).result()
  except Exception as e:  # tensorstore reports damage as ValueError, OSError, ...
    raise ValueError(
      f"{where}: its arrays cannot be read ({type(e).__name__}: {str(e)[:300]})."
    ) from None


def restore(
  directory: str | os.PathLike,
  target: PyTree,
  *,
  step: int | None = None,
  model: Any = None,
) -> tuple[PyTree, dict[str, Any]]:
  """Loads checkpoint ``step`` (the newest if None) into the structure of ``target``.

  Checks, each a `ValueError` naming what differs: the record is jaxrnn JSON;
  ``model`` (if given) has the recorded name and configuration, field by field
  (its execution settings, ``unroll``, ``remat``, ``impl``, are recorded, never checked);
  the tree has the same leaf paths, shapes and dtypes as ``target``; every
  stored value can be read (truncated files are caught before any array is
  built); every array has its recorded SHA-256 (altered files are caught).

  Args:
    directory: the directory given to `save`.
    target: a pytree like the saved one (e.g. freshly initialised params or
      train state) whose structure, shapes and dtypes the checkpoint must
      match. Leaves may be arrays or `jax.ShapeDtypeStruct`; a leaf with a
      ``sharding`` is placed with it, others on the default device.
    step: which checkpoint; None for the newest.
    model: the `Cell`/`SequenceModel` (or `model_spec` dict) to check the
      recorded configuration against; None skips that check.

  Returns:
    ``(state, info)``: the restored pytree (jax arrays) and the JSON record
    (``step``, ``jaxrnn_version``, ``model``, ``metadata``, ``leaves``).

  Raises:
    ValueError: for any of the mismatches above, a missing step, or a
      directory that is not a jaxrnn checkpoint.
  """
  directory = _check_directory(directory)
  expected_model = model_spec(model)
  manager = _manager(directory, read_only=True)
  try:
    step = _pick_step(manager, directory, step)
    meta = _read_meta(manager, directory, step)
    where = f"checkpoint {directory!r} step {step}"
    _check_model(meta, expected_model, where)
    records = meta.get("leaves")
    flat, treedef = jax.tree_util.tree_flatten_with_path(target)
    abstract = _abstract_arrays(records, flat, where)
    _check_readable(os.path.join(directory, str(step)), where)
    arrays = _restore_arrays(manager, step, abstract, where)
  finally:
    manager.close()
  leaves = _rebuild_leaves(flat, records, arrays, where)
  return jax.tree_util.tree_unflatten(treedef, leaves), meta


def _check_model(meta: dict[str, Any], expected_model: dict[str, Any] | None, where: str) -> None:
  """The recorded model's name and config equal ``expected_model``'s (settings are not checked)."""
  if expected_model is None:
    return
  if meta.get("model") is None:
    raise ValueError(f"{where} records no model; cannot check it against {expected_model}.")
  diff = model_difference(meta["model"], expected_model)
  if diff:
    raise ValueError(f"{where} was saved for a different model: {diff}.")


def _abstract_arrays(records: Any, flat: list, where: str) -> dict[str, np.ndarray]:
  """Checks the recorded leaves against the target's; zeros of each stored shape and dtype."""
  if not isinstance(records, list) or len(records) != len(flat):
    got = len(records) if isinstance(records, list) else records
    raise ValueError(f"{where} has {got} arrays; target has {len(flat)}.")
  abstract = {}
  for i, ((path, leaf), rec) in enumerate(zip(flat, records, strict=True)):
    name = _path_str(path)
    shape, dtype = _shape_dtype(leaf)
    if rec.get("path") != name:
      raise ValueError(f"{where}: array {i} is {rec.get('path')!r}; target has {name!r}.")
    if tuple(rec.get("shape", ())) != shape or rec.get("dtype") != str(dtype):
      raise ValueError(
        f"{where}: {name} has shape {tuple(rec.get('shape', ()))} and dtype {rec.get('dtype')}; "
        f"target has shape {shape} and dtype {dtype}."
      )
    abstract[f"leaf_{i:05d}"] = np.zeros(shape, dtype)
  return abstract


def _restore_arrays(manager, step: int, abstract: dict[str, np.ndarray], where: str) -> dict:
  ocp = _ocp()
  try:
    return manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))[
      "state"
    ]
  except Exception as e:  # tensorstore/orbax errors on damaged files
    raise ValueError(
      f"{where}: its arrays cannot be read ({type(e).__name__}: {str(e)[:300]})."
    ) from None


def _rebuild_leaves(flat: list, records: list, arrays: dict, where: str) -> list:
  """The restored leaves: SHA-256 checked, typed keys rewrapped, placed like the target's."""
  leaves = []
  for i, ((_, leaf), rec) in enumerate(zip(flat, records, strict=True)):
    arr = np.asarray(arrays[f"leaf_{i:05d}"])
    if hashlib.sha256(arr.tobytes()).hexdigest() != rec.get("sha256"):
      raise ValueError(f"{where}: {rec['path']} does not match its recorded SHA-256 (damaged).")
    if "prng_impl" in rec:
      out = jax.random.wrap_key_data(arr, impl=rec["prng_impl"])
    else:
      out = jnp.asarray(arr)
    sharding = getattr(leaf, "sharding", None)
    leaves.append(jax.device_put(out, sharding) if sharding is not None else out)
  return leaves
