"""Multi-process agreement: what every process found, exchanged, so that all act alike."""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np

from jaxrnn.checkpoint.shards import Region, show_region


def allgather_text(text: str) -> list[str]:
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


def agree(error: str | None) -> None:
  """Raises, on every process, the first process's error as a `ValueError`; else returns.

  Every process calls it once per `restore`, so a damaged shard that only one
  process reads stops them all with the same message instead of leaving the
  others waiting in their next collective.
  """
  found = allgather_text(error or "")
  for k, message in enumerate(found):
    if message:
      raise ValueError(message + (f" (found by process {k} of {len(found)})" * (len(found) > 1)))


def record_shards(records: list[dict[str, Any]], parts: list[str]) -> None:
  """Adds every process's written shards to ``records``, once each (same region: same digest)."""
  seen: dict[tuple[int, Region], str] = {}
  for i, region, digest in sorted(x for part in parts for x in json.loads(part)):
    key = (i, tuple(tuple(r) for r in region))
    if key in seen:  # a process-local array, which every process holds whole
      if seen[key] != digest:
        raise ValueError(
          f"state leaf {records[i]['path']} {show_region(key[1])} differs between processes; "
          "expected the same values on every process (build the state from the same seed, or "
          "place it with jaxrnn.sharding.shard_state)."
        )
      continue
    seen[key] = digest
    records[i].setdefault("shards", []).append({"index": region, "sha256": digest})
