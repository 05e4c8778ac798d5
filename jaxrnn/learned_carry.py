"""`learned_initial_carry`: a sequence model whose initial carry is a trained parameter."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn import cells
from jaxrnn.cells.base import PyTree
from jaxrnn.model import SequenceModel, apply_options, pairs


class LearnedCarryParams(NamedTuple):
  """Params of a `learned_initial_carry` model: the wrapped model's, and its initial carry.

  Attributes:
    model: the wrapped model's params.
    carry: the learned initial carry, unbatched (leaves ``(F,)``, the wrapped model's
      ``initial_carry(params, ())``), broadcast to every row.
  """

  model: PyTree
  carry: PyTree


def learned_initial_carry(model: SequenceModel) -> SequenceModel:
  """``model`` with a trainable initial carry (R2D2's and several POPGym baselines').

  The new model's params are `LearnedCarryParams` ``(model, carry)``, ``carry``
  initialised from ``model.initial_carry`` (zeros for the built-in cells) and trained
  like any other param. Its ``initial_carry(params, batch_shape)`` broadcasts the
  learned carry to the batch, and it is where every path starts and restarts: ``apply``
  without a ``carry``, and every reset, in ``apply(..., resets=)`` (passed to the
  wrapped model as ``reset_carry``), in `jaxrnn.stream`'s ``step(..., reset)`` and in a
  `jaxrnn.export` artifact's ``step`` and ``apply``. A reset sends its gradient into
  the learned carry. Every leaf of the carry is learned (recurrentgemma's ``start`` flag
  of `jaxrnn.rg_lru` too: keep ``segment_start="restart"`` there).

  Args:
    model: a `SequenceModel` (`recurrent`, `stack`, `bidirectional`, `rnn_layers` or a
      user's); for ``resets`` its ``apply`` must take ``reset_carry``, as jaxrnn's do.
      ``xs`` needs a feature axis: ``(*batch, T, I)`` (``(T, *batch, I)`` if time-major).

  Returns:
    A `SequenceModel` named ``"learned_initial_carry"``, with the wrapped model's
    ``step`` (None where it has none), ``time_major`` and settings, and
    ``config = (("model", (name, config)),)``, so checkpoints and artifacts record
    and check it.

  Raises:
    ValueError: if ``model`` is not a `SequenceModel`.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> model = jaxrnn.learned_initial_carry(jaxrnn.rnn_layers("gru", 4))
    >>> params = model.init(jax.random.key(0), input_size=3)
    >>> params.carry[0].h.shape                     # one layer's unbatched carry, zeros
    (4,)
    >>> params = params._replace(carry=(jaxrnn.HiddenCarry(jnp.ones(4)),))
    >>> model.initial_carry(params, (2,))[0].h.tolist()
    [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]
    >>> resets = jnp.array([[False, False, True]])  # restarts at t=2 to the learned carry
    >>> _, ys = model.apply(params, jnp.ones((1, 3, 3)), resets=resets)
    >>> _, y0 = model.apply(params, jnp.ones((1, 1, 3)))
    >>> bool(jnp.allclose(ys[:, 2], y0[:, 0]))
    True
  """
  if not isinstance(model, SequenceModel):
    raise ValueError(
      "learned_initial_carry: expected a jaxrnn.SequenceModel (for a Cell, "
      f"jaxrnn.recurrent(cell)), got {model!r}."
    )

  def init(key, input_size):
    params = model.init(key, input_size)
    return LearnedCarryParams(params, model.initial_carry(params, ()))

  def initial_carry(params, batch_shape=()):
    shape = cells.base.as_batch_shape(batch_shape)
    return jax.tree.map(lambda c: jnp.broadcast_to(c, shape + jnp.shape(c)), params.carry)

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
    start = initial_carry(params, _batch_shape(xs, model.time_major))
    carry = start if carry is None else carry
    if resets is not None and reset_carry is None:
      reset_carry = start
    kw = apply_options(model, resets=resets, reset_carry=reset_carry, return_carries=return_carries)
    kw.update(seq_lengths=seq_lengths, key=key, deterministic=deterministic)
    return model.apply(params.model, xs, carry, **kw)

  return SequenceModel.library(
    init,
    apply,
    initial_carry,
    "learned_initial_carry",
    pairs(model=(model.name, model.config)),
    step=_step(model),
    settings=model.settings,
    no_step=model.no_step,
    time_major=model.time_major,
    parts=(model,),
  )


def _batch_shape(xs: Any, time_major: bool) -> tuple[int, ...]:
  """The batch shape of ``xs``: its axes but the time axis and the feature axis."""
  shape = tuple(jnp.shape(xs))
  if len(shape) < 2:
    raise ValueError(
      f"xs has shape {shape}; expected (*batch, T, input_size) (or (T, *batch, input_size) "
      "if time-major): learned_initial_carry reads the batch shape off it."
    )
  return shape[1:-1] if time_major else shape[:-2]


def _step(model: SequenceModel):
  """The wrapped model's step on the wrapper's params, or None where it has none."""
  if model.step is None:
    return None

  def step(params, carry, x):
    return model.step(params.model, carry, x)

  return step
