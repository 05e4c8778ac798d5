"""`save`: a state written by every process into its own pending directory, then committed."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxrnn import params_check
from jaxrnn.cells.base import PyTree
from jaxrnn.checkpoint import steps
from jaxrnn.checkpoint.model_record import jsonable, model_spec
from jaxrnn.checkpoint.processes import agree, allgather_text, record_shards
from jaxrnn.checkpoint.record import FORMAT, FORMAT_VERSION, stored_leaves
from jaxrnn.checkpoint.shards import item_name, written_shards
from jaxrnn.version import __version__


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
  process 0 writes the JSON record. The write is atomic: it goes into a
  hidden directory of this save's own, ``.<step>.<id>.jaxrnn-pending`` (a new
  id per save, the same on every process), renamed to ``<step>`` when every
  process is done, so a process killed meanwhile leaves only the earlier
  checkpoints visible (and a hidden directory that nothing reads; delete it
  when no save is running). Two writers of one step never share a file: the
  first to finish renames its whole checkpoint into place, the other finds
  the step taken, removes its own copy and raises a `ValueError`.

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
    ValueError: a bad ``step`` or ``keep``, an existing ``step`` (also one
      that another writer saved while this one was writing), or a state leaf
      or config that cannot be stored.

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
  records, arrays = stored_leaves(state)
  meta = {
    "format": FORMAT,
    "format_version": FORMAT_VERSION,
    "jaxrnn_version": __version__,
    "step": step,
    "model": model_spec(model),
    "leaves": records,
    "metadata": jsonable(dict(metadata or {}), "metadata"),
  }
  record_shards(records, allgather_text(json.dumps(written_shards(arrays))))
  path = steps.orbax_path(directory)
  ocp = steps.orbax_checkpoint()
  if step in steps.all_steps(path):
    raise ValueError(f"checkpoint step {step} already exists in {os.fspath(directory)!r}.")
  token = allgather_text(uuid.uuid4().hex)[0]  # process 0's: one directory for this save
  pending = path / f".{step}.{token}{steps.PENDING}"
  path.mkdir(parents=True, exist_ok=True)
  items = {item_name(i): a for i, a in enumerate(arrays)}
  args = ocp.args.Composite(state=ocp.args.StandardSave(items), meta=ocp.args.JsonSave(meta))
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    checkpointer.save(pending, args=args)
  error = None
  if jax.process_index() == 0:
    error = steps.commit(pending, path, step, os.fspath(directory), keep)
  agree(error)  # every process returns once the step is in place, or raises the same error
  return str(path / str(step))
