"""What the built-in cell factories share: their common arguments, checks and initialisers.

The arguments every built-in factory (`jaxrnn.lstm`, `jaxrnn.gru`, ...) takes with the
same meaning, described once here:

  hidden_size: H, a positive int: the width of ``h`` (and of every other carry field,
    unless the cell says otherwise).
  use_bias: whether the biases exist (PyTorch's ``bias=False``).
  recurrent_init: how ``init`` draws ``w_hh``, one block per gate
    (`jaxrnn.cells.base.recurrent_matrix`): ``"uniform"`` (PyTorch's U(-1/sqrt(H),
    1/sqrt(H)), for every weight and bias), ``"orthogonal"`` (each gate block orthogonal,
    Saxe et al. 2014) or ``"identity"`` (each gate block the identity, Le et al. 2015);
    the non-uniform ones start the biases at zero (plus the cell's forget bias, if any).
  dtype: the dtype of the parameters made by ``init``.
  carry_dtype: the dtype of the carry (``initial_carry``'s) and of the state's
    accumulation (the LSTM's ``c = f c + i g``, the GRU's interpolation, every linear
    recurrence ``h = a h + b``); None: float32 for 16-bit float params (bfloat16,
    float16), else the params' dtype (`jaxrnn.cells.base.resolve_carry_dtype`). A
    complex carry takes its complex counterpart (complex64, complex128 for float64). An
    explicit ``jnp.bfloat16`` keeps a bfloat16 carry (PyTorch's bfloat16 modules').
  compute_dtype: the dtype the step's matmuls and gates compute in; None: the params'
    dtype. Floating inputs are cast to it explicitly, the state is cast to it where it
    enters a matmul, the gates are cast up to the carry dtype before the accumulation, and
    integer inputs are a `ValueError` (`jaxrnn.cells.base.cast_to_compute`). Outputs come
    out in the compute dtype.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxrnn.cells import base, kernel

Array = jax.Array


def config(args: dict[str, Any]) -> dict[str, Any]:
  """A factory's arguments, its ``locals()`` taken first, as a config; the shared ones checked.

  ``hidden_size`` must be a positive int and ``recurrent_init`` (where the factory has
  it) one of `jaxrnn.cells.base.RECURRENT_INITS`; a `ValueError` names the bad value.
  """
  base.check_positive("hidden_size", args["hidden_size"])
  base.check_carry_dtype(args.get("carry_dtype"))
  if "recurrent_init" in args:
    base.check_recurrent_init(args["recurrent_init"])
  return dict(args)


def uniform_or_zeros(config: dict[str, Any], key: Array, shape: Sequence[int]) -> Array:
  """A bias by the factory's ``config``: PyTorch's U(-1/sqrt(H), 1/sqrt(H)) under
  ``recurrent_init="uniform"``, zeros otherwise, in the config's ``dtype``."""
  dtype = config["dtype"]
  if config["recurrent_init"] == "uniform":
    return base.uniform(key, shape, base.hidden_scale(config["hidden_size"]), dtype)
  return jnp.zeros(tuple(shape), dtype)


def gate_weights(
  config: dict[str, Any],
  gates: int,
  keys: tuple[Array, Array, Array],
  input_size: int,
  rows: int | None = None,
) -> tuple[Array, Array, Array | None]:
  """``(w_ih, w_hh, b)`` of a gated cell, ``gates`` blocks of H columns, by its ``config``.

  From ``keys = (k_ih, k_hh, k_b)``: ``w_ih`` ``(input_size, G * H)`` PyTorch's uniform,
  ``w_hh`` ``(rows or H, G * H)`` by ``recurrent_init``, ``b`` ``(G * H,)`` by
  `uniform_or_zeros`, or None without ``use_bias``; the scale is 1/sqrt(H).
  """
  base.check_input_size(input_size)
  k_ih, k_hh, k_b = keys
  hidden, dtype = config["hidden_size"], config["dtype"]
  scale = base.hidden_scale(hidden)
  rows = hidden if rows is None else rows
  w_ih = base.uniform(k_ih, (input_size, gates * hidden), scale, dtype)
  w_hh = base.recurrent_matrix(k_hh, config["recurrent_init"], rows, hidden, gates, scale, dtype)
  b = uniform_or_zeros(config, k_b, (gates * hidden,)) if config["use_bias"] else None
  return w_ih, w_hh, b


def zeros_carry(carry_type: type) -> Callable[[Any, tuple[int, ...]], Any]:
  """``initial_carry(params, batch)``: every field of ``carry_type`` zeros ``(*batch, H)``.

  ``H`` is the params' ``hidden_size``; `library_cell` casts it to the carry dtype.
  """

  def initial_carry(params: Any, batch: tuple[int, ...]) -> Any:
    zeros = jnp.zeros(batch + (params.hidden_size,), params.w_hh.dtype)
    return carry_type(*(zeros,) * len(carry_type._fields))

  return initial_carry


def library_cell(
  kind: base.CellKind,
  *,
  init: Callable[..., Any],
  update: Callable[..., Any],
  config: dict[str, Any],
  initial_carry: Callable[..., Any] | None = None,
  check: Callable[[Any, Any, Array], None] | None = None,
  sequence: Callable[..., Any] | None = None,
  masks_product: bool = False,
) -> base.Cell:
  """A built-in cell from its declaration and parts: ``update`` behind the shared checks and policy.

  ``kind`` (the cell module's `jaxrnn.cells.base.CellKind`) gives the name and the params
  and carry types; ``initial_carry`` defaults to `zeros_carry` of the carry type. The step
  checks the params type, runs ``check(params, carry, x)`` (the cell's shape checks; None:
  `jaxrnn.cells.base.check_shapes`), casts to the compute dtype
  (`jaxrnn.cells.base.cast_to_compute`), calls ``update`` (the same function the cell's
  ``sequence`` kernel loops over, if any) and returns the carry in its own dtype.
  ``config`` must hold every factory argument; ``dtype``, ``carry_dtype`` and
  ``compute_dtype`` are stored by name. ``update`` gets the carry in the carry dtype and
  the params and ``x`` in the compute dtype, and casts between them itself (`carry_dtype`'s
  rule; `jaxrnn.cells.base.like`); ``initial_carry``'s leaves are cast to the carry dtype.
  With ``masks_product``, ``update`` takes ``h_mask`` as a fourth argument and the cell
  gets the ``masked_step`` built on it.
  """
  name, params_type = kind.name, kind.params
  compute_dtype, carry_dtype = config.get("compute_dtype"), config.get("carry_dtype")
  check = functools.partial(base.check_shapes, name) if check is None else check
  initial_carry = zeros_carry(kind.carry) if initial_carry is None else initial_carry

  def masked_step(params, carry, x, *h_mask):
    base.check_params(name, params, params_type)
    x = jnp.asarray(x) if not isinstance(x, jax.Array | jax.core.Tracer) else x
    check(params, carry, x)
    p, c, x = base.cast_to_compute(name, params, carry, x, compute_dtype, carry_dtype)
    h_mask = tuple(m.astype(x.dtype) for m in h_mask)
    new, y, _ = update(p, c, x, *h_mask)
    return base.like(new, carry), y

  def step(params, carry, x):
    return masked_step(params, carry, x)

  def checked_initial_carry(params, batch_shape=()):
    base.check_params(name, params, params_type, "initial_carry")
    carry = initial_carry(params, base.as_batch_shape(batch_shape))
    return base.cast_tree(carry, resolved_carry_dtype(params, carry_dtype))

  masked = masked_step if masks_product else None
  if sequence is not None:
    carry_dtype_of = functools.partial(resolved_carry_dtype, carry_dtype=carry_dtype)
    sequence = kernel.with_policy(sequence, compute_dtype, step, masked, carry_dtype_of)
  config = dict(config, dtype=base.dtype_name(config["dtype"]))
  for arg in ("compute_dtype", "carry_dtype"):
    config[arg] = base.dtype_name(config.get(arg))
  config = tuple(sorted(config.items()))
  return base.Cell.library(init, checked_initial_carry, step, name, config, sequence, masked)


def resolved_carry_dtype(params: Any, carry_dtype: Any = None) -> Any:
  """The carry dtype of a cell with ``carry_dtype`` (its factory argument) for ``params``:
  `jaxrnn.cells.base.resolve_carry_dtype` of the params' dtype."""
  return base.resolve_carry_dtype(kernel.params_dtype(params), carry_dtype)
