"""Sharded checkpoints of parameters and optimizer state through orbax-checkpoint.

A checkpoint is one step directory written by `orbax.checkpoint.CheckpointManager`:
the arrays (``state``, orbax's tensorstore/OCDBT format, written by every process
for its own shards, with no gather onto one host) and a JSON record (``meta``)
with the jaxrnn version, the model's name, configuration and execution settings,
and the path, shape and dtype of every array and the SHA-256 of every written
shard (the region each process wrote, recorded as ``[[start, stop], ...]``).
Each save writes into a hidden directory of its own (``.<step>.<id>.jaxrnn-pending``,
with a new id per save) and renames it to ``<step>`` when every process is done,
so a process killed while saving leaves the previous checkpoints intact and the
half-written one invisible, and of two writers of one step the first to finish
wins, whole, while the other raises a `ValueError` and discards its copy.

Restoring is a copy onto the target's shardings, whatever mesh wrote the
checkpoint (more or fewer devices, another mesh shape, one device): each
process reads, through tensorstore with orbax's own read spec, only the
written shards that overlap its own devices' slices, checks each against its
SHA-256, and assembles its device buffers from them, so the arrays are
bit-exact and no process reads (or holds) what it does not need. Loading never
unpickles: the record is JSON, read bounded (`jaxrnn.export.loading.parse_json`:
size and nesting depth), and its ``step`` must be the step of its directory;
the arrays are tensorstore's. Anything wrong (a
file that is not a checkpoint, a truncated or altered file, a model or tree
that does not match) is a `ValueError` that says what differs, and in a
multi-process run the processes agree first (an all-gather of what each found),
so every process raises the same error and none is left waiting.

Paths go through orbax's path handling (``etils.epath``): where orbax and
tensorstore support a remote file system (``gs://...``), so does this package.
In a multi-process run every process calls `save` and `restore`, and they all
see the same storage.

orbax-checkpoint is the ``experiments`` extra; it is imported when a function
here is first called, so ``import jaxrnn`` needs only the core dependencies.

The package, one module per concern: `saving` (`save`), `restoring` (`restore`,
`read_metadata`), `steps` (the step directories, the pending write's commit), `record`
(the JSON record and its checks), `model_record` (the model's name, config and settings),
`shards` (shard geometry and reading), `processes` (multi-process agreement) and
`shared_json` (the JSON helpers shared with the standalone artifact loader).
"""

from jaxrnn.checkpoint.model_record import model_spec
from jaxrnn.checkpoint.restoring import read_metadata, restore
from jaxrnn.checkpoint.saving import save
from jaxrnn.checkpoint.steps import all_steps, latest_step

__all__ = ["all_steps", "latest_step", "model_spec", "read_metadata", "restore", "save"]
