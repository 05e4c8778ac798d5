"""Sharded checkpoints of parameters and optimizer state through orbax-checkpoint.

A checkpoint is one step directory written by `orbax.checkpoint.CheckpointManager`:
the arrays (``state``, orbax's tensorstore/OCDBT format, written by every process
for its own shards, with no gather onto one host) and a JSON record (``meta``)
with the jaxrnn version, the model's name, configuration and execution settings,
and the path, shape and dtype of every array and the SHA-256 of every written
shard (the region each process wrote, recorded as ``[[start, stop], ...]``).
Orbax writes into a temporary directory and renames it when every process is
done, so a process killed while saving leaves the previous checkpoint intact
and the half-written one invisible.

Restoring is a copy onto the target's shardings, whatever mesh wrote the
checkpoint (more or fewer devices, another mesh shape, one device): each
process reads, through tensorstore with orbax's own read spec, only the
written shards that overlap its own devices' slices, checks each against its
SHA-256, and assembles its device buffers from them, so the arrays are
bit-exact and no process reads (or holds) what it does not need. Loading never
unpickles: the record is JSON, the arrays are tensorstore's. Anything wrong (a
file that is not a checkpoint, a truncated or altered file, a model or tree
that does not match) is a `ValueError` that says what differs, and in a
multi-process run the processes agree first (an all-gather of what each found),
so every process raises the same error and none is left waiting.

Paths go through orbax's path handling (``etils.epath``): where orbax and
tensorstore support a remote file system (``gs://...``), so does this module.
In a multi-process run every process calls `save` and `restore`, and they all
see the same storage.

orbax-checkpoint is the ``experiments`` extra; it is imported when a function
here is first called, so ``import jaxrnn`` needs only the core dependencies.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn import params_check
from jaxrnn._config import jsonable, model_difference, model_spec
from jaxrnn.cells.base import PyTree
from jaxrnn.version import __version__

__all__ = ["all_steps", "latest_step", "model_spec", "read_metadata", "restore", "save"]

FORMAT = "jaxrnn-checkpoint"
FORMAT_VERSION = 2  # 1: one SHA-256 per array (still read); 2: one per written shard
Region = tuple[tuple[int, int], ...]  # [start, stop) per dimension


def _ocp():
  try:
    import orbax.checkpoint as ocp
  except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError(
      "jaxrnn.checkpoint needs orbax-checkpoint: pip install 'jaxrnn[experiments]'."
    ) from e
  return ocp


def _epath(directory: Any):
  """``directory`` as orbax's path type (`etils.epath.Path`); local paths made absolute."""
  from etils import epath

  text = os.fspath(directory)
  return epath.Path(text if "://" in text else os.path.abspath(text))


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


def _name(i: int) -> str:
  return f"leaf_{i:05d}"


def _sha256(data: Any) -> str:
  return hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()


def _region(index: tuple[slice, ...], shape: tuple[int, ...]) -> Region:
  return tuple(tuple(s.indices(n)[:2]) for s, n in zip(index, shape, strict=True))


def _stored_leaves(state: PyTree) -> tuple[list[dict[str, Any]], list[Any]]:
  """The record of every leaf and the array orbax stores for it (jax arrays as they are)."""
  records, arrays = [], []
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    record: dict[str, Any] = {"path": _path_str(path)}
    if _is_key(leaf):
      record["prng_impl"] = str(jax.random.key_impl(leaf))
      leaf = jax.random.key_data(leaf)
    if not isinstance(leaf, jax.Array):
      leaf = np.asarray(leaf)
      if leaf.dtype == object:
        raise ValueError(f"state leaf {record['path']} is a Python object; expected an array.")
    record.update(shape=list(leaf.shape), dtype=str(np.dtype(leaf.dtype)))
    records.append(record)
    arrays.append(leaf)
  return records, arrays


def _written_shards(arrays: list[Any]) -> list[list[Any]]:
  """This process's part of the written shards: ``[leaf, region, SHA-256]`` of each.

  A jax.Array's written shards are its replica-0 shards, which tile it exactly
  once across all processes; a host (NumPy) value is one shard, process 0's.
  """
  out = []
  for i, arr in enumerate(arrays):
    if isinstance(arr, jax.Array):
      shards = [(s.index, s.data) for s in arr.addressable_shards if s.replica_id == 0]
    else:
      shards = [((slice(None),) * arr.ndim, arr)] if jax.process_index() == 0 else []
    for index, data in shards:
      out.append([i, [list(r) for r in _region(index, arr.shape)], _sha256(np.asarray(data))])
  return out


def _allgather_text(text: str) -> list[str]:
  """Every process's ``text``, in process order (a host all-gather; one process: ``[text]``)."""
  if jax.process_count() == 1:
    return [text]
  from jax.experimental import multihost_utils

  data = np.frombuffer(text.encode("utf-8"), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.int32(data.size)))
  # padded to a power of two, so that the all-gather compiles for a few sizes only
  buf = np.zeros(1 << max(6, (int(sizes.max()) - 1).bit_length()), np.uint8)
  buf[: data.size] = data
  rows = np.asarray(multihost_utils.process_allgather(buf))
  return [bytes(row[:n]).decode("utf-8") for row, n in zip(rows, sizes, strict=True)]


def _agree(error: str | None) -> None:
  """Raises, on every process, the first process's error as a `ValueError`; else returns.

  Every process calls it once per `restore`, so a damaged shard that only one
  process reads stops them all with the same message instead of leaving the
  others waiting in their next collective.
  """
  found = _allgather_text(error or "")
  for k, message in enumerate(found):
    if message:
      raise ValueError(message + (f" (found by process {k} of {len(found)})" * (len(found) > 1)))


def _record_shards(records: list[dict[str, Any]], parts: list[str]) -> None:
  """Adds every process's written shards to ``records``, once each (same region: same digest)."""
  seen: dict[tuple[int, Region], str] = {}
  for i, region, digest in sorted(x for part in parts for x in json.loads(part)):
    key = (i, tuple(tuple(r) for r in region))
    if key in seen:  # a process-local array, which every process holds whole
      if seen[key] != digest:
        raise ValueError(
          f"state leaf {records[i]['path']} {_show_region(key[1])} differs between processes; "
          "expected the same values on every process (build the state from the same seed, or "
          "place it with jaxrnn.sharding.shard_state)."
        )
      continue
    seen[key] = digest
    records[i].setdefault("shards", []).append({"index": region, "sha256": digest})


def _manager(path, keep: int | None):
  ocp = _ocp()
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep, create=True, enable_async_checkpointing=False
  )
  return ocp.CheckpointManager(path, options=options)


def _check_directory(directory: Any):
  if not isinstance(directory, str | os.PathLike):
    raise ValueError(f"directory={directory!r}: expected a path (str or os.PathLike).")
  path = _epath(directory)
  if not path.is_dir():
    what = "a file" if path.exists() else "missing"
    raise ValueError(
      f"{os.fspath(directory)!r} is {what}; expected a checkpoint directory written by "
      "jaxrnn.checkpoint.save."
    )
  return path


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

  Call it on every process of a multi-process run, with the same arguments:
  each process writes its own shards of every `jax.Array` (nothing is gathered
  onto one host), their SHA-256 digests are exchanged (a few bytes each) and
  process 0 writes the JSON record. The write is atomic: orbax writes into
  ``<step>.orbax-checkpoint-tmp`` and renames it to ``<step>`` when every
  process is done, so a process killed meanwhile leaves only the earlier
  checkpoints visible.

  Args:
    directory: the run's checkpoint directory, one subdirectory per step; a
      local path or any path orbax supports (``gs://...``), the same storage
      for every process.
    step: a non-negative int, the name of this checkpoint.
    state: a pytree of arrays of any sharding (NamedTuples, dicts, lists,
      None; typed PRNG keys are stored as their key data and rebuilt on
      restore; NumPy values are written by process 0).
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
    >>> info["step"], restored.w_hh.shape, info["leaves"][1]["shards"][0]["index"]
    (10, (4, 16), [[0, 4], [0, 16]])
  """
  if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
    raise ValueError(f"step={step!r}: expected a non-negative int.")
  if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
    raise ValueError(f"keep={keep!r}: expected a positive int or None.")
  step = int(step)
  params_check.check_state(model, state, "checkpoint.save")
  records, arrays = _stored_leaves(state)
  meta = {
    "format": FORMAT,
    "format_version": FORMAT_VERSION,
    "jaxrnn_version": __version__,
    "step": step,
    "model": model_spec(model),
    "leaves": records,
    "metadata": jsonable(dict(metadata or {}), "metadata"),
  }
  _record_shards(records, _allgather_text(json.dumps(_written_shards(arrays))))
  path = _epath(directory)
  ocp = _ocp()
  manager = _manager(path, keep)
  try:
    if step in manager.all_steps():
      raise ValueError(f"checkpoint step {step} already exists in {os.fspath(directory)!r}.")
    items = {_name(i): a for i, a in enumerate(arrays)}
    manager.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(items), meta=ocp.args.JsonSave(meta)),
      force=True,
    )
    manager.wait_until_finished()
  finally:
    manager.close()
  return str(path / str(step))


def all_steps(directory: str | os.PathLike) -> list[int]:
  """The steps of the complete checkpoints in ``directory`` (ascending; [] if none or missing).

  Example:
    >>> import tempfile
    >>> from jaxrnn import checkpoint
    >>> checkpoint.all_steps(tempfile.mkdtemp())
    []
  """
  path = _epath(directory)
  if not path.is_dir():
    return []
  return sorted(int(s) for s in _ocp().utils.checkpoint_steps(path))


def latest_step(directory: str | os.PathLike) -> int | None:
  """The newest complete checkpoint step in ``directory``, or None.

  Example:
    >>> import tempfile
    >>> from jaxrnn import checkpoint
    >>> checkpoint.latest_step(tempfile.mkdtemp()) is None
    True
  """
  steps = all_steps(directory)
  return steps[-1] if steps else None


def _pick_step(path, directory: str, step: int | None) -> int:
  steps = all_steps(path)
  if not steps:
    raise ValueError(f"{directory!r} holds no complete checkpoint.")
  if step is None:
    return steps[-1]
  if step not in steps:
    raise ValueError(f"step={step!r} is not in {directory!r}; it holds steps {steps}.")
  return step


def _read_meta(step_dir, where: str) -> dict[str, Any]:
  try:
    meta = _ocp().JsonCheckpointHandler().restore(step_dir / "meta")
  except Exception as e:  # orbax/json raise many types; none of them may escape as-is
    raise ValueError(
      f"{where}: its record is not valid jaxrnn JSON ({type(e).__name__}: {e})."
    ) from None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise ValueError(
      f"{where}: format is "
      f"{meta.get('format') if isinstance(meta, dict) else type(meta).__name__!r}; "
      f"expected {FORMAT!r}."
    )
  if meta.get("format_version") not in (1, FORMAT_VERSION):
    raise ValueError(
      f"{where}: format_version={meta.get('format_version')!r}; "
      f"this jaxrnn reads 1 and {FORMAT_VERSION}."
    )
  return meta


def read_metadata(directory: str | os.PathLike, step: int | None = None) -> dict[str, Any]:
  """The JSON record of a checkpoint (version, step, model, leaves, metadata), no arrays.

  Raises:
    ValueError: if ``directory`` holds no such jaxrnn checkpoint.

  Example:
    >>> import tempfile, jax.numpy as jnp
    >>> from jaxrnn import checkpoint
    >>> d = tempfile.mkdtemp()
    >>> _ = checkpoint.save(d, 3, {"w": jnp.ones((2, 5))}, metadata={"seed": 0})
    >>> meta = checkpoint.read_metadata(d)
    >>> meta["step"], meta["metadata"], meta["leaves"][0]["shape"]
    (3, {'seed': 0}, [2, 5])
  """
  path = _check_directory(directory)
  step = _pick_step(path, os.fspath(directory), step)
  return _read_meta(path / str(step), f"checkpoint {os.fspath(directory)!r} step {step}")


def restore(
  directory: str | os.PathLike,
  target: PyTree,
  *,
  step: int | None = None,
  model: Any = None,
) -> tuple[PyTree, dict[str, Any]]:
  """Loads checkpoint ``step`` (the newest if None) onto the structure and shardings of ``target``.

  Whatever mesh wrote the checkpoint, each array is placed with its target
  leaf's sharding (another mesh shape, more or fewer devices or processes, one
  device), bit-exact: each process reads only the written shards that overlap
  its devices' slices. Checks, each a `ValueError` naming what differs: the
  record is jaxrnn JSON; ``model`` (if given) has the recorded name and
  configuration, field by field (its execution settings, ``unroll``,
  ``remat``, ``impl``, are recorded, never checked); the tree has the same leaf
  paths, shapes and dtypes as ``target``; every shard read can be read and has
  its recorded SHA-256. In a multi-process run call it on every process: they
  exchange what they found before returning, and all raise the same error if
  any process found one.

  Args:
    directory: the directory given to `save`.
    target: a pytree like the saved one (e.g. freshly initialised params or
      train state) whose structure, shapes and dtypes the checkpoint must
      match. Leaves may be arrays or `jax.ShapeDtypeStruct`; a leaf with a
      ``sharding`` is placed with it (e.g. from
      `jaxrnn.sharding.state_shardings`), others on the default device.
    step: which checkpoint; None for the newest.
    model: the `Cell`/`SequenceModel` (or `model_spec` dict) to check the
      recorded configuration against; None skips that check.

  Returns:
    ``(state, info)``: the restored pytree (jax arrays) and the JSON record
    (``step``, ``jaxrnn_version``, ``model``, ``metadata``, ``leaves``).

  Raises:
    ValueError: for any of the mismatches above, a missing step, or a
      directory that is not a jaxrnn checkpoint.

  Example:
    >>> import tempfile, jax, jax.numpy as jnp
    >>> from jax.sharding import NamedSharding, PartitionSpec as P
    >>> from jaxrnn import checkpoint
    >>> d = tempfile.mkdtemp()
    >>> _ = checkpoint.save(d, 0, {"w": jnp.arange(8.0).reshape(2, 4)})
    >>> mesh = jax.make_mesh((1,), ("model",))
    >>> target = {"w": jax.ShapeDtypeStruct((2, 4), jnp.float32,
    ...                                     sharding=NamedSharding(mesh, P(None, "model")))}
    >>> state, _ = checkpoint.restore(d, target)
    >>> state["w"].sharding.spec, float(state["w"][1, 3])
    (P(None, 'model'), 7.0)
  """
  expected_model = model_spec(model)
  flat, treedef = jax.tree_util.tree_flatten_with_path(target)
  meta, plans, error = None, [], None
  try:
    meta, plans = _read_local(directory, step, expected_model, flat)
  except ValueError as e:
    error = str(e)
  except Exception as e:  # noqa: BLE001 - nothing may leave the other processes waiting
    error = f"checkpoint {directory!r} cannot be read ({type(e).__name__}: {str(e)[:300]})."
  _agree(error)
  params_check.check_state(model, target, "checkpoint.restore")  # after the record's check
  leaves = [_assemble(plan) for plan in plans]
  return jax.tree_util.tree_unflatten(treedef, leaves), meta


class _Plan(NamedTuple):
  """One leaf's restore: where its local slices go and what is read for them."""

  name: str  # the orbax item, leaf_00000
  record: dict[str, Any]
  shape: tuple[int, ...]
  dtype: np.dtype
  sharding: Any  # the target's; None: the default device, uncommitted
  device_regions: dict[Any, Region]
  written: list[tuple[Region, str]]
  read: list[tuple[Region, np.ndarray]]
  blocks: dict[Region, np.ndarray]


def _read_local(directory, step, expected_model, flat) -> tuple[dict[str, Any], list[_Plan]]:
  """This process's part of `restore`, up to the host buffers; no collectives."""
  path = _check_directory(directory)
  directory = os.fspath(directory)
  step = _pick_step(path, directory, step)
  where = f"checkpoint {directory!r} step {step}"
  meta = _read_meta(path / str(step), where)
  _check_model(meta, expected_model, where)
  records = meta.get("leaves")
  _check_leaves(records, flat, where)
  pairs = enumerate(zip(flat, records, strict=True))
  plans = [_plan(i, leaf, rec, where) for i, ((_, leaf), rec) in pairs]
  _read_shards(plans, _array_reader(path / str(step) / "state", where), where)
  for plan in plans:
    _fill_blocks(plan, where)
  return meta, plans


def _check_model(meta: dict[str, Any], expected_model: dict[str, Any] | None, where: str) -> None:
  """The recorded model's name and config equal ``expected_model``'s (settings are not checked)."""
  if expected_model is None:
    return
  if meta.get("model") is None:
    raise ValueError(f"{where} records no model; cannot check it against {expected_model}.")
  diff = model_difference(meta["model"], expected_model)
  if diff:
    raise ValueError(f"{where} was saved for a different model: {diff}.")


def _check_leaves(records: Any, flat: list, where: str) -> None:
  """The recorded leaves have the target's paths, shapes and dtypes."""
  if not isinstance(records, list) or len(records) != len(flat):
    got = len(records) if isinstance(records, list) else records
    raise ValueError(f"{where} has {got} arrays; target has {len(flat)}.")
  for i, ((path, leaf), rec) in enumerate(zip(flat, records, strict=True)):
    name = _path_str(path)
    shape, dtype = _shape_dtype(leaf)
    if not isinstance(rec, dict) or rec.get("path") != name:
      got = rec.get("path") if isinstance(rec, dict) else rec
      raise ValueError(f"{where}: array {i} is {got!r}; target has {name!r}.")
    if tuple(rec.get("shape", ())) != shape or rec.get("dtype") != str(dtype):
      raise ValueError(
        f"{where}: {name} has shape {tuple(rec.get('shape', ()))} and dtype {rec.get('dtype')}; "
        f"target has shape {shape} and dtype {dtype}."
      )


def _recorded_shards(rec: dict[str, Any], shape: tuple[int, ...], where: str) -> list:
  """The ``(region, SHA-256)`` of every written shard of a leaf (format 1: one, the whole)."""
  if "shards" not in rec and "sha256" in rec:
    return [(tuple((0, n) for n in shape), rec["sha256"])]
  out = []
  for item in rec.get("shards", []) if isinstance(rec.get("shards"), list) else [None]:
    try:
      region = tuple((int(a), int(b)) for a, b in item["index"])
      ok = len(region) == len(shape) and all(
        0 <= a <= b <= n for (a, b), n in zip(region, shape, strict=True)
      )
      ok = ok and isinstance(item["sha256"], str)
    except (TypeError, KeyError, ValueError):
      ok = False
    if not ok:
      raise ValueError(f"{where}: {rec['path']} has a damaged shard record {item!r}.")
    out.append((region, item["sha256"]))
  return out


def _plan(i: int, leaf: Any, rec: dict[str, Any], where: str) -> _Plan:
  shape, dtype = _shape_dtype(leaf)
  sharding = getattr(leaf, "sharding", None)
  if sharding is None:
    regions = {None: tuple((0, n) for n in shape)}
  else:
    index_map = sharding.addressable_devices_indices_map(shape)
    regions = {d: _region(index, shape) for d, index in index_map.items()}
  written = _recorded_shards(rec, shape, where)
  return _Plan(_name(i), rec, shape, dtype, sharding, regions, written, [], {})


def _size(region: Region) -> int:
  return int(np.prod([b - a for a, b in region], dtype=np.int64))


def _slices(region: Region, origin: Region | None = None) -> tuple[slice, ...]:
  """``region`` as slices, relative to the start of ``origin`` (None: of the array)."""
  starts = [a for a, _ in origin] if origin is not None else [0] * len(region)
  return tuple(slice(a - s, b - s) for (a, b), s in zip(region, starts, strict=True))


def _intersect(a: Region, b: Region) -> Region | None:
  inter = tuple((max(a0, b0), min(a1, b1)) for (a0, a1), (b0, b1) in zip(a, b, strict=True))
  return inter if all(lo < hi for lo, hi in inter) else None


def _show_region(region: Region) -> str:
  return "[" + ", ".join(f"{a}:{b}" for a, b in region) + "]"


def _array_reader(state_dir, where: str):
  """``name -> opening store`` of the stored arrays, with orbax's read spec and context."""
  ocp = _ocp()
  import tensorstore as ts

  try:
    info = json.loads((state_dir / "_METADATA").read_text())
    use_ocdbt, use_zarr3 = bool(info["use_ocdbt"]), bool(info["use_zarr3"])
  except Exception as e:  # missing, truncated or replaced: the arrays cannot be located
    raise ValueError(
      f"{where}: its arrays cannot be read (state/_METADATA: {type(e).__name__}: {e})."
    ) from None
  context = ocp.serialization.tensorstore_utils.get_ts_context(use_ocdbt=use_ocdbt)

  def open_array(name: str):
    param = ocp.type_handlers.ParamInfo(
      name=name, parent_dir=state_dir, use_zarr3=use_zarr3, ts_context=context
    )
    spec = ocp.type_handlers.get_json_tspec_read(param, use_ocdbt=use_ocdbt)
    return ts.open(spec, read=True, context=context)

  return open_array


def _read_shards(plans: list[_Plan], open_array, where: str) -> None:
  """Reads (concurrently) every written shard that overlaps a local slice; checks its SHA-256."""
  pending = []
  for plan in plans:
    local = set(plan.device_regions.values())
    needed = [
      (region, digest)
      for region, digest in plan.written
      if any(_intersect(region, r) is not None for r in local)
    ]
    try:
      store = open_array(plan.name).result() if needed else None
      pending += [(plan, r, d, store[_slices(r)].read()) for r, d in needed]
    except Exception as e:  # tensorstore reports damage as ValueError, OSError, ...
      raise ValueError(_unreadable(where, plan, e)) from None
  for plan, region, digest, future in pending:
    try:
      data = np.asarray(future.result())
    except Exception as e:  # noqa: BLE001 - as above
      raise ValueError(_unreadable(where, plan, e)) from None
    if data.dtype != plan.dtype or _sha256(data) != digest:
      raise ValueError(
        f"{where}: {plan.record['path']} shard {_show_region(region)} does not match its "
        "recorded SHA-256 (damaged)."
      )
    plan.read.append((region, data))


def _unreadable(where: str, plan: _Plan, e: Exception) -> str:
  return f"{where}: {plan.record['path']} cannot be read ({type(e).__name__}: {str(e)[:300]})."


def _fill_blocks(plan: _Plan, where: str) -> None:
  """Each local slice, copied out of the shards read (which must cover it)."""
  for region in set(plan.device_regions.values()):
    block = np.empty([b - a for a, b in region], plan.dtype)
    filled = 0
    for written, data in plan.read:
      inter = _intersect(written, region)
      if inter is not None:
        block[_slices(inter, region)] = data[_slices(inter, written)]
        filled += _size(inter)
    if filled != _size(region):
      raise ValueError(
        f"{where}: {plan.record['path']} {_show_region(region)} is not covered by its recorded "
        "shards (a damaged record)."
      )
    plan.blocks[region] = block


def _assemble(plan: _Plan) -> jax.Array:
  """The leaf as a jax.Array with the target's sharding (typed keys rewrapped)."""
  if plan.sharding is None:
    out = jnp.asarray(plan.blocks[plan.device_regions[None]])
  else:
    buffers = [jax.device_put(plan.blocks[r], d) for d, r in plan.device_regions.items()]
    out = jax.make_array_from_single_device_arrays(plan.shape, plan.sharding, buffers)
  if "prng_impl" in plan.record:
    out = jax.random.wrap_key_data(out, impl=plan.record["prng_impl"])
  return out
