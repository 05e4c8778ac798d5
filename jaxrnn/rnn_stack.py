"""`rnn_layers`: ``torch.nn.LSTM``-like, a `stack` of `recurrent` layers of one cell kind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jaxrnn import cells
from jaxrnn.layers import BIDIRECTIONAL_FLAG_REASON, recurrent, stack
from jaxrnn.layers import bidirectional as _bidirectional  # rnn_layers' keyword shadows it
from jaxrnn.model import SequenceModel, pairs


def rnn_layers(
  kind: str | cells.Cell | Callable[..., cells.Cell],
  hidden_size: int | None = None,
  *,
  num_layers: int = 1,
  bidirectional: bool = False,
  dropout_rate: float = 0.0,
  time_major: bool = False,
  unroll: int | bool | None = None,
  remat: int | bool | None = None,
  impl: str = "auto",
  input_dropout: float = 0.0,
  recurrent_dropout: float = 0.0,
  weight_drop: float = 0.0,
  zoneout: float | dict[str, float] = 0.0,
  **cell_kwargs: Any,
) -> SequenceModel:
  """The torch-like convenience: ``torch.nn.LSTM(...)`` as a jaxrnn `stack`.

  Args:
    kind: the cell of every layer: a built-in cell's name, one of ``jaxrnn.cells.KINDS``
      (``"elman"``, ``"lstm"``, ``"gru"``, ``"layer_norm_lstm"``, ``"mgu"``, ``"slstm"``,
      ...); a factory ``factory(hidden_size, **cell_kwargs) -> Cell`` (a user's too),
      called once per layer; or a `Cell`, used in every layer as it is.
    hidden_size: H of every layer; with a `Cell`, None (its own size) or the size its
      config records.
    num_layers: how many layers to stack.
    bidirectional: each layer is a forward and a reverse pass, concatenated.
    dropout_rate: dropout between layers (see `stack`).
    time_major: ``xs`` is ``(T, *batch, I)`` (PyTorch's ``batch_first=False``).
    unroll, remat, impl: passed to `jaxrnn.scan`, as `recurrent`'s.
    input_dropout, recurrent_dropout, weight_drop, zoneout: every layer's regularizers
      (see `recurrent` and `jaxrnn.regularizers`); each layer and direction draws its own
      masks from its share of ``apply``'s key.
    **cell_kwargs: passed to the cell factory (``activation``, ``proj_size``,
      ``use_bias``, ``forget_bias``, ``recurrent_init``, ``dtype``...).

  Returns:
    A `SequenceModel` (a `stack`): params and carry are tuples over layers,
    each layer's a cell's or, if bidirectional, a `BidirectionalParams` /
    `BidirectionalCarry`.

  Raises:
    ValueError: for an unknown ``kind``, a bad size, a `Cell` with a ``hidden_size``
      its config disagrees with or with ``cell_kwargs``, or a regularizer the cell
      cannot take.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> model = jaxrnn.rnn_layers("lstm", 16, num_layers=2, bidirectional=True,
    ...                           proj_size=8, dropout_rate=0.1)
    >>> params = model.init(jax.random.key(0), input_size=3)
    >>> xs = jnp.ones((4, 10, 3))
    >>> carry, ys = model.apply(params, xs, seq_lengths=jnp.array([10, 7, 3, 0]),
    ...                         deterministic=True)
    >>> ys.shape, carry[1].forward.h.shape, carry[1].forward.c.shape
    ((4, 10, 16), (4, 8), (4, 16))
    >>> mine = jaxrnn.rnn_layers(jaxrnn.gru(6, use_bias=False), num_layers=2)
    >>> mine.apply(mine.init(jax.random.key(1), 3), xs)[1].shape
    (4, 10, 6)
  """
  args = dict(locals())  # first: exactly the arguments
  cells.base.check_positive("num_layers", num_layers)
  layer_cells = _layer_cells(kind, hidden_size, num_layers, cell_kwargs)
  rates = dict(
    input_dropout=input_dropout,
    recurrent_dropout=recurrent_dropout,
    weight_drop=weight_drop,
    zoneout=zoneout,
  )
  for name, rate in rates.items():
    if not rate:
      del args[name]  # only the regularizers set, so that plain models keep their config
  if isinstance(zoneout, dict):
    args["zoneout"] = tuple(sorted(zoneout.items()))
  models = []
  for cell in layer_cells:
    kw = dict(time_major=time_major, unroll=unroll, remat=remat, impl=impl, **rates)
    fwd = recurrent(cell, **kw)
    if bidirectional:
      bwd = recurrent(cell, reverse=True, **kw)
      models.append(_bidirectional(fwd, bwd))
    else:
      models.append(fwd)
  model = stack(models, dropout_rate=dropout_rate)
  settings = {k: args.pop(k) for k in ("unroll", "remat", "impl")}
  del args["cell_kwargs"]  # in cell_config, completed by the cell's factory
  cell = layer_cells[0]
  args.update(kind=cell.name, hidden_size=dict(cell.config).get("hidden_size", hidden_size))
  config = pairs(**args, cell_config=cell.config)
  return SequenceModel.library(
    model.init,
    model.apply,
    model.initial_carry,
    "rnn_layers",
    config,
    step=model.step,
    settings=pairs(**settings),
    no_step=BIDIRECTIONAL_FLAG_REASON if bidirectional else "",
    time_major=bool(time_major),
    parts=(model,),
  )


def _layer_cells(kind: Any, hidden_size: Any, num_layers: int, cell_kwargs: dict) -> list:
  """The cell of each layer, from `rnn_layers`'s ``kind``: a name, a factory or a `Cell`."""
  if isinstance(kind, cells.Cell):
    recorded = dict(kind.config).get("hidden_size")
    if cell_kwargs:
      raise ValueError(
        f"cell keyword arguments {sorted(cell_kwargs)} with a Cell ({kind.name!r}); expected "
        "none: build the cell with them, or pass its factory as kind."
      )
    if hidden_size is not None and hidden_size != recorded:
      said = "records none" if recorded is None else f"records hidden_size={recorded}"
      raise ValueError(
        f"hidden_size={hidden_size!r} with a Cell whose config {said}; expected "
        "hidden_size=None (the cell's own size) or the size it records."
      )
    return [kind] * num_layers
  cells.base.check_positive("hidden_size", hidden_size)
  if isinstance(kind, str):
    if kind not in cells.KINDS:
      raise ValueError(f"kind={kind!r} is not one of {tuple(cells.KINDS)}.")
    return [cells.KINDS[kind].factory(hidden_size, **cell_kwargs)] * num_layers
  if not callable(kind):
    raise ValueError(
      f"kind is a {type(kind).__name__}; expected a cell name from {tuple(cells.KINDS)}, a "
      "cell factory or a jaxrnn.Cell."
    )
  layer_cells = [kind(hidden_size, **cell_kwargs) for _ in range(num_layers)]
  for cell in layer_cells:
    if not isinstance(cell, cells.Cell):
      raise ValueError(f"kind {kind!r} returned a {type(cell).__name__}; expected a jaxrnn.Cell.")
  return layer_cells
