"""The `Cell` contract and the pieces every cell family shares."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn import params_check
from jaxrnn.cells import kernel
from jaxrnn.static import Static

PyTree = Any
Array = jax.Array


@jax.tree_util.register_static
class Cell(Static):
  """One recurrent time step as a bundle of pure functions.

  A cell factory (`jaxrnn.elman`, `jaxrnn.lstm`, `jaxrnn.gru`) closes its
  configuration over these functions, the way `optax.adam(...)` returns a
  `GradientTransformation`. A cell is a static value: a pytree node with no
  leaves, so it can be passed to `jax.jit` (or sit inside an ``equinox.Module``)
  as a plain argument. A user's own cell is ``Cell(init, initial_carry, step)``:
  it then works everywhere a built-in cell works (`jaxrnn.scan`, `recurrent`,
  `stack`, `bidirectional`, `stream`, `export`, `checkpoint`, the sharded step).

  Attributes:
    init: ``init(key, input_size) -> params``, a NamedTuple of arrays.
    initial_carry: ``initial_carry(params, batch_shape=()) -> carry``, zeros.
    step: ``step(params, carry, x) -> (carry, y)`` with ``x`` of shape
      ``(*batch, input_size)``.
    name: the cell family, ``"elman"``, ``"lstm"``, ``"gru"`` or a user's name
      (default ``"custom"``).
    config: the factory's keyword arguments as sorted ``(name, value)`` pairs,
      ``dtype`` as a string, so that ``cell.config`` is hashable, JSON-safe, and
      ``factory(**dict(cell.config))`` rebuilds an equal cell.
    sequence: optional, the same cell over a whole sequence, e.g. with a
      hand-written VJP: ``sequence(params, carry, xs, mask, reverse, unroll) ->
      (carry, ys)`` on ``xs`` ``(T, N, I)`` and ``mask`` ``(T, N)`` or None (see
      `jaxrnn.cells.kernel`); `jaxrnn.scan` uses it when present. A custom cell
      may leave it None: `scan` then loops over ``step``. A kernel with the attribute
      ``takes_noise = True`` also takes ``noise=`` (`jaxrnn.cells.kernel.Noise`, the
      recurrent-dropout and zoneout masks); others get the step loop when masks are on.
    masked_step: optional, ``masked_step(params, carry, x, h_mask) -> (carry, y)``, the
      step with ``h_mask`` multiplying ``h`` where it enters the recurrent product
      (recurrent dropout). None (the default) multiplies ``carry.h`` before ``step``,
      which is the same for every cell whose ``h`` enters only its recurrent product;
      a cell that also reads ``h`` elsewhere (the GRU's ``z * h``) brings its own.
    coefficients: optional, for a cell whose step is linear in its carry, ``h' = a h + b``
      elementwise: ``coefficients(params, x) -> (a, b)``, each shaped like the carry's one
      leaf ``h`` ``(*batch, F)`` (real or complex), for ``x`` ``(..., input_size)`` with
      any leading axes. Without a ``sequence``, `jaxrnn.scan`'s default path then runs
      the whole sequence as one `jaxrnn.linear_recurrence` over the coefficients of every
      step (lengths, resets and reverse folded in); ``step`` still serves streaming,
      export and ``impl="step"``, and must compute the same ``h'`` and output.
    readout: optional, with ``coefficients``: ``readout(params, h, x) -> y``, the step's
      output from its new ``h`` and its input, on any leading axes; None outputs ``h``.

  What the rest of the library needs to know about a cell it reads from the
  cell's params type: ``input_size`` (a property, checked by `scan`) and
  ``gate_columns`` (a class attribute of ``(field, gates)`` pairs naming the
  leaves whose last axis holds gate columns, split by `jaxrnn.sharding`'s model
  axis; a params type that declares none stays replicated).

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> def init(key, input_size):
    ...   return {"w": jax.random.normal(key, (input_size, 3))}
    >>> def initial_carry(params, batch_shape=()):
    ...   return jnp.zeros(tuple(batch_shape) + (3,))
    >>> def step(params, h, x):
    ...   h = jnp.tanh(x @ params["w"] + h)
    ...   return h, h
    >>> cell = jaxrnn.Cell(init, initial_carry, step)
    >>> params = cell.init(jax.random.key(0), 2)
    >>> carry, ys = jaxrnn.scan(cell, params, jnp.ones((4, 5, 2)))
    >>> ys.shape, cell == jaxrnn.Cell(init, initial_carry, step), jax.tree.leaves(cell)
    ((4, 5, 3), True, [])
  """

  FIELDS = (
    *("init", "initial_carry", "step", "name", "config", "sequence", "masked_step"),
    *("coefficients", "readout"),  # appended: positional construction keeps its order
  )
  DEFAULTS = {
    **{"name": "custom", "config": (), "sequence": None, "masked_step": None},
    **{"coefficients": None, "readout": None},
  }
  __slots__ = ()

  def _check(self, values: dict[str, Any]) -> None:
    super()._check(values)  # then step checks its argument order, params and carry
    v = values
    v["step"] = params_check.checked(v["name"], v["init"], v["initial_carry"], v["step"], "step")


class CellKind(NamedTuple):
  """What a cell module declares to the registry (`jaxrnn.cells`), next to its own code.

  Attributes:
    name: the kind's name, ``rnn_layers(name, ...)``'s ``kind``.
    factory: ``factory(hidden_size, **kwargs) -> Cell``.
    params: the cell's params NamedTuple type.
    carry: the cell's carry NamedTuple type.
    torch: the cell's `jaxrnn.cells.torch_layout.TorchLayout`, or None where PyTorch
      has no such module.
    example: the small configuration the registry's conformance checks
      (`jaxrnn.testing.check_cell`) run the kind at: an `Example`.
  """

  name: str
  factory: Callable[..., Cell]
  params: type
  carry: type
  torch: Any = None
  example: Example = None  # type: ignore[assignment]  (None: Example())

  def example_cell(self) -> tuple[Cell, int]:
    """``(cell, input_size)`` of the kind's `Example`."""
    example = self.example or Example()
    return self.factory(**dict(example.kwargs)), example.input_size


class Example(NamedTuple):
  """A small configuration of a cell kind, for the registry's checks.

  Attributes:
    kwargs: the factory's arguments as ``(name, value)`` pairs, ``hidden_size`` included.
    input_size: the input size to initialise the cell with.
  """

  kwargs: tuple[tuple[str, Any], ...] = (("hidden_size", 5),)
  input_size: int = 3


INPUT_SIZE = property(
  lambda params: params.w_ih.shape[-2], doc="The input size: the rows of ``w_ih``."
)
"""For a params NamedTuple: ``input_size = base.INPUT_SIZE`` (what `jaxrnn.scan` checks)."""

HIDDEN_ROWS = property(lambda params: params.w_hh.shape[-2], doc="H: the rows of ``w_hh``.")
"""For a params NamedTuple whose ``w_hh`` is ``(H, G * H)``: ``hidden_size = base.HIDDEN_ROWS``."""


class HiddenCarry(NamedTuple):
  """Carry of the Elman RNN and the GRU: the hidden state ``h`` ``(*batch, H)``."""

  h: Array


class LSTMCarry(NamedTuple):
  """Carry of the LSTMs: hidden state ``h`` ``(*batch, P or H)``, cell ``c`` ``(*batch, H)``."""

  h: Array
  c: Array


RECURRENT_INITS = ("uniform", "orthogonal", "identity")


def check_recurrent_init(recurrent_init: str) -> None:
  if recurrent_init not in RECURRENT_INITS:
    raise ValueError(f"recurrent_init={recurrent_init!r} is not one of {RECURRENT_INITS}.")


def check_positive(name: str, value: Any, *, allow_none: bool = False) -> None:
  if value is None and allow_none:
    return
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ValueError(f"{name}={value!r}: expected a positive int.")


def check_heads(hidden_size: int, num_heads: Any) -> None:
  """A `ValueError` unless ``num_heads`` is a positive int that divides ``hidden_size``."""
  check_positive("num_heads", num_heads)
  if hidden_size % num_heads:
    raise ValueError(
      f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}; expected a "
      "multiple of num_heads."
    )


def check_input_size(input_size: Any) -> None:
  check_positive("input_size", input_size)


def uniform(key: Array, shape: Sequence[int], scale: float, dtype: Any) -> Array:
  """PyTorch's default: U(-scale, scale) with scale = 1/sqrt(hidden_size)."""
  return jax.random.uniform(key, tuple(shape), dtype, -scale, scale)


def recurrent_matrix(
  key: Array, kind: str, rows: int, hidden: int, gates: int, scale: float, dtype: Any
) -> Array:
  """A ``(rows, gates * hidden)`` recurrent matrix, one ``(rows, hidden)`` block per gate.

  ``uniform``: PyTorch's U(-1/sqrt(H), 1/sqrt(H)). ``orthogonal``: each gate block
  an orthogonal matrix (Saxe et al. 2014). ``identity``: each gate block the
  identity (Le, Jaitly and Hinton 2015, IRNN); needs ``rows == hidden``.
  """
  if kind == "uniform":
    return uniform(key, (rows, gates * hidden), scale, dtype)
  if kind == "orthogonal":
    init = jax.nn.initializers.orthogonal()
    keys = jax.random.split(key, gates)
    wide = jnp.float32 if jnp.dtype(dtype) in LOW_PRECISION else dtype  # LAPACK has no bfloat16
    return jnp.concatenate([init(k, (rows, hidden), wide) for k in keys], axis=1).astype(dtype)
  if kind == "identity":
    if rows != hidden:
      raise ValueError(
        f"recurrent_init='identity' needs a square recurrent block, got {rows}x{hidden}."
      )
    return jnp.tile(jnp.eye(hidden, dtype=dtype), (1, gates))
  check_recurrent_init(kind)
  raise AssertionError  # unreachable


def hidden_scale(hidden_size: int) -> float:
  return 1.0 / math.sqrt(hidden_size)


def rowwise(v: Array, z: Array) -> Array:
  """``v`` ``(F,)`` reshaped to broadcast explicitly against ``z`` ``(..., F)``."""
  return jnp.reshape(v, (1,) * (z.ndim - 1) + v.shape)


def add_bias(z: Array, b: Array | None) -> Array:
  """``z + b`` with ``b`` of shape ``(F,)`` broadcast explicitly over the batch."""
  if b is None:
    return z
  return z + rowwise(b, z)


def check_step_input(
  cell_name: str, x: Array, input_size: int, carry_leaf: Array, width: int
) -> None:
  """Eager, static checks shared by every cell's ``step``."""
  if x.ndim < 1:
    raise ValueError(f"{cell_name}.step: x has shape {x.shape}; expected (*batch, {input_size}).")
  if x.shape[-1] != input_size:
    raise ValueError(
      f"{cell_name}.step: x has {x.shape[-1]} features (shape {x.shape}), but the params "
      f"expect input_size={input_size}."
    )
  if carry_leaf.shape[-1] != width:
    raise ValueError(
      f"{cell_name}.step: carry has width {carry_leaf.shape[-1]} (shape {carry_leaf.shape}), "
      f"but the params expect {width}."
    )
  if carry_leaf.shape[:-1] != x.shape[:-1]:
    raise ValueError(
      f"{cell_name}.step: carry batch shape {carry_leaf.shape[:-1]} does not match x batch "
      f"shape {x.shape[:-1]}."
    )


def check_shapes(cell_name: str, params: Any, carry: Any, x: Array) -> None:
  """The shape checks of a step whose carry fields are all ``(*batch, params.hidden_size)``."""
  check_step_input(cell_name, x, params.input_size, carry.h, params.hidden_size)
  for field in carry._fields[1:]:
    leaf = getattr(carry, field)
    if leaf.shape != carry.h.shape:
      raise ValueError(
        f"{cell_name}.step: carry.{field} has shape {leaf.shape}; expected {carry.h.shape} (as h)."
      )


def as_batch_shape(batch_shape: Any) -> tuple[int, ...]:
  if isinstance(batch_shape, int):
    batch_shape = (batch_shape,)
  try:  # a symbolic dimension (jax.export's batch size) stays one
    shape = tuple(d if jax.export.is_symbolic_dim(d) else int(d) for d in batch_shape)
  except TypeError:
    raise ValueError(f"batch_shape={batch_shape!r}: expected a tuple of ints.") from None
  if any(d < 0 for d in shape):
    raise ValueError(f"batch_shape={batch_shape!r}: dimensions must be non-negative.")
  return shape


def dtype_name(dtype: Any) -> str | None:
  """A dtype as its canonical, JSON-safe name (``"float32"``); None stays None."""
  return None if dtype is None else jnp.dtype(dtype).name


def check_params(cell_name: str, params: Any, params_type: type, where: str = "step") -> None:
  """A `ValueError` naming both types when ``params`` is not the cell's params type."""
  if not isinstance(params, params_type):
    raise ValueError(
      f"{cell_name}.{where}: params is a {type(params).__name__}; expected "
      f"{params_type.__name__} (from jaxrnn.{cell_name}(...).init)."
    )


LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
"""The 16-bit floats: with params in one of them the carry defaults to float32."""


def resolve_carry_dtype(params_dtype: Any, carry_dtype: Any = None) -> Any:
  """The carry's dtype: ``carry_dtype``, or when None float32 for 16-bit float params
  (`LOW_PRECISION`) and the params' dtype otherwise (float64 stays float64).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxrnn.cells.base import resolve_carry_dtype as resolve
    >>> resolve(jnp.bfloat16), resolve(jnp.float64), resolve(jnp.bfloat16, jnp.bfloat16)
    (dtype('float32'), dtype('float64'), dtype(bfloat16))
  """
  if carry_dtype is not None:
    return jnp.dtype(carry_dtype)
  dt = jnp.dtype(params_dtype)
  return jnp.dtype(jnp.float32) if dt in LOW_PRECISION else dt


def check_carry_dtype(carry_dtype: Any) -> None:
  """A `ValueError` unless ``carry_dtype`` is None or a real floating dtype."""
  try:
    ok = carry_dtype is None or jnp.issubdtype(jnp.dtype(carry_dtype), jnp.floating)
  except TypeError:
    ok = False
  if not ok:
    raise ValueError(
      f"carry_dtype={carry_dtype!r}: expected None or a real floating dtype (a complex "
      "carry takes its counterpart)."
    )


def complex_of(dtype: Any) -> Any:
  """The complex dtype of a complex carry whose parts are ``dtype``: complex128 for float64,
  else complex64 (there is no 16-bit complex dtype)."""
  return jnp.dtype(jnp.complex128 if jnp.dtype(dtype) == jnp.float64 else jnp.complex64)


def cast_tree(tree: Any, dtype: Any) -> Any:
  """``tree`` cast leaf by leaf to the real ``dtype``, a complex leaf to `complex_of` it
  (keeping its imaginary part); a no-op where a leaf has it already."""

  def cast(a):
    to = complex_of(dtype) if jnp.iscomplexobj(a) else jnp.dtype(dtype)
    return a if a.dtype == to else a.astype(to)

  return jax.tree.map(cast, tree)


def cast_to_compute(
  cell_name: str, params: Any, carry: Any, x: Any, compute_dtype: Any, carry_dtype: Any = None
) -> tuple[Any, Any, Array]:
  """The step's dtype policy: ``params`` and ``x`` cast to the compute dtype, ``carry`` to
  the carry dtype.

  The compute dtype is ``compute_dtype`` or, when None, the params' dtype; the carry
  dtype is `resolve_carry_dtype` of the params' dtype and ``carry_dtype``, or the compute
  dtype where that is wider (a bfloat16 carry under float32 math is updated in float32 and
  rounded when stored): the update accumulates its state in it, casting the state down
  with `like` where it enters a matmul. Floating
  inputs of another dtype are cast explicitly (no implicit promotion); integer or
  boolean inputs are a `ValueError`. A complex leaf (a complex carry) is cast to its
  complex counterpart (`complex_of`), never to a real dtype. Casting to the dtype an array
  already has is a no-op, so the default float32 policy adds nothing to the computation.
  """
  x = jnp.asarray(x) if not isinstance(x, jax.Array | jax.core.Tracer) else x
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(
      f"{cell_name}.step: x has dtype {x.dtype}; expected a floating dtype (inputs are cast "
      "to the compute dtype; embed integer token ids first)."
    )
  params_dtype = kernel.params_dtype(params)
  dt = jnp.dtype(compute_dtype) if compute_dtype is not None else params_dtype
  acc = resolve_carry_dtype(params_dtype, carry_dtype)
  if jnp.finfo(dt).bits > jnp.finfo(acc).bits:  # a 16-bit carry under float32 math
    acc = dt
  return cast_tree(params, dt), cast_tree(carry, acc), cast_tree(x, dt)


def like(new: Any, old: Any) -> Any:
  """``new`` cast leaf by leaf to the dtypes of ``old``: the carry keeps its dtype, a gate
  goes up to the carry dtype before an accumulation (``like(f, c) * c``), the state down to
  the compute dtype where it enters a matmul (``like(h, x) @ w``); a no-op where equal."""
  return jax.tree.map(lambda n, o: n if n.dtype == o.dtype else n.astype(o.dtype), new, old)
