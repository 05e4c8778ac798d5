"""A model's params, carry and argument order checked against what its functions imply.

What a cell or sequence model expects is read off its own functions, abstractly:
``jax.eval_shape(model.init, key, input_size)`` gives every params leaf's shape and
dtype (no FLOPs), and ``jax.eval_shape(model.initial_carry, params, ())`` the carry's
structure. The input size is the params' own ``input_size`` (every built-in cell's params
declare it; a user's params type may too), or, for a model built by jaxrnn, its first
layer's. Params that declare none (most user cells) are checked by structure and dtype
only, against ``init(key, 1)``; an ``init`` that cannot be evaluated abstractly is not
checked at all. The expected trees are cached per ``(init, initial_carry, input_size)``
and the checks run in Python, so under `jax.jit` they run once, when a signature is
traced, and the compiled call pays nothing.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

PyTree = Any

_RAW = "_jaxrnn_raw"  # on a checked wrapper: the function it wraps


def raw(fn: Any) -> Any:
  """The user's function under a checked wrapper (``fn`` itself if it is none)."""
  return getattr(fn, _RAW, fn)


@functools.lru_cache(maxsize=512)
def _expected(init: Callable, initial_carry: Callable, input_size: int | None):
  """``(params, carry)`` of ``init`` as `jax.ShapeDtypeStruct` trees; None where not evaluable."""
  size = 1 if input_size is None else input_size
  try:
    params = jax.eval_shape(lambda: init(jax.random.key(0), size))
  except Exception:  # noqa: BLE001 - an init we cannot evaluate is not checked
    return None, None
  try:
    carry = jax.eval_shape(lambda p: initial_carry(p, ()), params)
  except Exception:  # noqa: BLE001
    carry = None
  return params, carry


def input_size(model: Any, params: PyTree) -> int | None:
  """The input size the params declare (``params.input_size``), or None.

  A model whose ``init`` is jaxrnn's own (a stack, a bidirectional pair) reads it off its
  first part; a user's tuple of params is not guessed at.
  """
  size = getattr(params, "input_size", None)
  if isinstance(size, int | np.integer) and not isinstance(size, bool):
    return int(size)
  library = getattr(model.init, "__module__", "").startswith("jaxrnn.")
  if library and isinstance(params, tuple | list) and params:
    return input_size(model, params[0])
  return None


def _structured(value: Any) -> bool:
  """Whether ``value`` is a pytree of several parts (a params or carry), not an array."""
  if isinstance(value, Mapping) or hasattr(value, "_fields") or hasattr(value, "FIELDS"):
    return True
  if isinstance(value, tuple | list):
    return any(_structured(v) or hasattr(v, "shape") for v in value)
  return False


def describe(tree: Any) -> str:
  """A pytree's kind in words: ``LSTMCarry(h, c)``, ``a tuple of 2``, ``an array (3, 4)``."""
  if hasattr(tree, "_fields"):
    return f"{type(tree).__name__}({', '.join(tree._fields)})"
  if isinstance(tree, Mapping):
    return f"a dict with keys {sorted(map(str, tree))}"
  if isinstance(tree, tuple | list):
    parts = ", ".join(type(t).__name__ if hasattr(t, "_fields") else describe(t) for t in tree)
    return f"a {type(tree).__name__} of {len(tree)} ({parts})"
  if hasattr(tree, "FIELDS"):
    return f"a jaxrnn.{type(tree).__name__}"
  if hasattr(tree, "shape"):
    return f"an array of shape {tuple(tree.shape)}"
  return "None" if tree is None else f"a {type(tree).__name__}"


def check_arrays(where: str, order: str, **arrays: Any) -> None:
  """A `ValueError` naming ``order`` when a params, carry or model sits where an array goes."""
  for name, value in arrays.items():
    if _structured(value):
      raise ValueError(
        f"{where}: {name} is {_article(describe(value))}; expected an array. The arguments "
        f"go {order}."
      )


def _article(text: str) -> str:
  return text if text.startswith(("a ", "an ", "None")) else f"a {text}"


def check(model: Any, params: PyTree, where: str, order: str = "", others: tuple = ()) -> None:
  """Every params leaf's path, shape and dtype against ``model.init``'s.

  Args:
    model: a `jaxrnn.Cell` or `jaxrnn.SequenceModel` (anything with ``init`` and
      ``initial_carry``).
    params: the params given with it.
    where: the caller, for the message (``"scan"``, ``"lstm.step"``).
    order: the caller's argument order, named when ``params`` looks swapped.
    others: the caller's other arguments: one with the expected params' structure
      means the arguments were swapped.

  Raises:
    ValueError: naming the leaf, its shape or dtype and the expected one, or the
      params' kind and the expected one.

  Example:
    >>> import jax, jaxrnn
    >>> from jaxrnn import params_check
    >>> params = jaxrnn.lstm(16).init(jax.random.key(0), 3)
    >>> try:
    ...   params_check.check(jaxrnn.lstm(8), params, "scan")
    ... except ValueError as e:
    ...   print(str(e)[:56])
    scan: params.w_ih has shape (3, 64); expected (3, 32), w
  """
  size = input_size(model, params)
  want, _ = _expected(model.init, model.initial_carry, size)
  if want is None:
    return
  want_def = jax.tree.structure(want)
  if jax.tree.structure(params) != want_def:
    swapped = not _structured(params) or any(
      jax.tree.structure(o) == want_def for o in others if o is not None
    )
    hint = f" The arguments go {order}." if order and swapped else ""
    path, got, expected = _first_difference(params, want)
    raise ValueError(
      f"{where}: params{path} is {_article(describe(got))}; expected "
      f"{describe(expected)}, what {model.name}'s init gives.{hint}"
    )
  _compare(model, params, want, where, size)


def _first_difference(params: PyTree, want: PyTree) -> tuple[str, Any, Any]:
  """``(path, got, expected)`` at the first place two trees differ in structure.

  The whole trees (path ``""``) unless they are containers of one type whose leaves
  differ only where one holds None and the other an array (``use_bias``, ``proj_size``).
  """
  none = lambda a: a is None  # noqa: E731
  got = jax.tree_util.tree_flatten_with_path(params, is_leaf=none)[0]
  exp = jax.tree_util.tree_flatten_with_path(want, is_leaf=none)[0]
  same_paths = [p for p, _ in got] == [p for p, _ in exp]
  if type(params) is type(want) and same_paths:
    for (path, a), (_, b) in zip(got, exp, strict=True):
      if (a is None) != (b is None):
        return jax.tree_util.keystr(path), a, b
  return "", params, want


def _compare(model: Any, params: PyTree, want: PyTree, where: str, size: int | None) -> None:
  """Leaf by leaf: shapes (when the input size is known) and dtypes.

  A whole-tree cast (float64 params for a gradient check) is allowed: each leaf's dtype
  must be of the kind init gives (floating, integer...), and leaves to which init gives
  one dtype must share one.
  """
  flat = jax.tree_util.tree_leaves_with_path(params)
  seen: dict[np.dtype, tuple[str, np.dtype]] = {}
  for (path, leaf), expected in zip(flat, jax.tree.leaves(want), strict=True):
    name = "params" + jax.tree_util.keystr(path)
    shape, dtype = tuple(np.shape(leaf)), getattr(leaf, "dtype", None)
    if size is not None and shape != tuple(expected.shape):
      raise ValueError(
        f"{where}: {name} has shape {shape}; expected {tuple(expected.shape)}, what "
        f"{model.name}'s init gives for input_size={size} (params of another model?)."
      )
    if dtype is None:
      continue
    dtype, want_dtype = np.dtype(dtype), np.dtype(expected.dtype)
    first, first_dtype = seen.setdefault(want_dtype, (name, dtype))
    if dtype.kind != want_dtype.kind:
      raise ValueError(
        f"{where}: {name} has dtype {dtype}; expected {want_dtype}, what {model.name}'s init "
        "gives (params may be cast as a whole, to another dtype of the same kind)."
      )
    if dtype != first_dtype:
      raise ValueError(
        f"{where}: {name} has dtype {dtype}; expected {first_dtype} like {first}: "
        f"{model.name}'s init gives both {want_dtype} (cast all the params or none)."
      )


def check_carry(model: Any, params: PyTree, carry: PyTree, where: str, name: str = "carry") -> None:
  """A `ValueError` naming the expected carry type when ``carry`` is of another kind.

  Only the structure is compared (shapes are the callers' own checks); a carry holding
  None (a stack's "this layer's initial carry") is not checked.
  """
  if carry is None or any(a is None for a in jax.tree.leaves(carry, is_leaf=lambda a: a is None)):
    return
  _, want = _expected(model.init, model.initial_carry, input_size(model, params))
  if want is not None and jax.tree.structure(carry) != jax.tree.structure(want):
    raise ValueError(
      f"{where}: {name} is {_article(describe(carry))}; expected {describe(want)}, "
      f"what {model.name}'s initial_carry returns (is it another model's carry?)."
    )


def checked(
  model_name: str,
  init: Callable,
  initial_carry: Callable,
  fn: Callable,
  kind: str,
) -> Callable:
  """``fn`` (a ``step(params, carry, x)`` or ``apply(params, xs, carry=None, ...)``)
  behind the argument-order, params and carry checks; its signature is kept."""
  fn = raw(fn)
  where = f"{model_name}.{kind}"

  model = types.SimpleNamespace(name=model_name, init=init, initial_carry=initial_carry)

  if kind == "step":

    @functools.wraps(fn)
    def wrapper(params, carry, x, *args, **kwargs):
      check_arrays(where, "step(params, carry, x)", x=x)
      check(model, params, where, "step(params, carry, x)", (carry, x))
      check_carry(model, params, carry, where)
      return fn(params, carry, x, *args, **kwargs)

  else:

    @functools.wraps(fn)
    def wrapper(params, xs, *args, **kwargs):
      order = "apply(params, xs, carry=None, ...)"
      check_arrays(where, order, xs=xs)
      check(model, params, where, order, (xs, *args))
      carry = kwargs.get("carry", args[0] if args else None)
      check_carry(model, params, carry, where)
      return fn(params, xs, *args, **kwargs)

  setattr(wrapper, _RAW, fn)
  return wrapper


def check_state(model: Any, state: PyTree, where: str) -> None:
  """The params inside a checkpoint's ``state`` against ``model`` (a `check`).

  The params are ``state.params`` (a `jaxrnn.train.TrainState`), ``state["params"]``, or
  ``state`` itself, whichever has the structure of ``model``'s params: a checkpoint's
  ``model`` is a record, and may describe only a part of what it holds (a cell inside a
  larger model's params), which is then left alone. A ``model`` without ``init`` (a
  recorded spec, None) checks nothing.
  """
  if not hasattr(model, "init") or not hasattr(model, "initial_carry"):
    return
  candidates = [state]
  if isinstance(state, Mapping) and "params" in state:
    candidates.insert(0, state["params"])
  elif hasattr(state, "params") and hasattr(state, "_fields"):
    candidates.insert(0, state.params)
  for params in candidates:
    want, _ = _expected(model.init, model.initial_carry, input_size(model, params))
    if want is not None and jax.tree.structure(params) == jax.tree.structure(want):
      return check(model, params, where)
