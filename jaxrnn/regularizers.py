"""The regularizers of a recurrent layer: variational dropout, weight drop and zoneout.

`jaxrnn.recurrent` (and `rnn_layers`, which builds on it) takes four rates:

- ``input_dropout``: variational dropout on the inputs (Gal and Ghahramani 2016): one
  mask per row, the same at every step.
- ``recurrent_dropout``: variational dropout on the hidden state ``h`` where it enters
  the recurrent product, one mask per row, the same at every step (Keras's
  ``recurrent_dropout``; in the GRU family ``z * h`` reads ``h`` unmasked).
- ``weight_drop``: DropConnect on the recurrent weights (the params' ``w_hh``), one
  mask per forward pass, shared by every row (Merity, Keskar and Socher 2018, AWD-LSTM).
- ``zoneout``: each unit keeps its previous value with probability ``rate`` at each
  step (Krueger et al. 2017): a float zones ``h`` and ``c`` (the LSTM family's two
  states; any other state, sLSTM's ``n`` and ``m``, follows the cell's own update), a
  dict ``{"h": rate_h, "c": rate_c}`` sets them apart. The step's output is the zoned
  ``h``. At evaluation the expected mask: ``h = rate * h_prev + (1 - rate) * h_new``.

Masks are drawn here, from the layer's ``key``, before the loop: the same key gives
the same numbers on every ``impl``. Dropout-type masks are scaled by ``1 / (1 - rate)``
(inverted dropout), so ``deterministic=True`` is the plain model; zoneout then uses its
expected mask. Input dropout and weight drop change the inputs and the params before the
loop, so they run on every whole-sequence kernel; recurrent dropout and zoneout act
inside the recurrence, and reach the kernels marked ``takes_noise`` (every hand-written
whole-sequence kernel of a cell with a recurrent matrix)
through `jaxrnn.cells.kernel.Noise`.
Cells without such a kernel run their step loop, as they always do; a cell whose
whole-sequence path cannot take them (minGRU and minLSTM's linear scan, with zoneout)
also runs its step loop then. Masks are drawn per row, so with resets the segments
packed in one row share that row's masks.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxrnn.cells import kernel

PyTree = Any


def _check_rate(name: str, rate: Any) -> float:
  if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate < 1.0:
    raise ValueError(f"{name}={rate!r}: expected a number in [0, 1).")
  return float(rate)


def check(
  cell_name: str, params_type: type | None, zoneout: Any, **dropouts: Any
) -> tuple[tuple[str, Any], ...]:
  """The rates as config pairs (only those set), checked; ``params_type`` if known.

  Raises:
    ValueError: a rate outside ``[0, 1)``, a zoneout dict naming no state, or
      recurrent dropout or weight drop on a cell without recurrent weights.
  """
  rates = {k: _check_rate(k, v) for k, v in dropouts.items()}
  if isinstance(zoneout, dict):
    if not zoneout or not all(isinstance(k, str) for k in zoneout):
      raise ValueError(f"zoneout={zoneout!r}: expected a float or a dict of state name -> rate.")
    zoneout = tuple(sorted((k, _check_rate(f"zoneout[{k!r}]", v)) for k, v in zoneout.items()))
  else:
    zoneout = _check_rate("zoneout", zoneout)
  if params_type is not None:
    for name in ("recurrent_dropout", "weight_drop"):
      if rates.get(name) and not recurrent_weights(params_type):
        raise ValueError(
          f"{name}={rates[name]}: the {cell_name!r} cell has no recurrent weights (its "
          "gates read the input only); expected a cell with a recurrent matrix."
        )
  pairs = tuple((k, v) for k, v in rates.items() if v)
  return pairs + ((("zoneout", zoneout),) if zoneout else ())


def recurrent_weights(params_type: type) -> tuple[str, ...]:
  """The params' recurrent weights: ``params_type.recurrent_weights``, else ``w_hh`` if a field.

  minGRU and minLSTM declare ``recurrent_weights = ()``.
  """
  declared = getattr(params_type, "recurrent_weights", None)
  if declared is not None:
    return tuple(declared)
  return ("w_hh",) if "w_hh" in getattr(params_type, "_fields", ()) else ()


def _keep_mask(key: jax.Array, rate: float, shape: tuple[int, ...], dtype: Any) -> jax.Array:
  """Inverted dropout's mask: 0 with probability ``rate``, else ``1 / (1 - rate)``."""
  keep = jax.random.bernoulli(key, 1.0 - rate, shape)
  return keep.astype(dtype) / jnp.asarray(1.0 - rate, dtype)


def _zone_rates(zoneout: Any, carry: Any) -> Any:
  """Each carry leaf's zoneout rate (0.0 for a leaf that is not zoned), as a carry-like tree."""
  if not hasattr(carry, "_fields"):
    if isinstance(zoneout, tuple):
      raise ValueError(f"zoneout={dict(zoneout)!r} names states, but the carry is one array.")
    return zoneout
  if not isinstance(zoneout, tuple):  # a float zones h and c, where the carry has them
    zoneout = tuple((f, zoneout) for f in ("h", "c") if f in carry._fields)
  rates = dict(zoneout)
  unknown = set(rates) - set(carry._fields)
  if unknown:
    raise ValueError(
      f"zoneout names {sorted(unknown)}, which the carry {type(carry).__name__} does not have; "
      f"its states: {carry._fields}."
    )
  return type(carry)(*(rates.get(f, 0.0) for f in carry._fields))


def _zoneout_keep(zoneout, carry, length, key, deterministic) -> Any:
  """`kernel.Noise.keep`: per leaf ``(T, *batch, F)`` weights, or None where not zoned."""
  rates = _zone_rates(zoneout, carry)
  leaves, tree = jax.tree.flatten(carry)
  keys = jax.random.split(key, len(leaves)) if key is not None else [None] * len(leaves)
  keep = []
  for leaf, rate, k in zip(leaves, tree.flatten_up_to(rates), keys, strict=True):
    shape = (length,) + leaf.shape
    if not rate:
      keep.append(None)
    elif deterministic:
      keep.append(jnp.full(shape, rate, leaf.dtype))
    else:
      keep.append(jax.random.bernoulli(k, rate, shape).astype(leaf.dtype))
  return jax.tree.unflatten(tree, keep)


def draw(
  cell, rates: tuple, params: PyTree, xs: jax.Array, key, deterministic: bool, time_major: bool
) -> tuple[PyTree, jax.Array, kernel.Noise | None]:
  """``(params, xs, noise)`` with the regularizers of ``rates`` (`check`'s pairs) applied.

  Args:
    cell: the layer's `Cell`.
    rates: `check`'s ``(name, rate)`` pairs.
    params: the cell's params.
    xs: ``(*batch, T, I)``, or ``(T, *batch, I)`` if ``time_major``.
    key: a PRNG key, needed unless ``deterministic``.
    deterministic: evaluation: no dropout; zoneout's expected mask.
    time_major: the layout of ``xs``.

  Returns:
    The params (weight drop applied), the inputs (input dropout applied) and the
    `kernel.Noise` for `jaxrnn.scan`, None when no mask acts inside the recurrence.
  """
  r = dict(rates)
  if not r or (deterministic and not r.get("zoneout")):
    return params, xs, None
  if not deterministic and key is None:
    raise ValueError(
      f"the regularizers {r} need a key: pass key=... to train, or deterministic=True to "
      "evaluate without them."
    )
  k_in, k_rec, k_w, k_z = jax.random.split(key, 4) if key is not None else (None,) * 4
  batch_shape = tuple(xs.shape[1:-1] if time_major else xs.shape[:-2])
  length = xs.shape[0] if time_major else xs.shape[-2]
  carry = cell.initial_carry(params, batch_shape)
  h_mask = None
  if not deterministic:
    if r.get("input_dropout"):
      shape = (1, *batch_shape, xs.shape[-1]) if time_major else (*batch_shape, 1, xs.shape[-1])
      xs = xs * _keep_mask(k_in, r["input_dropout"], shape, xs.dtype)
    if r.get("weight_drop"):
      params = _drop_weights(k_w, r["weight_drop"], params)
    if r.get("recurrent_dropout"):
      h = kernel.hidden(carry)
      h_mask = _keep_mask(k_rec, r["recurrent_dropout"], h.shape, h.dtype)
  keep = None
  if r.get("zoneout"):
    _check_output(params)
    keep = _zoneout_keep(r["zoneout"], carry, length, k_z, deterministic)
  return params, xs, kernel.Noise(h_mask, keep)


def _drop_weights(key: jax.Array, rate: float, params: PyTree) -> PyTree:
  names = recurrent_weights(type(params))
  if not names:
    raise ValueError(
      f"weight_drop: the params {type(params).__name__} declare no recurrent weights; "
      "expected a field w_hh or a class attribute recurrent_weights = (field names)."
    )
  keys = jax.random.split(key, len(names))
  dropped = {}
  for name, k in zip(names, keys, strict=True):
    w = getattr(params, name)
    dropped[name] = w * _keep_mask(k, rate, w.shape, w.dtype)
  return params._replace(**dropped)


def _check_output(params: PyTree) -> None:
  if getattr(params, "w_out", None) is not None:
    raise ValueError(
      "zoneout needs a cell whose output is its hidden state; this Elman cell has a "
      "readout (output_size): expected output_size=None."
    )


def zoned_step(step, zoneout: Any):
  """``step`` with zoneout's expected mask (evaluation and streaming): a new step function."""

  def zoned(params, carry, x):
    _check_output(params)
    new, _ = step(params, carry, x)
    rates = _zone_rates(zoneout, carry)
    keep = jax.tree.map(
      lambda rate, c: None if not rate else jnp.asarray(rate, c.dtype), rates, carry
    )
    new = kernel.zone(keep, carry, new)
    return new, kernel.hidden(new)

  return zoned
