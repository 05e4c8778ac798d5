"""The checkpoint's JSON record: what each leaf is, and its checks on restore."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.cells.base import PyTree
from jaxrnn.checkpoint.model_record import model_difference
from jaxrnn.checkpoint.shared_json import MAX_MANIFEST_BYTES, parse_json

FORMAT = "jaxrnn-checkpoint"
FORMAT_VERSION = 2  # 1: one SHA-256 per array (still read); 2: one per written shard


def path_str(path) -> str:
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


def is_key(leaf: Any) -> bool:
  return hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def shape_dtype(leaf: Any) -> tuple[tuple[int, ...], np.dtype]:
  """Shape and dtype of a target leaf as stored (typed keys as their key data)."""
  if is_key(leaf):
    leaf = jax.eval_shape(jax.random.key_data, leaf)
  if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
    leaf = np.asarray(leaf)
  return tuple(leaf.shape), np.dtype(leaf.dtype)


def stored_leaves(state: PyTree) -> tuple[list[dict[str, Any]], list[Any]]:
  """The record of every leaf and the array orbax stores for it (jax arrays as they are)."""
  records, arrays = [], []
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    record: dict[str, Any] = {"path": path_str(path)}
    if is_key(leaf):
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


def read_record(step_dir, where: str, step: int) -> dict[str, Any]:
  """The JSON record of ``step_dir``, read bounded (size, depth), whose step is ``step``."""
  record = step_dir / "meta" / "metadata"  # where orbax's JsonSave writes it
  try:
    size = record.stat().length
    if size > MAX_MANIFEST_BYTES:
      raise ValueError(f"{size} bytes; expected at most {MAX_MANIFEST_BYTES}")
    meta = parse_json(record.read_bytes(), "meta/metadata")
  except Exception as e:  # missing, unreadable or not JSON: none of them may escape as-is
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
  got = meta.get("step")
  if isinstance(got, bool) or not isinstance(got, int) or got != step:
    raise ValueError(
      f"{where}: its record says step {got!r}; expected {step}, the step of its directory "
      "(the record was altered or moved)."
    )
  return meta


def check_model(meta: dict[str, Any], expected_model: dict[str, Any] | None, where: str) -> None:
  """The recorded model's name and config equal ``expected_model``'s (settings are not checked)."""
  if expected_model is None:
    return
  if meta.get("model") is None:
    raise ValueError(f"{where} records no model; cannot check it against {expected_model}.")
  diff = model_difference(meta["model"], expected_model)
  if diff:
    raise ValueError(f"{where} was saved for a different model: {diff}.")


def check_leaves(records: Any, flat: list, where: str) -> None:
  """The recorded leaves have the target's paths, shapes and dtypes."""
  if not isinstance(records, list) or len(records) != len(flat):
    got = len(records) if isinstance(records, list) else records
    raise ValueError(f"{where} has {got} arrays; target has {len(flat)}.")
  for i, ((path, leaf), rec) in enumerate(zip(flat, records, strict=True)):
    name = path_str(path)
    shape, dtype = shape_dtype(leaf)
    if not isinstance(rec, dict) or rec.get("path") != name:
      got = rec.get("path") if isinstance(rec, dict) else rec
      raise ValueError(f"{where}: array {i} is {got!r}; target has {name!r}.")
    if tuple(rec.get("shape", ())) != shape or rec.get("dtype") != str(dtype):
      raise ValueError(
        f"{where}: {name} has shape {tuple(rec.get('shape', ()))} and dtype {rec.get('dtype')}; "
        f"target has shape {shape} and dtype {dtype}."
      )
