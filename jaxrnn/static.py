"""`Static`: a frozen bundle of functions, hashable by a key (`Cell` and `SequenceModel`)."""

from __future__ import annotations

from typing import Any

from jaxrnn import params_check


class Static:
  """A frozen bundle of functions: a pytree node with no leaves, equal and hashable by a key.

  A value built by a library factory (`library`) is keyed by its name, its complete
  config, its execution settings and its parts (the cells or models it wraps), so
  that ``jaxrnn.lstm(4) == jaxrnn.lstm(4)`` and `jax.jit` does not retrace for an
  equal model. One built directly from bare functions is keyed by the identity of
  its functions (plus name and config), so two different user cells never compare
  equal. Subclasses list their fields in ``FIELDS`` and their defaults in
  ``DEFAULTS``; positional construction follows ``FIELDS``.
  """

  FIELDS: tuple[str, ...] = ()
  DEFAULTS: dict[str, Any] = {}
  __slots__ = ("_key", "_values")

  def __init__(self, *args: Any, **kwargs: Any):
    if len(args) > len(self.FIELDS):
      raise ValueError(
        f"{type(self).__name__} takes at most {len(self.FIELDS)} positional arguments "
        f"{self.FIELDS}, got {len(args)}."
      )
    values = dict(self.DEFAULTS, **dict(zip(self.FIELDS, args, strict=False)))
    for name, value in kwargs.items():
      if name not in self.FIELDS:
        raise ValueError(f"{type(self).__name__} has no field {name!r}; its fields: {self.FIELDS}.")
      values[name] = value
    missing = [f for f in self.FIELDS if f not in values]
    if missing:
      raise ValueError(f"{type(self).__name__} is missing {missing}.")
    given = tuple(params_check.raw(values[f]) for f in self.FIELDS)  # keyed by the user's
    self._check(values)
    object.__setattr__(self, "_values", tuple(values[f] for f in self.FIELDS))
    object.__setattr__(self, "_key", ("functions",) + given)

  def _check(self, values: dict[str, Any]) -> None:
    for name in ("name",):
      if not isinstance(values[name], str):
        raise ValueError(f"{name}={values[name]!r}: expected a str.")
    for name in ("config", "settings"):
      if name in values:
        pairs = values[name]
        if not isinstance(pairs, tuple) or not all(
          isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in pairs
        ):
          raise ValueError(f"{name}={pairs!r}: expected a tuple of (name, value) pairs.")

  @classmethod
  def library(cls, *args: Any, parts: tuple[Any, ...] = (), **kwargs: Any):
    """Built by a jaxrnn factory: keyed by name, config, settings and parts, not functions."""
    self = cls(*args, **kwargs)
    v = dict(zip(cls.FIELDS, self._values, strict=True))
    key = ("config", v["name"], v["config"], v.get("settings", ()), tuple(parts))
    object.__setattr__(self, "_key", key)
    return self

  def __getattr__(self, name: str) -> Any:
    fields = type(self).FIELDS
    if name in fields:
      return object.__getattribute__(self, "_values")[fields.index(name)]
    raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

  def __setattr__(self, name: str, value: Any) -> None:
    raise AttributeError(f"{type(self).__name__} is frozen; use .replace({name}=...).")

  def __eq__(self, other: Any) -> bool:
    return type(self) is type(other) and self._key == other._key

  def __hash__(self) -> int:
    return hash((type(self).__name__, self._key))

  def __repr__(self) -> str:
    return f"{type(self).__name__}(name={self.name!r}, config={dict(self.config)!r})"

  def __reduce__(self):
    return (_rebuild, (type(self), self._values, self._key))

  def __copy__(self):
    return self

  def __deepcopy__(self, memo: Any):
    return self

  def replace(self, **changes: Any):
    """A copy with some fields changed (what ``NamedTuple._replace`` did).

    The copy is keyed by its functions: it equals only copies with the same functions.

    Example:
      >>> import jaxrnn
      >>> cell = jaxrnn.gru(4).replace(name="my_gru")
      >>> cell.name, cell == jaxrnn.gru(4)
      ('my_gru', False)
    """
    return type(self)(**dict(zip(self.FIELDS, self._values, strict=True), **changes))


def _rebuild(cls: type, values: tuple[Any, ...], key: tuple[Any, ...]) -> Static:
  self = cls(*values)
  object.__setattr__(self, "_key", key)
  return self
