"""minLSTM (Feng et al. 2024, "Were RNNs All We Needed?"): an LSTM whose gates read only x."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn.cells import base, linear_scan
from jaxrnn.cells.base import HiddenCarry


class MinLSTMParams(NamedTuple):
  """Parameters of `jaxrnn.min_lstm`, gate blocks in the order ``[f, i, h~]``.

  Attributes:
    w_ih: ``(input_size, 3H)``: ``W_f``, ``W_i``, then ``W_h``.
    b: ``(3H,)`` or None: ``b_f``, ``b_i``, then ``b_h``.
  """

  w_ih: jax.Array
  b: jax.Array | None = None

  gate_columns = (("w_ih", 3), ("b", 3))  # the gate blocks (and sharding's model axis)

  input_size = base.INPUT_SIZE
  hidden_size = linear_scan.HIDDEN_SIZE


def coefficients(params: MinLSTMParams, x: jax.Array, log_space: bool = False, acc=None):
  """The `linear_scan.Coefficients`: ``a = f / (f + i)``, ``b = i / (f + i) * h~``
  (``g(h~)`` in log space); the gates and ``a`` in ``acc``, ``b`` in ``x``'s dtype, as
  `jaxrnn.cells.min_gru.coefficients`'."""
  k_f, k_i, h_tilde = jnp.split(base.add_bias(x @ params.w_ih, params.b), 3, axis=-1)
  if acc is not None:
    k_f, k_i = k_f.astype(acc), k_i.astype(acc)
  if log_space:  # d = log i - log f; log f' = -softplus(d), log i' = -softplus(-d)
    d = jax.nn.softplus(-k_f) - jax.nn.softplus(-k_i)
    log_b = -jax.nn.softplus(-d) + base.like(linear_scan.log_g(h_tilde), d)
    return -jax.nn.softplus(d), base.like(log_b, h_tilde)
  f, i = jax.nn.sigmoid(k_f), jax.nn.sigmoid(k_i)
  total = f + i
  return f / total, base.like(i / total * base.like(h_tilde, total), h_tilde)


def min_lstm(
  hidden_size: int,
  *,
  log_space: bool = False,
  use_bias: bool = True,
  dtype: Any = jnp.float32,
  carry_dtype: Any = None,
  compute_dtype: Any = None,
) -> base.Cell:
  """The minLSTM cell of Feng et al. 2024 (section 3.2, with its normalised gates)::

      f  = sigmoid(x W_f + b_f)
      i  = sigmoid(x W_i + b_i)
      h~ = x W_h + b_h                (log_space: g(x W_h + b_h))
      f' = f / (f + i),  i' = i / (f + i)
      h' = f' * h + i' * h~

  with ``g(v) = v + 0.5`` for ``v >= 0``, else ``sigmoid(v)`` (the paper's section 3.3).
  There is no cell state and no output gate: the carry is ``h`` alone. The gates read
  only ``x``, so the recurrence is linear in ``h``: `jaxrnn.scan` computes a whole
  sequence from one input matmul and `jax.lax.associative_scan` (a plain loop over the
  coefficients on CPU, where it measured faster; `jaxrnn.cells.linear_scan`; masks,
  reverse and resets included), and ``step`` serves streaming.

  ``log_space=True`` is the paper's log-space form: ``h~`` goes through ``g`` (so it is
  positive, and ``h`` stays positive from a non-negative carry) and the coefficients
  are computed as ``(log f', log i' + log g(.))``, with ``log f'`` and ``log i'`` from
  softplus as in the paper's code, then exponentiated into the same scan (as minGRU's).

  Args:
    hidden_size, log_space, use_bias, dtype, carry_dtype, compute_dtype: as `jaxrnn.min_gru`'s.

  Returns:
    A `Cell` with `jaxrnn.min_gru`'s carry, output and initialisation (three gate blocks).

  Raises:
    ValueError: as `jaxrnn.min_gru`.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> cell = jaxrnn.min_lstm(hidden_size=4, log_space=True)
    >>> params = cell.init(jax.random.key(0), input_size=3)
    >>> carry, ys = jaxrnn.scan(cell, params, jnp.ones((5, 7, 3)))
    >>> ys.shape, bool((ys > 0).all())
    ((5, 7, 4), True)
  """
  return linear_scan.library_cell(KIND, coefficients, dict(locals()))  # the factory's arguments


KIND = base.CellKind("min_lstm", min_lstm, MinLSTMParams, HiddenCarry, None)
