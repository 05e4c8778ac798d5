"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?"): a GRU whose gates read only x."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn.cells import base, linear_scan
from jaxrnn.cells.base import HiddenCarry


class MinGRUParams(NamedTuple):
  """Parameters of `jaxrnn.min_gru`, gate blocks in the order ``[z, h~]``.

  Attributes:
    w_ih: ``(input_size, 2H)``: ``W_z`` then ``W_h``.
    b: ``(2H,)`` or None: ``b_z`` then ``b_h``.
  """

  w_ih: jax.Array
  b: jax.Array | None = None

  gate_columns = (("w_ih", 2), ("b", 2))  # the gate blocks (and sharding's model axis)

  input_size = base.INPUT_SIZE
  hidden_size = linear_scan.HIDDEN_SIZE


def coefficients(params: MinGRUParams, x: jax.Array, log_space: bool = False, acc=None):
  """The `linear_scan.Coefficients`: ``a = 1 - z``, ``b = z h~`` (``z g(h~)`` in log space).

  The matmul in ``x``'s (the compute) dtype; the gate and ``a`` in ``acc`` (the carry's
  dtype; None: the compute dtype), so that ``a`` near 1 is not rounded to a 16-bit float;
  ``b`` in the compute dtype.
  """
  k, h_tilde = jnp.split(base.add_bias(x @ params.w_ih, params.b), 2, axis=-1)
  k = k if acc is None else k.astype(acc)
  if log_space:  # log(1 - z) = -softplus(k), log z = -softplus(-k)
    log_b = -jax.nn.softplus(-k) + base.like(linear_scan.log_g(h_tilde), k)
    return -jax.nn.softplus(k), base.like(log_b, h_tilde)
  z = jax.nn.sigmoid(k)
  return 1.0 - z, base.like(z * base.like(h_tilde, z), h_tilde)


def min_gru(
  hidden_size: int,
  *,
  log_space: bool = False,
  use_bias: bool = True,
  dtype: Any = jnp.float32,
  carry_dtype: Any = None,
  compute_dtype: Any = None,
) -> base.Cell:
  """The minGRU cell of Feng et al. 2024 (section 3.1, the paper's plain equations)::

      z  = sigmoid(x W_z + b_z)
      h~ = x W_h + b_h                (log_space: g(x W_h + b_h))
      h' = (1 - z) * h + z * h~

  with ``g(v) = v + 0.5`` for ``v >= 0``, else ``sigmoid(v)`` (the paper's section 3.3).
  The gates read only ``x``, so the recurrence is linear in ``h``: `jaxrnn.scan`
  computes a whole sequence from one input matmul and `jax.lax.associative_scan` (a plain
  loop over the coefficients on CPU, where it measured faster; `jaxrnn.cells.linear_scan`;
  masks, reverse and resets included), and ``step`` serves streaming.

  ``log_space=True`` is the paper's log-space form: ``h~`` goes through ``g`` (so it is
  positive, and ``h`` stays positive from a non-negative carry: then the output is
  never negative) and the coefficients are computed as ``(log(1 - z), log z + log g(.))``,
  then exponentiated into the same scan (`jaxrnn.cells.linear_scan`: its pairwise scan
  never divides, so it needs no log-space sums).

  Args:
    hidden_size: H. The output size is H too (the paper's cell has no output projection).
    log_space: the paper's log-space form (the g activation, log-space coefficients).
    use_bias: whether ``b`` exists.
    dtype, carry_dtype, compute_dtype: the params', the carry's (None: float32 for
      bfloat16 or float16 params) and the step's dtypes (`jaxrnn.cells.factory`).

  Returns:
    A `Cell` with carry `HiddenCarry(h)`, ``h`` ``(*batch, H)``; the output is ``h``.
    ``init`` draws ``w_ih`` and ``b`` from U(-1/sqrt(input_size), 1/sqrt(input_size)),
    ``torch.nn.Linear``'s default (the paper's code uses ``nn.Linear``).

  Raises:
    ValueError: for a non-positive size or a non-bool flag.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> cell = jaxrnn.min_gru(hidden_size=4)
    >>> params = cell.init(jax.random.key(0), input_size=3)
    >>> carry, ys = jaxrnn.scan(cell, params, jnp.ones((5, 7, 3)))
    >>> ys.shape, carry.h.shape
    ((5, 7, 4), (5, 4))
  """
  return linear_scan.library_cell(KIND, coefficients, dict(locals()))  # the factory's arguments


KIND = base.CellKind("min_gru", min_gru, MinGRUParams, HiddenCarry, None)
