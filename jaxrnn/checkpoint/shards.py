"""Shard geometry and reading: the regions written, the regions needed, read and assembled."""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.checkpoint.record import shape_dtype
from jaxrnn.checkpoint.shared_json import parse_json
from jaxrnn.checkpoint.steps import orbax_checkpoint

Region = tuple[tuple[int, int], ...]  # [start, stop) per dimension


def item_name(i: int) -> str:
  return f"leaf_{i:05d}"


def sha256(data: Any) -> str:
  return hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()


def region_of(index: tuple[slice, ...], shape: tuple[int, ...]) -> Region:
  return tuple(tuple(s.indices(n)[:2]) for s, n in zip(index, shape, strict=True))


def written_shards(arrays: list[Any]) -> list[list[Any]]:
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
      out.append([i, [list(r) for r in region_of(index, arr.shape)], sha256(np.asarray(data))])
  return out


class Plan(NamedTuple):
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


def recorded_shards(rec: dict[str, Any], shape: tuple[int, ...], where: str) -> list:
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


def plan_leaf(i: int, leaf: Any, rec: dict[str, Any], where: str) -> Plan:
  shape, dtype = shape_dtype(leaf)
  sharding = getattr(leaf, "sharding", None)
  if sharding is None:
    regions = {None: tuple((0, n) for n in shape)}
  else:
    index_map = sharding.addressable_devices_indices_map(shape)
    regions = {d: region_of(index, shape) for d, index in index_map.items()}
  written = recorded_shards(rec, shape, where)
  return Plan(item_name(i), rec, shape, dtype, sharding, regions, written, [], {})


def size(region: Region) -> int:
  return int(np.prod([b - a for a, b in region], dtype=np.int64))


def slices(region: Region, origin: Region | None = None) -> tuple[slice, ...]:
  """``region`` as slices, relative to the start of ``origin`` (None: of the array)."""
  starts = [a for a, _ in origin] if origin is not None else [0] * len(region)
  return tuple(slice(a - s, b - s) for (a, b), s in zip(region, starts, strict=True))


def intersect(a: Region, b: Region) -> Region | None:
  inter = tuple((max(a0, b0), min(a1, b1)) for (a0, a1), (b0, b1) in zip(a, b, strict=True))
  return inter if all(lo < hi for lo, hi in inter) else None


def show_region(region: Region) -> str:
  return "[" + ", ".join(f"{a}:{b}" for a, b in region) + "]"


def array_reader(state_dir, where: str):
  """``name -> opening store`` of the stored arrays, with orbax's read spec and context."""
  ocp = orbax_checkpoint()
  import tensorstore as ts

  try:
    info = parse_json((state_dir / "_METADATA").read_bytes(), "state/_METADATA", max_bytes=1 << 30)
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


def read_shards(plans: list[Plan], open_array, where: str) -> None:
  """Reads (concurrently) every written shard that overlaps a local slice; checks its SHA-256."""
  pending = []
  for plan in plans:
    local = set(plan.device_regions.values())
    needed = [
      (region, digest)
      for region, digest in plan.written
      if any(intersect(region, r) is not None for r in local)
    ]
    try:
      store = open_array(plan.name).result() if needed else None
      pending += [(plan, r, d, store[slices(r)].read()) for r, d in needed]
    except Exception as e:  # tensorstore reports damage as ValueError, OSError, ...
      raise ValueError(_unreadable(where, plan, e)) from None
  for plan, region, digest, future in pending:
    try:
      data = np.asarray(future.result())
    except Exception as e:  # noqa: BLE001 - as above
      raise ValueError(_unreadable(where, plan, e)) from None
    if data.dtype != plan.dtype or sha256(data) != digest:
      raise ValueError(
        f"{where}: {plan.record['path']} shard {show_region(region)} does not match its "
        "recorded SHA-256 (damaged)."
      )
    plan.read.append((region, data))


def _unreadable(where: str, plan: Plan, e: Exception) -> str:
  return f"{where}: {plan.record['path']} cannot be read ({type(e).__name__}: {str(e)[:300]})."


def fill_blocks(plan: Plan, where: str) -> None:
  """Each local slice, copied out of the shards read (which must cover it)."""
  for region in set(plan.device_regions.values()):
    block = np.empty([b - a for a, b in region], plan.dtype)
    filled = 0
    for written, data in plan.read:
      inter = intersect(written, region)
      if inter is not None:
        block[slices(inter, region)] = data[slices(inter, written)]
        filled += size(inter)
    if filled != size(region):
      raise ValueError(
        f"{where}: {plan.record['path']} {show_region(region)} is not covered by its recorded "
        "shards (a damaged record)."
      )
    plan.blocks[region] = block


def assemble(plan: Plan) -> jax.Array:
  """The leaf as a jax.Array with the target's sharding (typed keys rewrapped)."""
  if plan.sharding is None:
    out = jnp.asarray(plan.blocks[plan.device_regions[None]])
  else:
    buffers = [jax.device_put(plan.blocks[r], d) for d, r in plan.device_regions.items()]
    out = jax.make_array_from_single_device_arrays(plan.shape, plan.sharding, buffers)
  if "prng_impl" in plan.record:
    out = jax.random.wrap_key_data(out, impl=plan.record["prng_impl"])
  return out
