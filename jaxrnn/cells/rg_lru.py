"""Griffin's RG-LRU (De et al. 2024, section 2.4): a gated diagonal linear recurrence."""

from __future__ import annotations

import functools
import numbers
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn.cells import base, linear_scan
from jaxrnn.cells import builtin as factory
from jaxrnn.cells.base import HiddenCarry

SEGMENT_STARTS = ("recurrentgemma", "restart")

# recurrentgemma's `sqrt_bound_derivative(1 - a**2, 1000)`: the derivative of the
# multiplier's square root is clipped at this value.
MAX_SQRT_GRADIENT = 1000.0


class RGLRUParams(NamedTuple):
  """Parameters of `jaxrnn.rg_lru`: block-diagonal gates over ``num_heads`` heads.

  With ``K`` heads of ``D = H / K`` units each, a block-diagonal weight ``w`` of shape
  ``(K, D, D)`` maps head ``k``'s inputs ``u[..., k*D:(k+1)*D]`` by ``w[k]``
  (recurrentgemma's ``BlockDiagonalLinear`` layout, ``x @ w`` per head).

  Attributes:
    w_a: ``(K, D, D)``, the recurrence gate's block-diagonal weight (recurrentgemma's
      ``a_gate.w``).
    b_a: ``(H,)``, the recurrence gate's bias (``a_gate.b`` flattened).
    w_x: ``(K, D, D)``, the input gate's block-diagonal weight (``input_gate.w``).
    b_x: ``(H,)``, the input gate's bias (``input_gate.b`` flattened).
    lam: ``(H,)``, the paper's ``Lambda``: ``a = sigmoid(Lambda)`` (recurrentgemma's
      ``a_param`` is ``-Lambda``).
    w_in: ``(input_size, H)`` or None: the input projection, present only when the
      input size differs from H.
    b_in: ``(H,)`` or None: its bias (None with ``w_in``).
  """

  w_a: jax.Array
  b_a: jax.Array
  w_x: jax.Array
  b_x: jax.Array
  lam: jax.Array
  w_in: jax.Array | None = None
  b_in: jax.Array | None = None

  @property
  def hidden_size(self) -> int:
    """H: the heads times their width."""
    return self.w_a.shape[-3] * self.w_a.shape[-1]

  @property
  def num_heads(self) -> int:
    return self.w_a.shape[-3]

  @property
  def input_size(self) -> int:
    """The rows of ``w_in``, or H without a projection."""
    return self.hidden_size if self.w_in is None else self.w_in.shape[-2]

  @classmethod
  def from_recurrentgemma(cls, params: Mapping[str, Any]) -> RGLRUParams:
    """`from_recurrentgemma`: the params of recurrentgemma's ``RGLRU`` layer, converted."""
    return from_recurrentgemma(params)


class RGLRUCarry(NamedTuple):
  """Carry of `jaxrnn.rg_lru` in recurrentgemma's segment-start form.

  Attributes:
    h: ``(*batch, H)``, the state (the output).
    start: ``(*batch, 1)``, 1 where the next step starts a segment (the initial carry,
      and so every reset), 0 after any step. There the step zeroes ``a`` and uses the
      multiplier 1, as recurrentgemma does at ``segment_pos == 0``; a value in between
      interpolates linearly (``a (1 - start)``, ``start + (1 - start) sqrt(1 - a^2)``).
  """

  h: jax.Array
  start: jax.Array


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def sqrt_bound_derivative(x: jax.Array, max_gradient: float = MAX_SQRT_GRADIENT) -> jax.Array:
  """``sqrt(x)`` whose derivative is that at ``max(x, 1 / (4 max_gradient^2))``.

  recurrentgemma's function of the same name (it keeps the gradient of the multiplier
  ``sqrt(1 - a^2)`` finite as ``a`` nears 1, against NaNs in bfloat16): the same values,
  and the same gradient, which is the exact one wherever ``x >= 1 / (4 max_gradient^2)``.
  """
  del max_gradient
  return jnp.sqrt(x)


def _sqrt_fwd(x, max_gradient):
  return jnp.sqrt(x), x


def _sqrt_bwd(max_gradient, x, g):
  floor = 1.0 / (4.0 * max_gradient**2)
  return jax.vjp(jnp.sqrt, jnp.maximum(x, jnp.asarray(floor, x.dtype)))[1](g)


sqrt_bound_derivative.defvjp(_sqrt_fwd, _sqrt_bwd)


def _block_diagonal(u: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """``u`` ``(..., H)`` through the block-diagonal ``w`` ``(K, D, D)``, plus ``b`` ``(H,)``."""
  K, D = w.shape[-3], w.shape[-1]
  blocks = u.reshape(u.shape[:-1] + (K, D))
  y = jnp.einsum("...ki,kij->...kj", blocks, w)
  return base.add_bias(y.reshape(u.shape), b)


def gates(params: RGLRUParams, x: jax.Array, c: float, acc: Any = None) -> tuple[jax.Array, ...]:
  """``(a, multiplier, i * u)`` for every row of ``x`` ``(..., input_size)``, each ``(..., H)``.

  ``u`` is the (projected) input, ``a = exp(-c r softplus(-Lambda))`` with the recurrence
  gate ``r``, the multiplier ``sqrt(1 - a^2)`` (`sqrt_bound_derivative`) and ``i`` the
  input gate, as recurrentgemma computes them (``a^2`` as ``exp(2 log a)``). The gates
  and ``log a`` are in ``x``'s (the compute) dtype; ``a``, the multiplier and ``i * u`` in
  ``acc`` (the carry's dtype; None: the compute dtype), so that ``a`` near 1 is not rounded
  to a 16-bit float (recurrentgemma's ``acc_float_dtype``).
  """
  u = x if params.w_in is None else base.add_bias(x @ params.w_in, params.b_in)
  r = jax.nn.sigmoid(_block_diagonal(u, params.w_a, params.b_a))
  i = jax.nn.sigmoid(_block_diagonal(u, params.w_x, params.b_x))
  log_a = -c * r * jax.nn.softplus(-base.rowwise(params.lam, r))
  gated = u * i
  if acc is not None:
    log_a, gated = log_a.astype(acc), gated.astype(acc)
  a, a_squared = jnp.exp(log_a), jnp.exp(2 * log_a)
  return a, sqrt_bound_derivative(1 - a_squared), gated


def from_recurrentgemma(params: Mapping[str, Any]) -> RGLRUParams:
  """recurrentgemma's ``RGLRU`` layer params (``only_real=True``) as `RGLRUParams`.

  The map: ``w_a = a_gate.w``, ``b_a = a_gate.b`` flattened (head-major, ``(K, D)`` to
  ``(H,)``), ``w_x = input_gate.w``, ``b_x = input_gate.b`` flattened, ``lam = -a_param``
  (recurrentgemma's ``a_param`` is the negated ``Lambda``: its ``log a = -8 r
  softplus(a_param)``); no input projection (the layer maps width H to H). The cell built
  with ``jaxrnn.rg_lru(H, num_heads=K)`` (its default ``segment_start="recurrentgemma"``
  and ``c=8.0``) then computes the layer's outputs, with ``resets`` where ``segment_pos ==
  0`` and the carry ``RGLRUCarry(h0, 0)`` for its ``cache`` ``h0``.

  Args:
    params: the layer's variables, ``{"a_param", "a_gate", "input_gate"}``, or that
      dict under ``"params"`` (what ``RGLRU(...).init`` returns).

  Returns:
    `RGLRUParams` in the params' dtype.

  Raises:
    ValueError: for a complex layer (``a_imag_param``), missing or misshapen leaves.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxrnn.cells.rg_lru import from_recurrentgemma
    >>> gate = {"w": jnp.ones((2, 2, 2)), "b": jnp.zeros((2, 2))}
    >>> p = from_recurrentgemma({"a_param": jnp.ones(4), "a_gate": gate, "input_gate": gate})
    >>> p.w_a.shape, p.b_a.shape, p.lam.tolist(), p.w_in
    ((2, 2, 2), (4,), [-1.0, -1.0, -1.0, -1.0], None)
  """
  if "params" in params and "a_param" not in params:
    params = params["params"]
  if "a_imag_param" in params:
    raise ValueError("params hold a_imag_param (only_real=False); expected a real RGLRU layer.")
  missing = [k for k in ("a_param", "a_gate", "input_gate") if k not in params]
  if missing:
    raise ValueError(f"params have keys {sorted(params)}; missing {missing} of an RGLRU layer.")
  a_param = jnp.asarray(params["a_param"])
  H = a_param.shape[-1]
  out = {}
  for gate, (w_name, b_name) in (("a_gate", ("w_a", "b_a")), ("input_gate", ("w_x", "b_x"))):
    w, b = jnp.asarray(params[gate]["w"]), jnp.asarray(params[gate]["b"])
    if w.ndim != 3 or w.shape[1] != w.shape[2] or w.shape[0] * w.shape[2] != H:
      raise ValueError(f"{gate}.w has shape {w.shape}; expected (K, {H} // K, {H} // K).")
    if b.shape != (w.shape[0], w.shape[2]):
      raise ValueError(f"{gate}.b has shape {b.shape}; expected {(w.shape[0], w.shape[2])}.")
    out[w_name], out[b_name] = w, b.reshape(H)
  if a_param.shape != (H,):
    raise ValueError(f"a_param has shape {a_param.shape}; expected ({H},).")
  return RGLRUParams(lam=-a_param, **out)


def _check_shapes(name: str, params: RGLRUParams, carry: Any, x: jax.Array) -> None:
  base.check_step_input(name, x, params.input_size, carry.h, params.hidden_size)
  if isinstance(carry, RGLRUCarry) and carry.start.shape != carry.h.shape[:-1] + (1,):
    raise ValueError(
      f"{name}.step: carry.start has shape {carry.start.shape}; expected "
      f"{carry.h.shape[:-1] + (1,)} (h's batch shape, then 1)."
    )


def _update(params, carry, x, *, c):
  """One step, both forms: ``(carry, y, None)``: the gates in ``x``'s (the compute) dtype,
  cast up to the carry's for the recurrence; ``y`` is the new ``h`` in the compute dtype."""
  a, multiplier, gated = gates(params, x, c, carry.h.dtype)
  if isinstance(carry, RGLRUCarry):  # a segment start: a zeroed, the multiplier 1
    s = carry.start
    a, multiplier = a * (1 - s), s + (1 - s) * multiplier
    h = a * carry.h + multiplier * gated
    return RGLRUCarry(h, jnp.zeros_like(s)), base.like(h, x), None
  h = a * carry.h + multiplier * gated
  return HiddenCarry(h), base.like(h, x), None


def _starts(carry, mask, resets, reset_carry, reverse, T):
  """``(start before each step (T, N, 1), the final carry's start (N, 1))``.

  A step starts a segment where a reset replaced the carry (``reset_carry.start``) or,
  before any valid step was processed, with the incoming ``carry.start``; else 0.
  """
  s0 = carry.start[None]
  if mask is None:
    t = jnp.arange(T).reshape(T, 1, 1)
    before = (t < T - 1) if reverse else (t > 0)
    final = jnp.zeros_like(carry.start)
  else:
    valid = mask.astype(jnp.int32)[..., None]
    total = jnp.cumsum(valid[::-1], axis=0)[::-1] if reverse else jnp.cumsum(valid, axis=0)
    before = (total - valid) > 0
    final = jnp.where(total[0 if reverse else -1] > 0, jnp.zeros_like(carry.start), carry.start)
  s = jnp.where(before, jnp.zeros_like(s0), s0)
  if resets is not None:
    s = jnp.where(resets[..., None], reset_carry.start[None], s)
  return s, final


def _sequence(c: float):
  """The recurrentgemma form over a whole sequence: one `linear_scan.recurrence`."""

  def run(params, carry, xs, mask, reverse, unroll, resets=None, reset_carry=None):
    del unroll  # the recurrence has no loop to unroll
    a, multiplier, gated = gates(params, xs, c, carry.h.dtype)
    T = xs.shape[0]
    if T == 0:
      return carry, gated.astype(xs.dtype)
    s, final_start = _starts(carry, mask, resets, reset_carry, reverse, T)
    s = s.astype(a.dtype)
    a, b = a * (1 - s), (s + (1 - s) * multiplier) * gated
    valid = None if mask is None else mask[..., None]
    r = None if resets is None else resets[..., None]
    reset_h = None if resets is None else reset_carry.h[None]
    a, b = linear_scan.fold(a, b, valid, r, reset_h)
    h, last = linear_scan.recurrence(a, b, carry.h, reverse, linear_scan.method(a))
    h = base.like(h, xs)  # the outputs in the compute dtype
    ys = h if valid is None else jnp.where(valid, h, jnp.zeros_like(h))
    return RGLRUCarry(last, final_start), ys

  run.mixed_precision = True  # the recurrence in the carry's dtype (`kernel.with_policy`)
  return run


def _initial_carry(segment_start: str):
  def initial_carry(params: RGLRUParams, batch: tuple[int, ...]) -> Any:
    dtype = params.lam.dtype
    h = jnp.zeros(batch + (params.hidden_size,), dtype)
    if segment_start == "restart":
      return HiddenCarry(h)
    return RGLRUCarry(h, jnp.ones(batch + (1,), dtype))

  return initial_carry


def lambda_init(key: jax.Array, shape: tuple[int, ...], min_rad: float, max_rad: float, dtype):
  """``Lambda`` with ``sigmoid(Lambda)`` on the ring ``[min_rad, max_rad]``, uniform in area.

  recurrentgemma's ``rnn_param_init`` (``rnn_real_param_init``), negated: its ``a_param``
  is ``softplus^-1(-log rad)`` with ``rad^2`` uniform in ``[min_rad^2, max_rad^2]`` (plus
  ``1e-8``), so ``sigmoid(Lambda) = exp(-softplus(a_param)) = rad``.
  """
  unif = jax.random.uniform(key, shape=shape)
  log_rad = 0.5 * jnp.log(unif * (max_rad**2 - min_rad**2) + min_rad**2 + 1e-8)
  return -jnp.log(jnp.exp(-log_rad) - 1.0).astype(dtype)


def rg_lru(
  hidden_size: int,
  *,
  num_heads: int = 1,
  c: float = 8.0,
  min_rad: float = 0.9,
  max_rad: float = 0.999,
  w_init_variance_scale: float = 1.0,
  segment_start: str = "recurrentgemma",
  dtype: Any = jnp.float32,
  carry_dtype: Any = None,
  compute_dtype: Any = None,
) -> base.Cell:
  """Griffin's Real-Gated Linear Recurrent Unit (De et al. 2024, section 2.4)::

      u   = x                         (x W_in + b_in when input_size != H)
      r_t = sigmoid(u W_a + b_a)      (recurrence gate, block-diagonal over the heads)
      i_t = sigmoid(u W_x + b_x)      (input gate, block-diagonal over the heads)
      log a_t = -c * r_t * softplus(-Lambda)     (a_t = sigmoid(Lambda)^(c r_t), c = 8)
      h_t = a_t * h_{t-1} + sqrt(1 - a_t^2) * (i_t * u_t)

  and the output is ``h_t``. The gates read only the input, so the recurrence is linear
  in ``h``: `jaxrnn.scan` computes a whole sequence from one pass of the gates over all
  ``T * N`` rows and one `jaxrnn.linear_recurrence` (its sequential or associative
  method, `jaxrnn.cells.linear_scan`; its hand-written VJP), with lengths, resets and
  reverse; ``step`` serves streaming and export. The square root's derivative is clipped
  at 1000 as recurrentgemma's ``sqrt_bound_derivative`` clips it (`sqrt_bound_derivative`):
  the same gradient as recurrentgemma, which is the exact one unless ``1 - a^2 < 2.5e-7``.

  Widths: the paper's layer maps width H to H; here ``hidden_size`` is the output width
  as for every cell, and when ``init`` gets another ``input_size`` the cell first
  projects the input with a learned dense layer ``(w_in, b_in)`` (None when the sizes
  match), so stacks and bidirectional layers (2H into the next layer) work unchanged.

  Segment starts (``segment_start``): ``"recurrentgemma"`` (the default) computes a
  segment's first step as recurrentgemma does at ``segment_pos == 0``: ``a`` is zeroed and
  the multiplier is 1, so ``h_t = i_t * u_t`` (the state starts with the input's full
  scale, and a fresh state's variance is that of ``i u`` from the first step on). The step
  cannot see `jaxrnn.scan`'s ``resets``, so the carry says it, `RGLRUCarry(h, start)`:
  the initial carry (what every reset restarts from) has ``start = 1``, and each step sets
  it to 0; the first step of a sequence from the initial carry is a segment start, as
  recurrentgemma's ``segment_pos`` starting at 0, and a carry returned by `jaxrnn.scan`
  continues the segment (its cache). ``"restart"`` is the plain equation with jaxrnn's
  reset convention, as for every other cell: a reset restarts from ``h_{t-1} = 0`` and the
  multiplier stays ``sqrt(1 - a_t^2)``; the carry is `HiddenCarry(h)`.

  Args:
    hidden_size: H, divisible by ``num_heads``.
    num_heads: K, the diagonal blocks of the gates' weights (recurrentgemma's
      ``num_heads``); 1 is a dense gate.
    c: the constant of ``log a_t`` (the paper's 8).
    min_rad, max_rad: ``sigmoid(Lambda)`` is drawn on this ring, uniformly in area
      (recurrentgemma's ``rnn_param_init``: 0.9 and 0.999).
    w_init_variance_scale: the gates' weights are normal with variance this over the
      fan-in (recurrentgemma's ``BlockDiagonalLinear``).
    segment_start: ``"recurrentgemma"`` or ``"restart"``, as above.
    dtype, carry_dtype, compute_dtype: the params', the carry's (None: float32 for
      bfloat16 or float16 params) and the step's dtypes (`jaxrnn.cells.factory`).

  Returns:
    A `Cell` with carry `RGLRUCarry(h, start)` (``"restart"``: `HiddenCarry(h)`), ``h``
    ``(*batch, H)`` zeros and ``start`` ``(*batch, 1)`` ones initially; the output is
    ``h``. ``init`` draws as recurrentgemma's ``RGLRU``: ``w_a``, ``w_x`` ``(K, D, D)``
    (``D = H / K``) from ``jax.nn.initializers.variance_scaling(w_init_variance_scale,
    "fan_in", "normal")`` (its fan-in of a ``(K, D, D)`` weight is ``K D = H``), zero
    biases, ``Lambda`` from `lambda_init`; ``w_in`` (when present) as Griffin's
    ``linear_x``, ``variance_scaling(1.0, "fan_in", "normal")``, and ``b_in`` zeros.
    ``RGLRUParams.from_recurrentgemma`` converts a recurrentgemma layer's params.

  Raises:
    ValueError: for a non-positive size or head count, ``hidden_size`` not divisible by
      ``num_heads``, ``min_rad``/``max_rad`` not ``0 < min_rad <= max_rad < 1``, a
      non-positive ``c`` or ``w_init_variance_scale``, or an unknown ``segment_start``.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> cell = jaxrnn.rg_lru(hidden_size=4, num_heads=2)
    >>> params = cell.init(jax.random.key(0), input_size=3)  # 3 != 4: w_in projects
    >>> params.w_a.shape, params.lam.shape, params.w_in.shape
    ((2, 2, 2), (4,), (3, 4))
    >>> carry, ys = jaxrnn.scan(cell, params, jnp.ones((5, 7, 3)))
    >>> ys.shape, carry.h.shape, carry.start.shape
    ((5, 7, 4), (5, 4), (5, 1))
  """
  config = factory.config(locals())  # first: exactly the factory's arguments
  base.check_heads(hidden_size, num_heads)
  for name, value in (("c", c), ("w_init_variance_scale", w_init_variance_scale)):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
      raise ValueError(f"{name}={value!r}: expected a positive real number.")
  radii = (min_rad, max_rad)
  if any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in radii) or not (
    0 < min_rad <= max_rad < 1
  ):
    raise ValueError(
      f"min_rad={min_rad!r}, max_rad={max_rad!r}: expected 0 < min_rad <= max_rad < 1."
    )
  if segment_start not in SEGMENT_STARTS:
    raise ValueError(f"segment_start={segment_start!r}: expected one of {SEGMENT_STARTS}.")
  H, K = hidden_size, num_heads
  gate_init = jax.nn.initializers.variance_scaling(w_init_variance_scale, "fan_in", "normal")
  dense_init = jax.nn.initializers.variance_scaling(1.0, "fan_in", "normal")

  def init(key, input_size):
    base.check_input_size(input_size)
    k_a, k_x, k_lam, k_in = jax.random.split(key, 4)
    zeros = jnp.zeros((H,), dtype)
    w_a, w_x = (gate_init(k, (K, H // K, H // K), dtype) for k in (k_a, k_x))
    lam = lambda_init(k_lam, (H,), min_rad, max_rad, dtype)
    w_in = b_in = None
    if input_size != H:
      w_in, b_in = dense_init(k_in, (input_size, H), dtype), zeros
    return RGLRUParams(w_a, zeros, w_x, zeros, lam, w_in, b_in)

  update = functools.partial(_update, c=float(c))
  if segment_start == "restart":
    coefficients = functools.partial(_restart_coefficients, c=float(c), carry_dtype=carry_dtype)
    sequence = linear_scan.sequence(coefficients)
  else:
    sequence = _sequence(float(c))
  return factory.library_cell(
    KIND,
    init=init,
    initial_carry=_initial_carry(segment_start),
    update=update,
    check=functools.partial(_check_shapes, "rg_lru"),
    sequence=sequence,
    config=config,
  )


def _restart_coefficients(params: RGLRUParams, xs: jax.Array, c: float, carry_dtype: Any):
  """``(a, sqrt(1 - a^2) i u)``: the ``"restart"`` form's ``h' = a h + b``, ``a`` in the
  carry's dtype (the factory's ``carry_dtype`` resolved), ``b`` in ``xs``'s (the compute
  dtype: the outputs')."""
  acc = factory.resolved_carry_dtype(params, carry_dtype)
  a, multiplier, gated = gates(params, xs, c, acc)
  return a, (multiplier * gated).astype(xs.dtype)


KIND = base.CellKind(
  "rg_lru",
  rg_lru,
  RGLRUParams,
  RGLRUCarry,
  None,
  base.Example((("hidden_size", 4), ("num_heads", 2)), input_size=3),  # w_in exercised
)
