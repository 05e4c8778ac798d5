"""Sequence models: a cell over time, bidirectional pairs, stacks with dropout between layers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn import cells, regularizers
from jaxrnn.cells.base import PyTree
from jaxrnn.model import SequenceModel, apply_options, pairs
from jaxrnn.scan import IMPLS, scan


class BidirectionalParams(NamedTuple):
  """Parameters of a `bidirectional` layer."""

  forward: PyTree
  backward: PyTree


class BidirectionalCarry(NamedTuple):
  """Carry of a `bidirectional` layer: each direction's own carry."""

  forward: PyTree
  backward: PyTree


def recurrent(
  cell: cells.Cell,
  *,
  reverse: bool = False,
  time_major: bool = False,
  unroll: int | bool | None = None,
  remat: int | bool | None = None,
  impl: str = "auto",
  input_dropout: float = 0.0,
  recurrent_dropout: float = 0.0,
  weight_drop: float = 0.0,
  zoneout: float | dict[str, float] = 0.0,
) -> SequenceModel:
  """A cell over time as a sequence model; ``apply`` is `jaxrnn.scan`, ``step`` the cell's.

  Args:
    cell: a `Cell`.
    reverse: read each sequence's valid part backwards (see `jaxrnn.scan`).
    time_major: ``xs`` is ``(T, *batch, I)`` instead of ``(*batch, T, I)``.
    unroll: passed to `jaxrnn.scan` (None: the backend's measured default).
    remat: passed to `jaxrnn.scan` (gradient checkpointing every ``remat`` steps).
    impl: passed to `jaxrnn.scan`: ``"auto"``, ``"step"`` or ``"fused"``.
    input_dropout: variational dropout on the inputs, one mask per row.
    recurrent_dropout: variational dropout on ``h`` entering the recurrent product.
    weight_drop: DropConnect on the recurrent weights, one mask per forward pass.
    zoneout: a rate for ``h`` and ``c``, or ``{"h": rate, "c": rate}``. Rates lie in
      ``[0, 1)``; ``apply`` then needs a ``key`` unless ``deterministic`` (see
      `jaxrnn.regularizers` for the exact semantics).

  Returns:
    A `SequenceModel` whose params and carry are the cell's; its ``step`` is the
    cell's step (with zoneout's expected mask), or None if ``reverse``. Its ``apply``
    takes `jaxrnn.scan`'s ``reset_carry`` and ``return_carries`` (every step's carry,
    ``(carry, ys, carries)``; with ``reverse``, the carry after reading step t in
    reverse order).

  Raises:
    ValueError: a bad ``impl`` or rate, or recurrent dropout or weight drop on a
      cell without recurrent weights (minGRU, minLSTM).

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> model = jaxrnn.recurrent(jaxrnn.gru(8), recurrent_dropout=0.25, zoneout=0.1)
    >>> params = model.init(jax.random.key(0), input_size=3)
    >>> carry, ys = model.apply(params, jnp.ones((2, 5, 3)), key=jax.random.key(1))
    >>> ys.shape
    (2, 5, 8)
    >>> _, _, carries = model.apply(params, jnp.ones((2, 5, 3)), deterministic=True,
    ...                             return_carries=True)
    >>> carries.h.shape                             # the carry after every step
    (2, 5, 8)
  """
  if not isinstance(cell, cells.Cell):
    raise ValueError(f"cell must be a jaxrnn.Cell, got {type(cell).__name__}.")
  if impl not in IMPLS:
    raise ValueError(f"impl={impl!r} is not one of {IMPLS}.")
  rates = regularizers.check(
    cell.name,
    lambda: _params_type(cell),
    zoneout,
    input_dropout=input_dropout,
    recurrent_dropout=recurrent_dropout,
    weight_drop=weight_drop,
  )
  _check_zoneout(cell, rates, zoneout)
  settings = pairs(unroll=unroll, remat=remat, impl=impl)
  apply = _scan_apply(cell, rates, settings, reverse, time_major)
  config = pairs(cell=cell.name, cell_config=cell.config, reverse=reverse, time_major=time_major)
  config = tuple(sorted(config + rates))  # only the rates set: plain layers keep their config
  zoned = dict(rates).get("zoneout")
  step = cell.step if not zoned else regularizers.zoned_step(cell.step, zoned)
  return SequenceModel.library(
    cell.init,
    apply,
    cell.initial_carry,
    "recurrent",
    config,
    step=None if reverse else step,
    settings=settings,
    no_step=REVERSE_REASON if reverse else "",
    time_major=bool(time_major),
    parts=(cell,),
  )


def _check_zoneout(cell: cells.Cell, rates: tuple, zoneout: Any) -> None:
  """Zoneout outputs the zoned ``h``: refused where the cell's output is not its ``h``."""
  if dict(rates).get("zoneout") and not _output_is_hidden(cell):
    raise ValueError(
      f"zoneout={zoneout!r}: the {cell.name!r} cell's output is a readout of its state (it "
      "declares `readout`, or its params type `output_is_hidden = False`); expected a cell "
      "whose output is its hidden state, or zoneout=0."
    )


def _scan_apply(cell: cells.Cell, rates: tuple, settings: tuple, reverse: bool, time_major: bool):
  """`recurrent`'s ``apply``: `jaxrnn.scan` of ``cell``, with the regularizers' masks drawn."""

  def apply(
    params,
    xs,
    carry=None,
    *,
    seq_lengths=None,
    resets=None,
    key=None,
    deterministic=False,
    reset_carry=None,
    return_carries=False,
  ):
    kw = dict(reverse=reverse, time_major=time_major, **dict(settings))
    kw.update(resets=resets, reset_carry=reset_carry, return_carries=return_carries)
    if rates:
      xs = jnp.asarray(xs) if not isinstance(xs, jax.Array | jax.core.Tracer) else xs
      params, xs, kw["noise"] = regularizers.draw(
        cell, rates, params, xs, key, deterministic, time_major
      )
    return scan(cell, params, xs, carry, seq_lengths=seq_lengths, **kw)

  return apply


def _output_is_hidden(cell: cells.Cell) -> bool:
  """Whether ``cell``'s output is its carry's ``h`` (what zoneout outputs): not where the
  cell declares a ``readout``, or its params type ``output_is_hidden = False`` (Mamba's)."""
  return cell.readout is None and getattr(_params_type(cell), "output_is_hidden", True)


def _params_type(cell: cells.Cell) -> type:
  """The type of ``cell``'s params, traced from its ``init`` (no FLOPs)."""
  return type(jax.eval_shape(lambda: cell.init(jax.random.key(0), 1)))


REVERSE_REASON = (
  "reads in reverse (reverse=True), which needs the whole sequence first; expected a "
  "forward-only model (reverse=False)."
)
BIDIRECTIONAL_REASON = (
  "is bidirectional, and its backward pass needs the whole sequence first; expected a "
  "forward-only model."
)
BIDIRECTIONAL_FLAG_REASON = (
  "is bidirectional (bidirectional=True), and its backward pass needs the whole sequence "
  "first; expected bidirectional=False."
)


def bidirectional(forward: SequenceModel, backward: SequenceModel) -> SequenceModel:
  """Runs two sequence models on the same input and concatenates their outputs.

  The ``backward`` model should read in reverse (``recurrent(cell, reverse=True)``);
  its outputs are already aligned in time with the forward ones, on padded
  batches too, so ``ys[..., t, :]`` is ``[forward_t, backward_t]``.

  Args:
    forward: a `SequenceModel`.
    backward: a `SequenceModel` with the same ``time_major``.

  Returns:
    A `SequenceModel` with `BidirectionalParams` and `BidirectionalCarry`,
    outputs ``(..., F_forward + F_backward)``. With ``return_carries=True`` its
    ``apply`` returns ``(carry, ys, carries)``, ``carries`` a `BidirectionalCarry` of
    each direction's own: the forward one's at t after reading steps 0..t, the
    backward one's after reading steps ``T_b - 1`` down to t (its own order; past a
    row's length, its initial carry). ``reset_carry`` is a `BidirectionalCarry` too.

  Raises:
    ValueError: if the two disagree on ``time_major``.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> cell = jaxrnn.lstm(4)
    >>> model = jaxrnn.bidirectional(
    ...     jaxrnn.recurrent(cell), jaxrnn.recurrent(cell, reverse=True))
    >>> params = model.init(jax.random.key(0), input_size=3)
    >>> carry, ys = model.apply(params, jnp.ones((2, 5, 3)))
    >>> ys.shape, carry.backward.c.shape
    ((2, 5, 8), (2, 4))
  """
  for m in (forward, backward):
    if not isinstance(m, SequenceModel):
      raise ValueError(f"expected a jaxrnn.SequenceModel, got {type(m).__name__}.")
  if forward.time_major != backward.time_major:
    raise ValueError(
      f"forward has time_major={forward.time_major} but backward has "
      f"time_major={backward.time_major}; they must agree."
    )

  def init(key, input_size):
    k_f, k_b = jax.random.split(key)
    return BidirectionalParams(forward.init(k_f, input_size), backward.init(k_b, input_size))

  def initial_carry(params, batch_shape=()):
    return BidirectionalCarry(
      forward.initial_carry(params.forward, batch_shape),
      backward.initial_carry(params.backward, batch_shape),
    )

  apply = _bidirectional_apply(forward, backward)

  config = pairs(
    forward=(forward.name, forward.config),
    backward=(backward.name, backward.config),
    time_major=forward.time_major,
  )
  settings = pairs(forward=forward.settings, backward=backward.settings)
  return SequenceModel.library(
    init,
    apply,
    initial_carry,
    "bidirectional",
    config,
    settings=settings,
    no_step=BIDIRECTIONAL_REASON,
    time_major=forward.time_major,
    parts=(forward, backward),
  )


def _bidirectional_apply(forward: SequenceModel, backward: SequenceModel):
  """`bidirectional`'s ``apply``: both directions on the same ``xs``, outputs concatenated."""

  def apply(
    params,
    xs,
    carry=None,
    *,
    seq_lengths=None,
    resets=None,
    key=None,
    deterministic=False,
    reset_carry=None,
    return_carries=False,
  ):
    carry = BidirectionalCarry(None, None) if carry is None else carry
    restart = BidirectionalCarry(None, None) if reset_carry is None else reset_carry
    k_f = k_b = None
    if key is not None:
      k_f, k_b = jax.random.split(key)
    outs = []
    for m, p, c, r, k in zip((forward, backward), params, carry, restart, (k_f, k_b), strict=True):
      opts = apply_options(m, resets=resets, reset_carry=r, return_carries=return_carries)
      outs.append(
        m.apply(p, xs, c, seq_lengths=seq_lengths, key=k, deterministic=deterministic, **opts)
      )
    (c_f, y_f, *all_f), (c_b, y_b, *all_b) = outs
    carry, ys = BidirectionalCarry(c_f, c_b), jnp.concatenate([y_f, y_b], axis=-1)
    return (carry, ys, BidirectionalCarry(*all_f, *all_b)) if return_carries else (carry, ys)

  return apply


def _output_size(model: SequenceModel, params: PyTree, input_size: int) -> int:
  """The feature size of ``model``'s outputs, found abstractly (no FLOPs)."""
  leaves = jax.tree.leaves(params)
  dtype = leaves[0].dtype if leaves else jnp.float32
  probe = jax.ShapeDtypeStruct((1, input_size), dtype)
  out = jax.eval_shape(lambda p, x: model.apply(p, x, deterministic=True)[1], params, probe)
  return int(out.shape[-1])


def dropout(key: jax.Array, rate: float, x: jax.Array) -> jax.Array:
  """Inverted dropout: zeroes each entry with probability ``rate``, scales the rest."""
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def stack(layers: Sequence[SequenceModel], *, dropout_rate: float = 0.0) -> SequenceModel:
  """Layers applied in turn, each reading the previous one's outputs.

  Dropout (as in ``torch.nn.LSTM(dropout=...)``) is applied to the outputs of
  every layer but the last, with an explicit ``key``. ``apply(...,
  deterministic=True)`` turns it off for evaluation; with ``dropout_rate > 0``
  and ``deterministic=False`` a ``key`` is required.

  Args:
    layers: one or more `SequenceModel` with the same ``time_major``.
    dropout_rate: probability in ``[0, 1)`` of zeroing an output between layers.

  Returns:
    A `SequenceModel` whose params and carry are tuples with one entry per layer.
    With ``return_carries=True`` its ``apply`` returns ``(carry, ys, carries)``,
    ``carries`` a tuple of each layer's carries after every step (the structure of the
    carry, each leaf with a time axis where ``ys`` has it); ``reset_carry`` is a tuple
    with one carry per layer. A layer whose ``apply`` lacks an option that is asked
    for raises a `ValueError` naming it.

  Raises:
    ValueError: for no layers, a rate outside ``[0, 1)``, mixed layouts, or a
      missing key when dropout is active.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> model = jaxrnn.stack([jaxrnn.recurrent(jaxrnn.lstm(8)),
    ...                       jaxrnn.recurrent(jaxrnn.gru(4))], dropout_rate=0.5)
    >>> params = model.init(jax.random.key(0), input_size=3)
    >>> carry, ys = model.apply(params, jnp.ones((2, 5, 3)), key=jax.random.key(1))
    >>> ys.shape, len(carry)
    ((2, 5, 4), 2)
  """
  layers = tuple(layers)
  time_major = _check_stack(layers, dropout_rate)

  def init(key, input_size):
    cells.base.check_input_size(input_size)
    params = []
    for model, k in zip(layers, jax.random.split(key, len(layers)), strict=True):
      p = model.init(k, input_size)
      params.append(p)
      input_size = _output_size(model, p, input_size)
    return tuple(params)

  def initial_carry(params, batch_shape=()):
    _check_layers("params", params, len(layers))
    return tuple(m.initial_carry(p, batch_shape) for m, p in zip(layers, params, strict=True))

  def apply(
    params,
    xs,
    carry=None,
    *,
    seq_lengths=None,
    resets=None,
    key=None,
    deterministic=False,
    reset_carry=None,
    return_carries=False,
  ):
    _check_layers("params", params, len(layers))
    carry = _per_layer("carry", carry, len(layers))
    restart = _per_layer("reset_carry", reset_carry, len(layers))
    active, keys = _stack_keys(key, len(layers), dropout_rate, deterministic)
    new_carry, carries = [], []
    for i, (model, p, c, r) in enumerate(zip(layers, params, carry, restart, strict=True)):
      kw = dict(seq_lengths=seq_lengths, key=keys[2 * i], deterministic=deterministic)
      kw.update(apply_options(model, resets=resets, reset_carry=r, return_carries=return_carries))
      c, xs, *every = model.apply(p, xs, c, **kw)
      new_carry.append(c)
      carries += every
      if active and i < len(layers) - 1:
        xs = dropout(keys[2 * i + 1], dropout_rate, xs)
    return (tuple(new_carry), xs, tuple(carries)) if return_carries else (tuple(new_carry), xs)

  config = pairs(
    layers=tuple((m.name, m.config) for m in layers),
    dropout_rate=dropout_rate,
    time_major=time_major,
  )
  step, no_step = _stack_step(layers)
  return SequenceModel.library(
    init,
    apply,
    initial_carry,
    "stack",
    config,
    step=step,
    settings=pairs(layers=tuple(m.settings for m in layers)),
    no_step=no_step,
    time_major=time_major,
    parts=layers,
  )


def _stack_keys(key: Any, n: int, dropout_rate: float, deterministic: bool) -> tuple[bool, Any]:
  """Whether a stack of ``n`` layers drops out between them, and two keys per layer."""
  active = dropout_rate > 0.0 and not deterministic and n > 1
  if active and key is None:
    raise ValueError(
      f"dropout_rate={dropout_rate} needs a key: pass key=... to train, or "
      "deterministic=True to evaluate without dropout."
    )
  return active, jax.random.split(key, 2 * n) if key is not None else [None] * 2 * n


def _per_layer(what: str, tree: Any, n: int) -> Any:
  """A stack's per-layer ``carry`` or ``reset_carry``: None for every layer if None."""
  if tree is None:
    return (None,) * n
  _check_layers(what, tree, n)
  return tree


def _check_stack(layers: tuple[SequenceModel, ...], dropout_rate: Any) -> bool:
  """Eager checks of `stack`'s arguments; returns the layers' common ``time_major``."""
  if not layers:
    raise ValueError("stack needs at least one layer, got none.")
  for m in layers:
    if not isinstance(m, SequenceModel):
      raise ValueError(f"expected a jaxrnn.SequenceModel, got {type(m).__name__}.")
  if not isinstance(dropout_rate, int | float) or not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f"dropout_rate={dropout_rate!r}: expected a number in [0, 1).")
  layouts = {m.time_major for m in layers}
  if len(layouts) > 1:
    raise ValueError("the layers of a stack disagree on time_major.")
  return layouts.pop()


def _check_layers(what: str, tree: Any, n: int) -> None:
  """``tree`` must be a plain tuple (or list) with one entry per layer."""
  if type(tree) not in (tuple, list):
    raise ValueError(
      f"{what} is a {type(tree).__name__}; expected a tuple of {n} per-layer {what} "
      f"(one per layer of the stack)."
    )
  if len(tree) != n:
    raise ValueError(f"{what} has {len(tree)} layers; this stack has {n}.")


def _stack_step(layers: tuple[SequenceModel, ...]):
  """The stack's one step (each layer's step in turn), or None and the reason."""
  for i, m in enumerate(layers):
    if m.step is None:
      return None, f"has layer {i}, which {m.no_step or 'cannot step (its step is None).'}"
  steps = [m.step for m in layers]

  def step(params, carry, x):
    _check_layers("params", params, len(steps))
    _check_layers("carry", carry, len(steps))
    new_carry = []
    for layer_step, p, c in zip(steps, params, carry, strict=True):
      c, x = layer_step(p, c, x)
      new_carry.append(c)
    return tuple(new_carry), x

  return step, ""
