"""The step directories: orbax's paths, listing and picking steps, and a save's commit.

A save writes into a pending directory of its own (``.<step>.<id>.jaxrnn-pending``) and
`commit` renames it to ``<step>``; only renamed steps are listed.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

PENDING = ".jaxrnn-pending"  # a save's own directory, ".<step>.<id>.jaxrnn-pending", until renamed


def orbax_checkpoint():
  """The ``orbax.checkpoint`` module, imported on first use (the ``experiments`` extra)."""
  try:
    import orbax.checkpoint as ocp
  except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError(
      "jaxrnn.checkpoint needs orbax-checkpoint: pip install 'jaxrnn[experiments]'."
    ) from e
  return ocp


def orbax_path(directory: Any):
  """``directory`` as orbax's path type (`etils.epath.Path`); local paths made absolute."""
  from etils import epath

  text = os.fspath(directory)
  return epath.Path(text if "://" in text else os.path.abspath(text))


def check_directory(directory: Any):
  if not isinstance(directory, str | os.PathLike):
    raise ValueError(f"directory={directory!r}: expected a path (str or os.PathLike).")
  path = orbax_path(directory)
  if not path.is_dir():
    what = "a file" if path.exists() else "missing"
    raise ValueError(
      f"{os.fspath(directory)!r} is {what}; expected a checkpoint directory written by "
      "jaxrnn.checkpoint.save."
    )
  return path


def commit(pending, path, step: int, directory: str, keep: int | None) -> str | None:
  """Renames this save's directory to ``<step>`` and drops the steps past ``keep``; or the
  error to raise when another writer's ``<step>`` is there already (it stays, whole)."""
  try:
    pending.rename(path / str(step))  # refused when another writer's step is in place
  except OSError as e:
    with contextlib.suppress(OSError):
      pending.rmtree()
    return (
      f"checkpoint step {step} already exists in {directory!r}: another writer saved it while "
      f"this one was writing ({type(e).__name__}); the first to finish wins, this save was "
      "discarded."
    )
  if keep is not None:
    for old in all_steps(path)[:-keep]:
      with contextlib.suppress(OSError):
        (path / str(old)).rmtree()
  return None


def all_steps(directory: str | os.PathLike) -> list[int]:
  """The steps of the complete checkpoints in ``directory`` (ascending; [] if none or missing).

  Example:
    >>> import tempfile
    >>> from jaxrnn import checkpoint
    >>> checkpoint.all_steps(tempfile.mkdtemp())
    []
  """
  path = orbax_path(directory)
  if not path.is_dir():
    return []
  return sorted(int(s) for s in orbax_checkpoint().utils.checkpoint_steps(path))


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


def pick_step(path, directory: str, step: int | None) -> int:
  steps = all_steps(path)
  if not steps:
    raise ValueError(f"{directory!r} holds no complete checkpoint.")
  if step is None:
    return steps[-1]
  if step not in steps:
    raise ValueError(f"step={step!r} is not in {directory!r}; it holds steps {steps}.")
  return step
