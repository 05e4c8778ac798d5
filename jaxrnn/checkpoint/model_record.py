"""The JSON record of a model that checkpoints keep, and the check of one against another.

A record is ``{"name", "config", "settings"}``: ``config`` defines the math and
is checked on restore, field by field; ``settings`` (execution settings such as
``unroll``, ``remat``, ``impl``) are recorded and never checked, so a state
saved with one ``remat`` restores into a model with another. Records written
before settings existed have no ``"settings"`` and are checked the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from jaxrnn.checkpoint.shared_json import KIND_FIELDS, MISSING, first_difference, to_json

CHECKED = ("name", "config")  # what defines the math; "settings" is recorded only


def jsonable(value: Any, where: str) -> Any:
  """A config value as JSON: tuples of ``(name, value)`` pairs become objects.

  Raises:
    ValueError: naming ``where`` for a value that is not JSON data.
  """
  return to_json(value, where)


def _settings(settings: Any) -> dict[str, Any]:
  """Settings, ``(name, value)`` pairs or a mapping, as a JSON object (``{}`` for none)."""
  try:
    pairs = dict(settings)
  except (TypeError, ValueError):
    raise ValueError(
      f"model settings={settings!r}: expected (name, value) pairs, e.g. (('remat', None),)."
    ) from None
  return jsonable(pairs, "settings")


def _parts(model: Any) -> tuple[Any, Any, Any]:
  if isinstance(model, Mapping):
    if set(model) not in ({"name", "config"}, {"name", "config", "settings"}):
      raise ValueError(
        f"model spec has keys {sorted(model)}; expected ['config', 'name'] (and 'settings')."
      )
    return model["name"], model["config"], model.get("settings", ())
  if hasattr(model, "name") and hasattr(model, "config"):
    return model.name, model.config, getattr(model, "settings", ())
  raise ValueError(
    f"model={type(model).__name__}: expected a jaxrnn.Cell or SequenceModel (with .name and "
    ".config), a dict {'name', 'config'}, or None."
  )


def model_spec(model: Any) -> dict[str, Any] | None:
  """The JSON record of a model that a checkpoint keeps: ``{"name", "config", "settings"}``.

  Args:
    model: a `jaxrnn.Cell` or `jaxrnn.SequenceModel` (anything with ``name`` and
      ``config``, and optionally ``settings``), a dict with those keys, or None.

  Returns:
    A JSON-serialisable dict (``settings`` is ``{}`` for a model without
    them), or None for ``model=None``.

  Raises:
    ValueError: if ``model`` has no ``name``/``config`` or the config or
      settings are not JSON-serialisable.

  Example:
    >>> import jaxrnn
    >>> from jaxrnn.checkpoint import model_spec
    >>> model_spec(jaxrnn.gru(8))
    {'name': 'gru', 'config': {'carry_dtype': None, 'compute_dtype': None, 'dtype': 'float32',
     'hidden_size': 8, 'recurrent_init': 'uniform', 'use_bias': True}, 'settings': {}}
  """
  if model is None:
    return None
  name, config, settings = _parts(model)
  spec = {
    "name": jsonable(name, "name"),
    "config": jsonable(config, "config"),
    "settings": _settings(settings),
  }
  return json.loads(json.dumps(spec))  # exactly what reading it back gives


def _kinds(record: Any) -> Any:
  """Only what says which kind a record is: the `KIND_FIELDS` at every depth."""
  if isinstance(record, dict):
    return {
      k: _kinds(v) for k, v in record.items() if k in KIND_FIELDS or isinstance(v, dict | list)
    }
  if isinstance(record, list):
    return [_kinds(v) for v in record]
  return record


def model_difference(saved: Any, expected: dict[str, Any]) -> str | None:
  """The first difference in name or config between two records, as a sentence; or None.

  A different kind (a ``name``, ``kind`` or ``cell`` field, at any depth) is
  reported before any other field; numbers compare by value (``0 == 0.0``).

  Example:
    >>> import jaxrnn
    >>> model_difference(model_spec(jaxrnn.rnn_layers("lstm", 4)),
    ...                  model_spec(jaxrnn.rnn_layers("gru", 4)))
    "another kind, config.kind: checkpoint has 'lstm', model has 'gru'"
  """
  if isinstance(saved, dict):
    saved = {k: saved[k] for k in CHECKED if k in saved}
  expected = {k: expected[k] for k in CHECKED}
  diff = first_difference(_kinds(saved), _kinds(expected), first=KIND_FIELDS)
  kind = diff is not None and diff[0].rsplit(".", 1)[-1] in KIND_FIELDS
  if not kind:
    diff = first_difference(saved, expected, first=KIND_FIELDS)
  if diff is None:
    return None
  field, got, want = diff
  if got is MISSING:
    return f"{field} is missing from the checkpoint (model has {want!r})"
  if want is MISSING:
    return f"{field} is in the checkpoint ({got!r}) but not in the model"
  return f"{'another kind, ' if kind else ''}{field}: checkpoint has {got!r}, model has {want!r}"
