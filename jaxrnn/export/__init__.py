"""Inference artifacts with `jax.export`: `save` a model, `load` it anywhere.

`save` writes a directory with the model's jit-compiled ``apply`` (plain, and
with ``seq_lengths`` and ``resets``) and streaming ``step``, serialized by
`jax.export` with a symbolic batch size and length, the weights beside them in
``params.npz`` in their own dtype (bfloat16 as its bits), and a
``manifest.json`` with the input and output specs. `load` (in
`jaxrnn.export.loading`, which imports only jax and numpy) returns an
`Artifact` of callables, after checking every file against the manifest (and
the manifest against ``expected_digest``, `digest` of the artifact you trust). From a shell::

    python -m jaxrnn.export PATH --input xs.npy --output ys.npy [--seq-lengths lengths.npy]
      [--resets resets.npy] [--final-state state.npz]
"""

from jaxrnn.export.loading import Artifact, digest, load, read_manifest
from jaxrnn.export.saving import save

__all__ = ["Artifact", "digest", "load", "read_manifest", "save"]
