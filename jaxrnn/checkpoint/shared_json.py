"""The JSON helpers that checkpoints share with the artifact loader, under names that say so.

`jaxrnn.export.loading` is one standalone file (it loads artifacts without jaxrnn), so the
bounded JSON reader and the config-record helpers are defined there, once; the checkpoint
record and the model record import them from here, which reads as the shared JSON rules
they are rather than as a dependency on the artifact loader.
"""

from jaxrnn.export.loading import (
  KIND_FIELDS,
  MAX_MANIFEST_BYTES,
  MISSING,
  first_difference,
  parse_json,
  to_json,
)

__all__ = [
  "KIND_FIELDS",
  "MAX_MANIFEST_BYTES",
  "MISSING",
  "first_difference",
  "parse_json",
  "to_json",
]
