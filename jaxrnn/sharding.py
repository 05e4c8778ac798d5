"""Data and gate-column (model) parallel training on JAX's own SPMD engine.

`make_sharded_train_step` compiles `jaxrnn.train.make_train_step`'s step with
`jax.jit` and explicit ``in_shardings``/``out_shardings`` over a
`jax.sharding.Mesh`; XLA's partitioner inserts every collective (the gradient
all-reduce over the data axis, the gathers around gate-sharded matmuls). There
is no ``pmap``, no ``shard_map`` and no hand-written ``psum``: the loss is a
mean over the global batch, so the sharded program computes the same numbers
as one device does (up to float summation order, well within 1e-5).

Layout:

- The batch: every leaf of rank >= 1 is split along its leading (batch)
  dimension over ``data_axis``; scalars (and a scalar PRNG key) are replicated.
  A batch whose size does not divide over the data axis is an error, never
  padded.
- The parameters and the optimizer state: replicated, unless ``model_axis`` is
  given. Then the leaves that a cell's params type declares in its
  ``gate_columns`` (for `jaxrnn.LSTMParams`, `jaxrnn.GRUParams` and
  `jaxrnn.ElmanParams`: ``w_ih``, ``w_hh``, ``b``, and the GRU's ``b_hn``; a
  user's params type may declare its own, and one that declares none stays
  replicated) are split along their last axis, the gate-column axis of size
  ``G * H`` (G = 4 gates ``[i, f, g, o]`` for the LSTM, 3 ``[r, z, n]`` for the
  GRU, 1 for the Elman RNN; ``b_hn`` has H), over ``model_axis``. Everything
  else (readouts, ``w_proj``, the step counter) is replicated. The optimizer
  state's shardings are derived from the parameters': every subtree of the
  state that has the parameters' tree structure and leaf shapes (Adam's ``mu``
  and ``nu``, momentum traces, ...) gets the parameters' shardings, every other
  leaf (counts, schedules' state) is replicated.

On gate columns: with k devices on the model axis, device j holds the
contiguous columns ``[j * G*H/k, (j+1) * G*H/k)``, which must be a whole
number, so ``G * H`` (and H for ``b_hn``) must be divisible by k (checked, a
`ValueError` otherwise). The gates are concatenated along that axis, so a
device holds whole gates when k divides G (an LSTM on 2 devices: ``[i, f]`` on
one, ``[g, o]`` on the other) and a slice of one gate when G divides k and
k / G divides H; otherwise its block straddles a gate boundary. A device holds
a slice of *every* gate only with an interleaved ``(P, G, H)`` layout, which
the cells' concatenated ``(P, G*H)`` layout is not. So the elementwise gate
arithmetic, and the next step's ``h @ w_hh``, need data from the other model
shards: XLA inserts those collectives inside the time loop. That is correct
(the numbers equal one device's within 1e-5) but communicates every time step,
so model sharding pays off only for large H; data parallelism is the first
choice.

Multi-host: one process per host runs the same script. Each first calls
``jax.distributed.initialize(coordinator_address="HOST0:PORT",
num_processes=N, process_id=i)`` (SLURM, Open MPI and TPU pods are detected
without arguments), then builds the mesh over all hosts' devices with
``jax.make_mesh(..., devices=jax.devices())``, builds the same initial state
from the same seed (`shard_state` places it, checking that the processes
agree), and feeds only its own rows of each global batch, ``rows =
process_batch_rows(mesh, global_batch_size)``, with ``shard_batch(local_batch,
mesh, process_local=True)``, which calls `jax.make_array_from_process_local_data`.
Everything else is unchanged.

Example:
  >>> import jax, jax.numpy as jnp, optax, jaxrnn
  >>> from jaxrnn.sharding import make_sharded_train_step, shard_batch, shard_state
  >>> from jaxrnn.train import TrainState
  >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
  >>> cell = jaxrnn.lstm(8)
  >>> def loss_fn(params, batch):
  ...   _, ys = jaxrnn.scan(cell, params, batch["x"])
  ...   return jnp.mean((ys[:, -1, 0] - batch["y"]) ** 2)
  >>> opt = optax.adam(1e-2)
  >>> state = shard_state(TrainState.create(cell.init(jax.random.key(0), 2), opt), mesh)
  >>> step = make_sharded_train_step(loss_fn, opt, mesh)
  >>> batch = shard_batch({"x": jnp.ones((8, 5, 2)), "y": jnp.zeros(8)}, mesh)
  >>> state, metrics = step(state, batch)
  >>> int(state.step), state.params.w_hh.shape, batch["x"].sharding.spec
  (1, (8, 32), P('data',))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrnn.cells.base import PyTree
from jaxrnn.leaf_shardings import (
  AxisName,
  auto,
  axis_names,
  axis_size,
  batch_shardings,
  check_mesh,
  is_batched,
  pathstr,
  state_shardings,
)
from jaxrnn.train import TrainState, make_train_step

__all__ = [
  "batch_shardings",
  "make_sharded_train_step",
  "process_batch_rows",
  "shard_batch",
  "shard_state",
  "state_shardings",
]


def shard_batch(
  batch: PyTree, mesh: Mesh, data_axis: AxisName = "data", *, process_local: bool = False
) -> PyTree:
  """Places a batch on the mesh, split along its leading dimension over ``data_axis``.

  Args:
    batch: a pytree of arrays. With ``process_local=False`` it is the global
      batch (on one host: the whole batch). With ``process_local=True`` it is
      this process's rows only, ``global_batch[process_batch_rows(mesh, n)]``
      (`jax.make_array_from_process_local_data` assembles the global batch).
    mesh: the `jax.sharding.Mesh`.
    data_axis: the mesh axis (or tuple of axes) of the batch dimension.
    process_local: see ``batch``; what each host passes in a multi-host run.

  Returns:
    The batch as global `jax.Array` s with the shardings of `batch_shardings`.

  Raises:
    ValueError: for an unknown axis, or a (global) batch size that is not a
      multiple of the data axis size.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxrnn.sharding import shard_batch
    >>> mesh = jax.make_mesh((1,), ("data",))
    >>> batch = shard_batch({"x": jnp.ones((4, 3, 2))}, mesh)
    >>> batch["x"].sharding.spec, batch["x"].addressable_shards[0].data.shape
    (P('data',), (4, 3, 2))
  """
  check_mesh(mesh)
  if not process_local:
    return jax.device_put(batch, batch_shardings(batch, mesh, data_axis))
  mesh = auto(mesh)
  size = axis_size(mesh, data_axis, "data_axis")
  shards = _process_data_shards(mesh, data_axis)
  spec = NamedSharding(mesh, P(data_axis))

  def one(path, leaf):
    if not is_batched(leaf):
      return jax.device_put(leaf, NamedSharding(mesh, P()))
    n = leaf.shape[0]
    if n % len(shards):
      raise ValueError(
        f"{pathstr('batch', path)} has {n} rows in this process, which holds {len(shards)} of the "
        f"{size} shards of data_axis={data_axis!r}; expected a multiple of {len(shards)}."
      )
    global_shape = (n // len(shards) * size,) + tuple(leaf.shape[1:])
    return jax.make_array_from_process_local_data(spec, leaf, global_shape)

  return jax.tree_util.tree_map_with_path(one, batch)


def _process_data_shards(mesh: Mesh, data_axis: AxisName) -> list[int]:
  """The indices of the data-axis shards that this process's devices hold, sorted."""
  size = axis_size(mesh, data_axis, "data_axis")
  index_map = NamedSharding(mesh, P(data_axis)).addressable_devices_indices_map((size,))
  return sorted({idx[0].indices(size)[0] for idx in index_map.values()})


def process_batch_rows(mesh: Mesh, global_batch_size: int, data_axis: AxisName = "data") -> slice:
  """The rows of the global batch that this process feeds (``shard_batch(process_local=True)``).

  On one host it is every row. With several hosts each process loads only
  ``global_batch[process_batch_rows(mesh, global_batch_size)]``.

  Args:
    mesh: the `jax.sharding.Mesh` over every process's devices.
    global_batch_size: the batch size summed over all processes.
    data_axis: the mesh axis (or tuple of axes) of the batch dimension.

  Returns:
    A ``slice`` of the global batch's rows.

  Raises:
    ValueError: if ``global_batch_size`` is not a multiple of the data axis
      size, or this process's shards are not contiguous in the mesh (then
      build the mesh with ``jax.make_mesh``, which orders devices by process).

  Example:
    >>> import jax
    >>> from jaxrnn.sharding import process_batch_rows
    >>> process_batch_rows(jax.make_mesh((1,), ("data",)), 32)
    slice(0, 32, None)
  """
  check_mesh(mesh)
  mesh = auto(mesh)
  size = axis_size(mesh, data_axis, "data_axis")
  if isinstance(global_batch_size, bool) or not isinstance(global_batch_size, int):
    raise ValueError(f"global_batch_size={global_batch_size!r}: expected an int.")
  if global_batch_size <= 0 or global_batch_size % size:
    raise ValueError(
      f"global_batch_size={global_batch_size} does not divide over data_axis={data_axis!r} of "
      f"size {size}; expected a positive multiple of {size}."
    )
  shards = _process_data_shards(mesh, data_axis)
  if shards != list(range(shards[0], shards[-1] + 1)):
    raise ValueError(
      f"this process holds the non-contiguous data shards {shards}; expected a contiguous "
      "range (make the mesh with jax.make_mesh over jax.devices())."
    )
  per_shard = global_batch_size // size
  return slice(shards[0] * per_shard, (shards[-1] + 1) * per_shard)


def shard_state(state: PyTree, mesh: Mesh, *, model_axis: str | None = None) -> PyTree:
  """Places a train state (or bare parameters) on the mesh with `state_shardings`.

  Every process of a multi-host run must pass the same values (build them
  from the same seed).

  Args:
    state: a `jaxrnn.train.TrainState` or a parameter pytree.
    mesh: the `jax.sharding.Mesh`.
    model_axis: split the cells' gate columns over this mesh axis; None: replicate.

  Returns:
    ``state`` with every leaf a `jax.Array` laid out on ``mesh``.

  Raises:
    ValueError: as `state_shardings`.

  Example:
    >>> import jax, jaxrnn
    >>> from jaxrnn.sharding import shard_state
    >>> mesh = jax.make_mesh((1, 1), ("data", "model"))
    >>> params = shard_state(jaxrnn.lstm(4).init(jax.random.key(0), 2), mesh, model_axis="model")
    >>> params.w_hh.sharding.spec, params.w_hh.addressable_shards[0].data.shape
    (P(None, 'model'), (4, 16))
  """
  return jax.device_put(state, state_shardings(state, mesh, model_axis=model_axis))


def make_sharded_train_step(
  loss_fn: Callable[..., Any],
  optimizer: optax.GradientTransformation,
  mesh: Mesh,
  *,
  data_axis: AxisName = "data",
  model_axis: str | None = None,
  max_grad_norm: float | None = 1.0,
  has_aux: bool = False,
  donate: bool = False,
) -> Callable[[TrainState, PyTree], tuple[TrainState, dict[str, jax.Array]]]:
  """`jaxrnn.train.make_train_step`, compiled for a mesh: ``step(state, batch)``.

  The step is ``make_train_step(loss_fn, optimizer, jit=False, ...)`` under
  `jax.jit` with ``in_shardings=(state_shardings(state), batch_shardings(batch))``
  and ``out_shardings=(state_shardings(state), replicated)``, so the state keeps
  its layout from step to step and XLA inserts the collectives. The shardings
  depend on the state's and the batch's structure and shapes, so they are
  built (and the step compiled) on the first call with each new structure.
  ``loss_fn`` must average over the batch, as for one device; then the
  metrics and the new state equal one device's up to float summation order.

  Inputs that are not yet laid out as required are placed on the call (a
  no-op for the step's own outputs); on one host a NumPy or single-device
  batch is split over the data axis. In a multi-host run pass the batch from
  ``shard_batch(local_batch, mesh, process_local=True)``.

  Args:
    loss_fn: ``loss_fn(params, batch) -> loss`` (a mean over the batch), or
      ``-> (loss, aux)`` with ``has_aux``.
    optimizer: an ``optax.GradientTransformation``.
    mesh: the `jax.sharding.Mesh`; its axes are used as ``AxisType.Auto``
      (XLA's partitioner decides) whatever type they were made with.
    data_axis: the mesh axis (or tuple of axes) the batch is split over.
    model_axis: None (parameters replicated: data parallelism), or the mesh
      axis the cells' ``w_ih``, ``w_hh``, ``b``, ``b_hn`` and their optimizer
      state are split over along the gate-column (last) axis; see the module
      docstring for the layout and its cost.
    max_grad_norm: global-norm gradient clipping; None: none.
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
    donate: donate the input state's buffers (it must not be used afterwards).

  Returns:
    ``step(state, batch) -> (state, metrics)`` as `make_train_step`'s, with
    ``step.lower(state, batch)`` giving the `jax.stages.Lowered` program (its
    ``.compile().as_text()`` shows the collectives XLA inserted).

  Raises:
    ValueError: at once for a non-mesh, an axis the mesh lacks, the same axis
      for data and model, a bad optimizer or ``max_grad_norm``; on the call,
      for a batch whose size does not divide over the data axis or gate
      columns that do not divide over the model axis.

  Example:
    >>> import jax, jax.numpy as jnp, optax, jaxrnn
    >>> from jaxrnn.sharding import make_sharded_train_step
    >>> from jaxrnn.train import TrainState
    >>> mesh = jax.make_mesh((1, 1), ("data", "model"))
    >>> cell = jaxrnn.gru(6)
    >>> def loss_fn(params, batch):
    ...   _, ys = jaxrnn.scan(cell, params, batch)
    ...   return jnp.mean(ys ** 2)
    >>> opt = optax.sgd(0.1, momentum=0.9)
    >>> state = TrainState.create(cell.init(jax.random.key(0), 3), opt)
    >>> step = make_sharded_train_step(loss_fn, opt, mesh, model_axis="model")
    >>> state, metrics = step(state, jnp.ones((4, 5, 3)))
    >>> state.params.w_hh.sharding.spec, state.opt_state[0].trace.w_hh.sharding.spec
    (P(None, 'model'), P(None, 'model'))
  """
  mesh = _check_axes(mesh, data_axis, model_axis)
  raw_step = make_train_step(
    loss_fn, optimizer, max_grad_norm=max_grad_norm, has_aux=has_aux, jit=False
  )
  compiled: dict[Any, tuple[Any, Any, Any]] = {}

  def place(state, batch):
    """The step compiled for this structure, and the state and batch laid out for it."""
    key = (_signature(state), _signature(batch))
    if key not in compiled:
      compiled[key] = _compile(raw_step, state, batch, mesh, data_axis, model_axis, donate)
    fn, state_sh, batch_sh = compiled[key]
    state = jax.device_put(state, state_sh)  # returns arrays already laid out as they are
    if mesh.is_multi_process:
      return fn, state, batch
    return fn, state, jax.device_put(batch, batch_sh)

  def step(state: TrainState, batch: PyTree):
    fn, state, batch = place(state, batch)
    return fn(state, batch)

  def lower(state: TrainState, batch: PyTree):
    fn, state, batch = place(state, batch)
    return fn.lower(state, batch)

  step.lower = lower
  return step


def _check_axes(mesh: Any, data_axis: AxisName, model_axis: str | None) -> Mesh:
  """The mesh with Auto axes, after checking that it has both axes and they differ."""
  check_mesh(mesh)
  mesh = auto(mesh)
  data_names = axis_names(data_axis, "data_axis")
  axis_size(mesh, data_axis, "data_axis")
  if model_axis is not None:
    if not isinstance(model_axis, str):
      raise ValueError(f"model_axis={model_axis!r}: expected a mesh axis name (str) or None.")
    axis_size(mesh, model_axis, "model_axis")
    if model_axis in data_names:
      raise ValueError(
        f"model_axis={model_axis!r} is also in data_axis={data_axis!r}; expected different "
        f"mesh axes (the mesh has {mesh.axis_names})."
      )
  return mesh


def _signature(tree: PyTree) -> tuple[Any, ...]:
  """What the shardings depend on: the tree structure and every leaf's shape and dtype."""
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, tuple(
    (tuple(getattr(x, "shape", ())), str(getattr(x, "dtype", ""))) for x in leaves
  )


def _compile(raw_step, state, batch, mesh, data_axis, model_axis, donate) -> tuple[Any, Any, Any]:
  """``raw_step`` under `jax.jit` with the state's and the batch's shardings; and those."""
  if not all(hasattr(state, a) for a in ("step", "params", "opt_state")):
    raise ValueError(
      f"state is a {type(state).__name__}; expected a jaxrnn.train.TrainState "
      "(TrainState.create(params, optimizer))."
    )
  state_sh = state_shardings(state, mesh, model_axis=model_axis)
  batch_sh = batch_shardings(batch, mesh, data_axis)
  # The raw step returns a jaxrnn TrainState whatever type of state came in.
  replicated = NamedSharding(mesh, P())
  out_sh = TrainState(**{f: getattr(state_sh, f, replicated) for f in TrainState._fields})
  fn = jax.jit(
    raw_step,
    in_shardings=(state_sh, batch_sh),
    out_shardings=(out_sh, NamedSharding(mesh, P())),
    donate_argnums=(0,) if donate else (),
  )
  return fn, state_sh, batch_sh
