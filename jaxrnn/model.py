"""The sequence-model contract: `SequenceModel`, a static bundle of pure functions."""

from __future__ import annotations

import inspect
from typing import Any

import jax

from jaxrnn import cells, params_check
from jaxrnn.scan import scan
from jaxrnn.static import Static


@jax.tree_util.register_static
class SequenceModel(Static):
  """A whole-sequence model as a bundle of pure functions; a static value, like `Cell`.

  Built by `recurrent`, `stack`, `bidirectional` or `rnn_layers`, or by a user:
  ``SequenceModel(init, apply, initial_carry, step=...)``, where ``apply=None``
  derives ``apply`` from ``step`` by `jaxrnn.scan` (a model with a faster
  whole-sequence path brings its own ``apply``). `jaxrnn.stream`, `jaxrnn.export`
  and the training code use these functions and never rebuild a model from its
  config. Models built by jaxrnn are equal and hashable by ``(name, config,
  settings)`` and their parts; a user's, by its functions. `replace` returns a
  copy with fields changed (what ``NamedTuple._replace`` did).

  Attributes:
    init: ``init(key, input_size) -> params``.
    apply: ``apply(params, xs, carry=None, *, seq_lengths=None, resets=None,
      key=None, deterministic=False, reset_carry=None, return_carries=False) ->
      (carry, ys)`` (see `jaxrnn.scan` for ``seq_lengths``, ``resets`` and
      ``reset_carry``, the carry a reset restarts from, None for the initial carry).
      ``key`` and ``deterministic`` matter only to models with dropout. With
      ``return_carries=True`` it returns ``(carry, ys, carries)``: the model's carry
      after every step, stacked on the time axis of ``ys``, so that ``carries`` at
      ``t`` passed back as ``carry`` resumes at ``t + 1``. A user's ``apply`` may omit
      ``resets``, ``reset_carry`` and ``return_carries``: a caller that needs one gets
      a `ValueError` naming it (`apply_options`).
    initial_carry: ``initial_carry(params, batch_shape=()) -> carry``.
    name: ``"recurrent"``, ``"bidirectional"``, ``"stack"``, ``"rnn_layers"`` or
      a user's name (default ``"custom"``).
    config: what defines the math, as sorted ``(name, value)`` pairs, checked
      when a checkpoint is restored or an artifact loaded.
    step: ``step(params, carry, x) -> (carry, y)``, one time step on ``x``
      ``(*batch, input_size)`` without dropout; None for a model that needs
      the future (bidirectional, reverse).
    settings: execution settings (``unroll``, ``remat``, ``impl``) as sorted
      pairs: recorded with checkpoints and artifacts, never checked.
    no_step: why ``step`` is None, for the error `jaxrnn.stream` raises.
    time_major: whether ``apply`` takes ``xs`` as ``(T, *batch, I)`` (default False:
      ``(*batch, T, I)``); set by the factories, read by `stack`, `bidirectional` and
      `jaxrnn.export`, never read back from ``config``.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> cell = jaxrnn.gru(4)
    >>> model = jaxrnn.SequenceModel(cell.init, None, cell.initial_carry, step=cell.step)
    >>> params = model.init(jax.random.key(0), 3)
    >>> carry, ys = model.apply(params, jnp.ones((2, 5, 3)))
    >>> ys.shape, jaxrnn.recurrent(cell) == jaxrnn.recurrent(jaxrnn.gru(4))
    ((2, 5, 4), True)
  """

  FIELDS = (
    "init",
    "apply",
    "initial_carry",
    "name",
    "config",
    "step",
    "settings",
    "no_step",
    "time_major",
  )
  DEFAULTS = {
    "name": "custom",
    "config": (),
    "step": None,
    "settings": (),
    "no_step": "",
    "time_major": False,
  }
  __slots__ = ()

  def _check(self, values):
    super()._check(values)
    if not isinstance(values["time_major"], bool):
      raise ValueError(f"time_major={values['time_major']!r}: expected a bool.")
    if values["apply"] is None:
      if values["step"] is None:
        raise ValueError("SequenceModel needs apply, or a step to derive apply from by scan.")
      values["apply"] = _apply_from_step(values["init"], values["initial_carry"], values["step"])
    v = values  # apply and step check their argument order, params and carry
    v["apply"] = params_check.checked(v["name"], v["init"], v["initial_carry"], v["apply"], "apply")
    if v["step"] is not None:
      v["step"] = params_check.checked(v["name"], v["init"], v["initial_carry"], v["step"], "step")


def _apply_from_step(init, initial_carry, step):
  cell = cells.Cell(init, initial_carry, step)

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
    del key, deterministic
    kw = dict(seq_lengths=seq_lengths, resets=resets, reset_carry=reset_carry)
    return scan(cell, params, xs, carry, return_carries=return_carries, **kw)

  return apply


def apply_options(model: SequenceModel, **options: Any) -> dict[str, Any]:
  """The optional keywords to pass to ``model.apply``: those set (not None or False).

  A caller (`stack`, `bidirectional`, `jaxrnn.learned_initial_carry`) passes ``resets``,
  ``reset_carry`` or ``return_carries`` through this, so that a user's ``apply`` without
  them still runs when they are not needed, and fails loudly when they are.

  Args:
    model: a `SequenceModel`.
    **options: keyword arguments for its ``apply``.

  Returns:
    The options whose value is neither None nor False.

  Raises:
    ValueError: naming the option and the model when its ``apply`` does not take it.

  Example:
    >>> import jaxrnn
    >>> from jaxrnn.model import apply_options
    >>> apply_options(jaxrnn.recurrent(jaxrnn.gru(4)), resets=None, return_carries=True)
    {'return_carries': True}
  """
  given = {k: v for k, v in options.items() if v is not None and v is not False}
  if not given:
    return given
  try:
    parameters = inspect.signature(model.apply).parameters
  except (TypeError, ValueError):  # no signature to read: assume the contract's
    return given
  if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
    return given
  for name in given:
    if name not in parameters:
      raise ValueError(
        f"{name}= was given, but the model's apply ({model.name!r}) has no {name} argument; "
        f"expected apply(params, xs, carry=None, *, ..., {name}=...) (see SequenceModel)."
      )
  return given


def pairs(**items: Any) -> tuple[tuple[str, Any], ...]:
  return tuple(sorted(items.items()))
