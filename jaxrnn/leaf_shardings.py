"""Where each leaf of a train state and of a batch lies on a mesh (`jaxrnn.sharding`'s layout).

The rules are `jaxrnn.sharding`'s module docstring; this module holds the
`NamedSharding` s and the mesh checks, `jaxrnn.sharding` places arrays and
compiles the step.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import optax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrnn.cells.base import PyTree

# The cell parameter types whose gate-column leaves `model_axis` splits, and those leaves.


def gate_columns(node: Any) -> dict[str, int]:
  """What a params node declares: its gate-column leaves and their gates (empty: none).

  A cell's params NamedTuple declares ``gate_columns``, ``(field, gates)`` pairs, next
  to its own code (`jaxrnn.LSTMParams`: ``w_ih``, ``w_hh``, ``b`` with 4 gates); a
  params type that declares nothing stays replicated.
  """
  return dict(getattr(type(node), "gate_columns", ()))


def _declares(node: Any) -> bool:
  return bool(gate_columns(node)) and hasattr(node, "_fields")


AxisName = str | tuple[str, ...]


def check_mesh(mesh: Any) -> None:
  if not isinstance(mesh, Mesh):
    raise ValueError(
      f"mesh={type(mesh).__name__}: expected a jax.sharding.Mesh "
      "(e.g. jax.make_mesh((jax.device_count(),), ('data',)))."
    )


def axis_names(axis: AxisName, what: str) -> tuple[str, ...]:
  names = (axis,) if isinstance(axis, str) else axis
  if not isinstance(names, tuple) or not names or not all(isinstance(n, str) for n in names):
    raise ValueError(f"{what}={axis!r}: expected a mesh axis name (str) or a tuple of them.")
  return names


def axis_size(mesh: Mesh, axis: AxisName, what: str) -> int:
  names = axis_names(axis, what)
  for name in names:
    if name not in mesh.shape:
      raise ValueError(
        f"{what}={axis!r} is not an axis of the mesh; its axes are {mesh.axis_names}."
      )
  return math.prod(mesh.shape[n] for n in names)


def auto(mesh: Mesh) -> Mesh:
  """The same mesh with every axis `AxisType.Auto`: XLA chooses and inserts the collectives.

  `jax.make_mesh` makes ``Explicit`` axes by default, under which some jnp
  operations in a user's loss would need explicit output shardings.
  """
  if all(t == AxisType.Auto for t in mesh.axis_types):
    return mesh
  return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def pathstr(prefix: str, path: Any) -> str:
  return prefix + jax.tree_util.keystr(path)


def _cell_param_shardings(node: Any, mesh: Mesh, model_axis: str | None, where: str) -> Any:
  """Shardings for one cell's params: gate-column leaves split over ``model_axis``."""
  replicated = NamedSharding(mesh, P())
  if model_axis is None:
    return jax.tree.map(lambda _: replicated, node)
  k = mesh.shape[model_axis]
  declared = gate_columns(node)
  out = {}
  for field in type(node)._fields:
    leaf = getattr(node, field)
    if leaf is None:
      out[field] = None
      continue
    if field not in declared:
      out[field] = jax.tree.map(lambda _: replicated, leaf)
      continue
    gates = declared[field]
    shape = tuple(leaf.shape)
    columns = shape[-1]
    if columns % k:
      what = f"{gates} gates x H={columns // gates}" if gates > 1 else "H"
      raise ValueError(
        f"{where}.{field} has shape {shape}: its gate-column axis of size {columns} "
        f"({what}) does not split evenly over model_axis={model_axis!r} of size {k}; "
        f"expected a model axis size that divides {columns}."
      )
    out[field] = NamedSharding(mesh, P(*([None] * (len(shape) - 1)), model_axis))
  return type(node)(**out)


def _param_shardings(params: PyTree, mesh: Mesh, model_axis: str | None, prefix: str) -> PyTree:
  replicated = NamedSharding(mesh, P())

  def one(path, node):
    if _declares(node):
      return _cell_param_shardings(node, mesh, model_axis, pathstr(prefix, path))
    return replicated

  return jax.tree_util.tree_map_with_path(one, params, is_leaf=_declares)


def _shapes(tree: PyTree) -> tuple[Any, ...]:
  return tuple((tuple(leaf.shape), leaf.dtype) for leaf in jax.tree.leaves(tree))


def _opt_state_shardings(opt_state: PyTree, params: PyTree, param_sh: PyTree, mesh: Mesh) -> PyTree:
  """Params' shardings on every subtree of ``opt_state`` shaped like ``params``; else replicated."""
  replicated = NamedSharding(mesh, P())
  treedef, shapes = jax.tree.structure(params), _shapes(params)

  def like_params(node):
    if node is None or isinstance(node, optax.MaskedNode):
      return False
    try:
      return jax.tree.structure(node) == treedef and _shapes(node) == shapes
    except AttributeError:  # a leaf without .shape
      return False

  if not jax.tree.leaves(params):
    return jax.tree.map(lambda _: replicated, opt_state)
  return jax.tree.map(
    lambda node: param_sh if like_params(node) else replicated, opt_state, is_leaf=like_params
  )


def state_shardings(state: PyTree, mesh: Mesh, *, model_axis: str | None = None) -> PyTree:
  """The `NamedSharding` of every leaf of a train state (or of bare parameters).

  Args:
    state: a `jaxrnn.train.TrainState` (or any pytree with the ``step``,
      ``params`` and ``opt_state`` attributes, concrete or from
      `jax.eval_shape`; its other fields, ``step`` and the non-finite
      counters, are replicated), or a parameter pytree.
    mesh: the `jax.sharding.Mesh`.
    model_axis: a mesh axis to split the cells' gate columns over (see the
      module docstring); None: everything replicated.

  Returns:
    A pytree of `NamedSharding` with ``state``'s structure.

  Raises:
    ValueError: for an unknown axis, or a gate-column axis that does not divide
      over ``model_axis``.

  Example:
    >>> import jax, jaxrnn
    >>> from jaxrnn.sharding import state_shardings
    >>> mesh = jax.make_mesh((1, 1), ("data", "model"))
    >>> params = jaxrnn.gru(4).init(jax.random.key(0), input_size=2)
    >>> sh = state_shardings(params, mesh, model_axis="model")
    >>> sh.w_hh.spec, sh.b_hn.spec
    (P(None, 'model'), P('model',))
  """
  check_mesh(mesh)
  mesh = auto(mesh)
  if model_axis is not None:
    if not isinstance(model_axis, str):
      raise ValueError(f"model_axis={model_axis!r}: expected a mesh axis name (str) or None.")
    axis_size(mesh, model_axis, "model_axis")
  if all(hasattr(state, a) for a in ("step", "params", "opt_state")):
    param_sh = _param_shardings(state.params, mesh, model_axis, "state.params")
    replicated = NamedSharding(mesh, P())
    fields = getattr(type(state), "_fields", ("step", "params", "opt_state"))
    out = {f: jax.tree.map(lambda _: replicated, getattr(state, f)) for f in fields}
    out["params"] = param_sh
    out["opt_state"] = _opt_state_shardings(state.opt_state, state.params, param_sh, mesh)
    return type(state)(**out)
  return _param_shardings(state, mesh, model_axis, "params")


def is_batched(leaf: Any) -> bool:
  return len(getattr(leaf, "shape", ())) >= 1


def batch_shardings(batch: PyTree, mesh: Mesh, data_axis: AxisName = "data") -> PyTree:
  """The `NamedSharding` of every leaf of a batch: leading dimension over ``data_axis``.

  Args:
    batch: a pytree of arrays (concrete, or `jax.ShapeDtypeStruct`).
    mesh: the `jax.sharding.Mesh`.
    data_axis: the mesh axis (or tuple of axes) the batch dimension is split over.

  Returns:
    A pytree of `NamedSharding` with ``batch``'s structure: ``P(data_axis)``
    for leaves of rank >= 1, replicated for scalars.

  Raises:
    ValueError: for an unknown axis, or a leaf whose leading (batch) dimension
      is not a multiple of the data axis size (no silent padding).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxrnn.sharding import batch_shardings
    >>> mesh = jax.make_mesh((1,), ("data",))
    >>> sh = batch_shardings({"x": jnp.ones((4, 3, 2)), "lr": jnp.float32(1.0)}, mesh)
    >>> sh["x"].spec, sh["lr"].spec
    (P('data',), P())
  """
  check_mesh(mesh)
  mesh = auto(mesh)
  size = axis_size(mesh, data_axis, "data_axis")
  spec = P(data_axis)

  def one(path, leaf):
    if not is_batched(leaf):
      return NamedSharding(mesh, P())
    n = leaf.shape[0]
    if n % size:
      raise ValueError(
        f"{pathstr('batch', path)} has batch size {n} (shape {tuple(leaf.shape)}), which does not "
        f"divide over data_axis={data_axis!r} of size {size}; expected a multiple of {size} "
        f"(e.g. {max(size, n - n % size)}). Batches are never padded silently."
      )
    return NamedSharding(mesh, spec)

  return jax.tree_util.tree_map_with_path(one, batch)
