"""`restore` and `read_metadata`: the record checked, the shards read, the leaves placed."""

from __future__ import annotations

import os
from typing import Any

import jax

from jaxrnn import params_check
from jaxrnn.cells.base import PyTree
from jaxrnn.checkpoint.model_record import model_spec
from jaxrnn.checkpoint.processes import agree
from jaxrnn.checkpoint.record import check_leaves, check_model, read_record
from jaxrnn.checkpoint.shards import (
  Plan,
  array_reader,
  assemble,
  fill_blocks,
  plan_leaf,
  read_shards,
)
from jaxrnn.checkpoint.steps import check_directory, pick_step


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
  path = check_directory(directory)
  step = pick_step(path, os.fspath(directory), step)
  return read_record(path / str(step), f"checkpoint {os.fspath(directory)!r} step {step}", step)


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
  agree(error)
  params_check.check_state(model, target, "checkpoint.restore")  # after the record's check
  leaves = [assemble(plan) for plan in plans]
  return jax.tree_util.tree_unflatten(treedef, leaves), meta


def _read_local(directory, step, expected_model, flat) -> tuple[dict[str, Any], list[Plan]]:
  """This process's part of `restore`, up to the host buffers; no collectives."""
  path = check_directory(directory)
  directory = os.fspath(directory)
  step = pick_step(path, directory, step)
  where = f"checkpoint {directory!r} step {step}"
  meta = read_record(path / str(step), where, step)
  check_model(meta, expected_model, where)
  records = meta.get("leaves")
  check_leaves(records, flat, where)
  pairs = enumerate(zip(flat, records, strict=True))
  plans = [plan_leaf(i, leaf, rec, where) for i, ((_, leaf), rec) in pairs]
  read_shards(plans, array_reader(path / str(step) / "state", where), where)
  for plan in plans:
    fill_blocks(plan, where)
  return meta, plans
