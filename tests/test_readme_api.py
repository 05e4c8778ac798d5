"""The API page's tables against the code: every public signature, every argument, every default.

Each public function of `jaxrnn` (and of its submodules train, checkpoint, loop,
sharding, export, testing) and each public NamedTuple-like type must appear in the
documentation site's API page (docs/api.md, above its generated reference) as a code span
``name(arg, *, kw=default, ...)`` whose arguments, in order, with the keyword-only marker
and the defaults, are the code's.
"""

import importlib
import inspect
import re
from pathlib import Path

import jax.numpy as jnp

import jaxrnn

ROOT = Path(__file__).resolve().parent.parent
SUBMODULES = ("train", "checkpoint", "loop", "sharding", "export", "testing")
METHODS = (
  "train.TrainState.create",
  "ElmanParams.from_concatenated",
  "RGLRUParams.from_recurrentgemma",
)


def public_names() -> list[str]:
  """Every public callable's name, relative to `jaxrnn` (``train.make_train_step``)."""
  names = [n for n in jaxrnn.__all__ if n not in SUBMODULES]
  for sub in SUBMODULES:
    module = importlib.import_module(f"jaxrnn.{sub}")
    names += [f"{sub}.{n}" for n in module.__all__]
  return names + list(METHODS)


def resolve(name: str):
  obj = jaxrnn
  for part in name.split("."):
    obj = importlib.import_module(f"jaxrnn.{part}") if part in SUBMODULES else getattr(obj, part)
  return obj


def code_signature(obj) -> list[tuple[str, object]]:
  """``[(name, default or EMPTY), ...]`` with ``("*", EMPTY)`` before keyword-only arguments."""
  empty = inspect.Parameter.empty
  if hasattr(obj, "FIELDS"):  # Cell, SequenceModel: fields with defaults
    return [(f, obj.DEFAULTS.get(f, empty)) for f in obj.FIELDS]
  if hasattr(obj, "_fields"):  # NamedTuples
    return [(f, empty) for f in obj._fields]
  out, star = [], False
  for p in inspect.signature(obj).parameters.values():
    if p.kind is p.KEYWORD_ONLY and not star:
      out.append(("*", empty))
      star = True
    prefix = {p.VAR_KEYWORD: "**", p.VAR_POSITIONAL: "*"}.get(p.kind, "")
    star = star or p.kind is p.VAR_POSITIONAL
    out.append((prefix + p.name, p.default))
  return out


def split_arguments(text: str) -> list[str]:
  """``"a, b=(1, 2), *, c"`` -> ``["a", "b=(1, 2)", "*", "c"]``: commas outside brackets."""
  parts, depth, current = [], 0, ""
  for ch in text:
    depth += (ch in "([{") - (ch in ")]}")
    if ch == "," and depth == 0:
      parts.append(current.strip())
      current = ""
    else:
      current += ch
  return [p for p in [*parts, current.strip()] if p]


def readme_signature(text: str) -> list[tuple[str, object]]:
  out = []
  for arg in split_arguments(text):
    name, _, default = arg.partition("=")
    value = eval(default, {"jnp": jnp}) if default else inspect.Parameter.empty
    out.append((name.strip(), value))
  return out


API_PAGE = ROOT / "docs" / "api.md"


def documented() -> dict[str, list[str]]:
  """``{name: [argument text, ...]}`` of the code spans ``name(...)`` in the API page's tables
  (everything above its generated reference, ``## Reference``)."""
  section = API_PAGE.read_text().split("\n## Reference\n", 1)[0]
  spans: dict[str, list[str]] = {}
  for name, args in re.findall(r"`([A-Za-z_][\w.]*)\(([^`]*)\)`", section):
    spans.setdefault(name, []).append(args)
  return spans


def test_every_public_signature_is_in_the_api_page_as_in_the_code():
  spans = documented()
  names = public_names()
  assert len(names) > 60  # the whole surface, not an empty list
  missing = [n for n in names if n not in spans]
  assert not missing, f"not in docs/api.md's tables: {missing}"
  wrong = {}
  for name in names:
    expected = code_signature(resolve(name))
    for args in spans[name]:
      if readme_signature(args) != expected:
        wrong[name] = (
          args,
          ", ".join(n if d is inspect.Parameter.empty else f"{n}={d!r}" for n, d in expected),
        )
  assert not wrong, f"docs/api.md signature != code signature: {wrong}"


def test_signature_parsing():
  assert split_arguments('a, b=(1, 2), *, c="x", **kw') == ["a", "b=(1, 2)", "*", 'c="x"', "**kw"]
  assert readme_signature("h, *, dtype=jnp.float32") == [
    ("h", inspect.Parameter.empty),
    ("*", inspect.Parameter.empty),
    ("dtype", jnp.float32),
  ]
  assert code_signature(jaxrnn.stack)[1:] == [("*", inspect.Parameter.empty), ("dropout_rate", 0.0)]
