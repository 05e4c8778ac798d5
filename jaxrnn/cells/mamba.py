"""Mamba (Gu and Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State
Spaces"): the Mamba block, a selective state space model, as a cell."""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn.cells import _conv, _selective_scan, base

NAME = "mamba"
CHUNK_SIZE = 32
"""The default ``chunk_size`` of `jaxrnn.mamba`'s whole-sequence path, measured on a shared
2-core XLA:CPU (H=256, E=2, N=16, T=1024; medians of 2-3 interleaved rounds): forward+backward
at B=8, chunks of 16 / 32 / 64 took 2.2 / 2.5 / 2.7 s, at B=32 chunks of 8 / 16 / 32 / 64
8.2 / 10.4 / 8.9 / 10.6 s (within the rounds' noise); at H=32, B=8, T=128 (the RL
experiment's minibatch) 16 / 32 / 64 took 17-31 / 18-24 / 19-20 ms and one chunk of 128
66-121 ms. Memory grows with it (B=8: 0.47 / 0.48 / 0.56 GiB)."""


class MambaParams(NamedTuple):
  """Parameters of `jaxrnn.mamba`, all real, laid out for ``x @ w`` (PyTorch's ``Linear``
  weights of the authors' ``mamba_simple.Mamba`` transposed). ``D`` is the block's width,
  ``E D`` the inner width, ``N`` the state size, ``R`` the rank of ``Delta``, ``K`` the
  convolution's width.

  Attributes:
    w_in: ``(input_size, D)`` or None: ``u = x @ w_in + b_in``; None when ``input_size ==
      D`` (then ``u = x``, the paper's block).
    b_in: ``(D,)`` or None, with ``w_in``.
    in_proj: ``(D, 2 E D)``: ``in_proj.weight.T``; columns ``[:E D]`` the ``x`` branch,
      ``[E D:]`` the gate ``z``.
    conv_w: ``(K, E D)``: the depthwise ``conv1d.weight[:, 0, :].T``, row ``K - 1`` on the
      newest input.
    conv_b: ``(E D,)``: ``conv1d.bias``.
    x_proj: ``(E D, R + 2 N)``: ``x_proj.weight.T``, columns ``Delta``'s ``R``, then ``B``,
      then ``C``.
    dt_w: ``(R, E D)``: ``dt_proj.weight.T``.
    dt_b: ``(E D,)``: ``dt_proj.bias``, the inverse softplus of the initial ``Delta``.
    a_log: ``(E D, N)``: ``A = -exp(a_log)`` (``A_log``).
    d: ``(E D,)``: the skip ``D``.
    out_proj: ``(E D, D)``: ``out_proj.weight.T``.
  """

  w_in: jax.Array | None
  b_in: jax.Array | None
  in_proj: jax.Array
  conv_w: jax.Array
  conv_b: jax.Array
  x_proj: jax.Array
  dt_w: jax.Array
  dt_b: jax.Array
  a_log: jax.Array
  d: jax.Array
  out_proj: jax.Array

  output_is_hidden = False
  """The output is the block's readout, not the carry's ``h`` (the SSM state): zoneout,
  which outputs the zoned ``h``, is refused (`jaxrnn.recurrent`)."""
  recurrent_weights = ()  # none: recurrent dropout and weight drop are refused

  @property
  def input_size(self) -> int:
    """The rows of ``w_in``, or D without a projection."""
    return self.hidden_size if self.w_in is None else self.w_in.shape[-2]

  @property
  def hidden_size(self) -> int:
    """D, the block's width: the columns of ``out_proj``."""
    return self.out_proj.shape[-1]

  @property
  def inner_size(self) -> int:
    """E D, the expanded width: the rows of ``a_log``."""
    return self.a_log.shape[-2]

  @property
  def state_size(self) -> int:
    """N, the state per channel: the columns of ``a_log``."""
    return self.a_log.shape[-1]


class MambaCarry(NamedTuple):
  """Carry of `jaxrnn.mamba`: every leaf ``(*batch, F)``, flattened row-major.

  Attributes:
    h: ``(*batch, E D * N)``, the SSM state: ``h.reshape(*batch, E D, N)``.
    conv: ``(*batch, (K - 1) * E D)``, the convolution's window, the last ``K - 1`` inputs
      of the ``x`` branch, oldest first: ``conv.reshape(*batch, K - 1, E D)``.
  """

  h: jax.Array
  conv: jax.Array


def carry_dtype(params: MambaParams, requested: Any = None) -> Any:
  """The carry's and the recurrence's dtype: the factory's ``carry_dtype`` (``requested``)
  resolved for the params (`jaxrnn.cells.base.resolve_carry_dtype`): None gives float32 for
  bfloat16, float16 and float32 params, float64 for float64."""
  return base.resolve_carry_dtype(params.a_log.dtype, requested)


def _wide(dtype: Any) -> Any:
  """float64 for float64, else float32."""
  return jnp.dtype(jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32)


def project(params: MambaParams, x: jax.Array) -> jax.Array:
  """The block's input ``u`` ``(..., D)``: ``x @ w_in + b_in``, or ``x``."""
  return x if params.w_in is None else base.add_bias(x @ params.w_in, params.b_in)


def branches(params: MambaParams, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(x branch, gate z)``, each ``(..., E D)``: the input projection of ``u``."""
  xz = project(params, x) @ params.in_proj
  return xz[..., : params.inner_size], xz[..., params.inner_size :]


def selection(params: MambaParams, xc: jax.Array, acc: Any):
  """``(Delta, B, C)`` from the convolved branch ``xc`` ``(..., E D)``: ``Delta = softplus(
  dt_proj(x_proj(xc)[:R]))`` ``(..., E D)`` in ``acc``, as ``selective_scan_ref`` with
  ``delta_softplus``; ``B`` and ``C`` ``(..., N)``."""
  R, N = params.dt_w.shape[-2], params.state_size
  x_dbl = xc @ params.x_proj
  dt, b, c = x_dbl[..., :R], x_dbl[..., R : R + N], x_dbl[..., R + N :]
  delta = jax.nn.softplus(base.add_bias(dt @ params.dt_w, params.dt_b)).astype(acc)
  return delta, b, c


def output(params: MambaParams, ch: jax.Array, xc: jax.Array, z: jax.Array):
  """The block's output ``(..., D)``: ``((C h + D xc) * silu(z)) @ out_proj``, from the
  contraction ``C h`` ``(..., E D)`` (`jaxrnn.cells._selective_scan.contract`)."""
  y = ch + base.rowwise(params.d, xc) * xc
  return (y * jax.nn.silu(z)) @ params.out_proj


def _check_shapes(params: MambaParams, carry: MambaCarry, x: jax.Array) -> None:
  ED, N, K1 = params.inner_size, params.state_size, params.conv_w.shape[-2] - 1
  base.check_step_input(NAME, x, params.input_size, carry.h, ED * N)
  if carry.conv.shape != carry.h.shape[:-1] + (K1 * ED,):
    raise ValueError(
      f"{NAME}.step: carry.conv has shape {carry.conv.shape}; expected "
      f"{carry.h.shape[:-1] + (K1 * ED,)} (h's batch shape, then (K - 1) * E D)."
    )


def _step(
  params: MambaParams, carry: MambaCarry, x: jax.Array, *, compute_dtype: Any, requested: Any
):
  """One step: the authors' ``Mamba.step``, with the state in `carry_dtype`."""
  base.check_params(NAME, params, MambaParams)
  x = jnp.asarray(x) if not isinstance(x, jax.Array | jax.core.Tracer) else x
  _check_shapes(params, carry, x)
  p, _, x = base.cast_to_compute(NAME, params, (), x, compute_dtype)
  acc, batch = carry_dtype(params, requested), x.shape[:-1]
  ED, N = p.inner_size, p.state_size
  xb, z = branches(p, x)
  window = carry.conv.reshape(batch + (-1, ED)).astype(xb.dtype)
  xc, window = _conv.step(xb, window, p.conv_w, p.conv_b)
  xc = jax.nn.silu(xc)
  delta, b, c = selection(p, xc, acc)
  d_a, d_bx = _selective_scan.discretize(p.a_log, delta, b, xc)
  h = d_a * carry.h.reshape(batch + (ED, N)).astype(acc) + d_bx
  y = output(p, _selective_scan.contract(h, c, xc), xc, z)
  new = MambaCarry(h.reshape(carry.h.shape), window.reshape(carry.conv.shape))
  return base.like(new, carry), y


def _sequence(compute_dtype: Any, requested: Any, chunk_size: int):
  """The whole sequence: one convolution (`jaxrnn.cells._conv.sequence`), the selection of
  every step, the selective scan in chunks (`jaxrnn.cells._selective_scan.chunked`), one
  readout; run in the order the steps run (time flipped for ``reverse``)."""

  def run(params, carry, xs, mask, reverse, unroll, resets=None, reset_carry=None):
    del unroll  # no loop to unroll
    p, _, xs = base.cast_to_compute(NAME, params, (), xs, compute_dtype)
    acc, (T, n) = carry_dtype(params, requested), xs.shape[:2]
    if T == 0:
      return carry, jnp.zeros((0, n, p.hidden_size), xs.dtype)
    flip = lambda v: v if v is None or not reverse else v[::-1]  # noqa: E731
    xs, mask, resets = flip(xs), flip(mask), flip(resets)
    xb, z = branches(p, xs)
    window = lambda c: c.conv.reshape(n, -1, p.inner_size).astype(xb.dtype)  # noqa: E731
    reset_window = None if resets is None else window(reset_carry)
    xc, last_window = _conv.sequence(
      xb, window(carry), p.conv_w, p.conv_b, mask, resets, reset_window
    )
    xc = jax.nn.silu(xc)
    valid = None if mask is None else mask[..., None]
    r = None if resets is None else resets[..., None]
    reset_h = None if resets is None else reset_carry.h[None].astype(acc)
    h0 = carry.h.astype(acc)
    delta, b, c = selection(p, xc, acc)
    ch, last = _selective_scan.chunked(p.a_log, h0, xc, delta, b, c, valid, r, reset_h, chunk_size)
    ys = output(p, ch, xc, z)
    ys = ys if valid is None else jnp.where(valid, ys, jnp.zeros_like(ys))
    new = MambaCarry(last, last_window.reshape(carry.conv.shape))
    return base.like(new, carry), flip(ys)

  return run


def dt_bias(key: jax.Array, shape, dt_min: float, dt_max: float, floor: float, dtype):
  """``dt_proj.bias`` as ``mamba_simple.Mamba`` draws it: ``dt`` log-uniform in ``[dt_min,
  dt_max]``, clamped below at ``floor``, and its inverse softplus ``dt + log(-expm1(-dt))``."""
  wide = _wide(dtype)
  u = jax.random.uniform(key, shape, wide)
  dt = jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
  dt = jnp.maximum(dt, floor)
  return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)


def _init(key: jax.Array, input_size: int, *, config: dict[str, Any]) -> MambaParams:
  """``mamba_simple.Mamba``'s initialisation; ``w_in``, ``b_in`` as ``torch.nn.Linear``'s."""
  base.check_input_size(input_size)
  D, N, K, dtype = (
    config["hidden_size"],
    config["state_size"],
    config["conv_width"],
    config["dtype"],
  )
  ED, R = config["expand"] * D, _rank(config)
  k_w, k_b, k_xz, k_cw, k_cb, k_x, k_dw, k_db, k_out = jax.random.split(key, 9)
  linear = lambda k, rows, cols: base.uniform(k, (rows, cols), rows**-0.5, dtype)  # noqa: E731
  w_in = b_in = None
  if input_size != D:
    w_in, b_in = linear(k_w, input_size, D), base.uniform(k_b, (D,), input_size**-0.5, dtype)
  a_log = jnp.log(jnp.arange(1, N + 1, dtype=_wide(dtype)))
  return MambaParams(
    w_in,
    b_in,
    linear(k_xz, D, 2 * ED),
    base.uniform(k_cw, (K, ED), K**-0.5, dtype),  # Conv1d's default: fan-in K per channel
    base.uniform(k_cb, (ED,), K**-0.5, dtype),
    linear(k_x, ED, R + 2 * N),
    base.uniform(k_dw, (R, ED), R**-0.5, dtype),  # dt_init="random", dt_scale=1
    dt_bias(k_db, (ED,), config["dt_min"], config["dt_max"], config["dt_init_floor"], dtype),
    jnp.tile(a_log, (ED, 1)).astype(dtype),  # S4D-real: A = -(1, 2, ..., N) on every channel
    jnp.ones((ED,), dtype),
    linear(k_out, ED, D),
  )


def _rank(config: dict[str, Any]) -> int:
  """R: ``config["dt_rank"]``, or ``ceil(D / 16)`` for None (``mamba_simple``'s "auto")."""
  rank = config["dt_rank"]
  return math.ceil(config["hidden_size"] / 16) if rank is None else rank


def _initial_carry(params: MambaParams, batch_shape: Any = (), *, requested: Any) -> MambaCarry:
  base.check_params(NAME, params, MambaParams, "initial_carry")
  batch, ED = base.as_batch_shape(batch_shape), params.inner_size
  dtype, K1 = carry_dtype(params, requested), params.conv_w.shape[-2] - 1
  return MambaCarry(
    jnp.zeros(batch + (ED * params.state_size,), dtype), jnp.zeros(batch + (K1 * ED,), dtype)
  )


def _check_config(config: dict[str, Any]) -> None:
  for name in ("hidden_size", "expand", "state_size", "conv_width", "chunk_size"):
    base.check_positive(name, config[name])
  base.check_positive("dt_rank", config["dt_rank"], allow_none=True)
  values = [config[k] for k in ("dt_min", "dt_max", "dt_init_floor")]
  if any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in values) or not (
    0 < config["dt_min"] <= config["dt_max"] and config["dt_init_floor"] >= 0
  ):
    raise ValueError(
      f"dt_min={values[0]!r}, dt_max={values[1]!r}, dt_init_floor={values[2]!r}: expected "
      "0 < dt_min <= dt_max and dt_init_floor >= 0."
    )
  base.check_carry_dtype(config["carry_dtype"])
  for name in ("dtype", "compute_dtype"):
    value = config[name]
    if value is not None and not jnp.issubdtype(jnp.dtype(value), jnp.floating):
      raise ValueError(f"{name}={value!r}: expected a real floating dtype.")


def mamba(
  hidden_size: int,
  *,
  expand: int = 2,
  state_size: int = 16,
  conv_width: int = 4,
  dt_rank: int | None = None,
  dt_min: float = 1e-3,
  dt_max: float = 0.1,
  dt_init_floor: float = 1e-4,
  dtype: Any = jnp.float32,
  carry_dtype: Any = None,
  compute_dtype: Any = None,
  chunk_size: int = CHUNK_SIZE,
) -> base.Cell:
  """The Mamba block of Gu and Dao 2023 (section 3.4, figure 3; its selective SSM, S6, is
  section 3.2's algorithm 2), as the authors' ``mamba_simple.Mamba`` computes it::

      u     = x                                   (x @ w_in + b_in when input_size != D)
      x', z = split(u @ in_proj)                  (*batch, E D) each
      xc    = silu(conv_b + sum_j conv_w[j] * x'_{t-K+1+j})   (causal depthwise, width K)
      dt, B, C = split(xc @ x_proj)               (R,), (N,), (N,)
      Delta = softplus(dt @ dt_w + dt_b)          (*batch, E D)
      A     = -exp(a_log)                         (E D, N), real diagonal
      h_t   = exp(Delta A) * h_{t-1} + (Delta B) * xc         (*batch, E D, N)
      y     = ((h_t C) + d * xc) * silu(z) @ out_proj         (*batch, D)

  with ``h_t C`` the sum over N. ``exp(Delta A)`` is the zero-order hold of ``A`` and
  ``Delta B`` the Euler step of ``B``, the simplification the authors' ``selective_scan_ref``
  uses (section 3.6's note). The carry `MambaCarry(h, conv)` holds the SSM state and the
  convolution's window (the last ``K - 1`` inputs of the ``x'`` branch), so streaming one
  step at a time equals the whole sequence exactly, and a reset restarts both from the
  initial carry (zeros: the convolution's zero padding at a sequence's start).

  Widths: ``hidden_size`` is the block's width D, its output's; when ``init`` gets another
  ``input_size`` the cell first projects the input to D with a learned dense layer
  (``w_in``, ``b_in``; None when the sizes match), so stacks and bidirectional layers work
  unchanged. The weights' layout is `MambaParams`'s (PyTorch's transposed).

  The whole sequence (`jaxrnn.scan`'s default path) is one projection over all ``T * N``
  rows, one convolution with the carried window, lengths and resets (gathers, no loop), the
  selection (``Delta``, ``B``, ``C``) of every step, then a `jax.lax.scan` over time chunks
  of ``chunk_size`` steps carrying ``h``: in each chunk the ``(L, N, E D, N)`` coefficients,
  one `jaxrnn.linear_recurrence` and the contraction ``h C`` at once, under
  `jax.checkpoint`, so only one chunk's states are live (forward and backward) instead of
  the whole sequence's, ``E N`` times the input's (the authors' CUDA kernel keeps them in
  SRAM instead); then one readout. ``step`` is ``Mamba.step`` and serves streaming and
  export. The state and the recurrence run in
  `carry_dtype` (float32 for bfloat16 params), the matmuls in the compute dtype.

  Initialisation (``mamba_simple.Mamba``, section 3.6): ``a_log = log(1, ..., N)`` on every
  channel (S4D-real), ``d`` ones, ``dt_b`` the inverse softplus of ``dt`` drawn
  log-uniform on ``[dt_min, dt_max]`` (clamped at ``dt_init_floor``), ``dt_w`` uniform on
  ``+-R^-1/2``; ``in_proj``, ``x_proj``, ``out_proj`` and ``w_in``, ``b_in``
  ``torch.nn.Linear``'s ``U(+-fan_in^-1/2)``, ``conv_w`` and ``conv_b`` ``Conv1d``'s
  ``U(+-K^-1/2)``; no bias on ``in_proj``, ``x_proj`` or ``out_proj`` (the authors'
  default).

  Args:
    hidden_size: D, the block's width.
    expand: E, the inner width's factor (``E D``).
    state_size: N, the SSM state per channel (``d_state``).
    conv_width: K, the convolution's width (``d_conv``).
    dt_rank: R, the rank of ``Delta``'s projection; None: ``ceil(D / 16)``.
    dt_min, dt_max, dt_init_floor: ``Delta``'s initial range and floor.
    dtype: the params' dtype (real).
    carry_dtype: the carry's and the recurrence's, as every cell's
      (`jaxrnn.cells.builtin`): None gives float32 for bfloat16, float16 and float32
      params, float64 for float64; ``jnp.bfloat16`` keeps a bfloat16 state.
    compute_dtype: the matmuls' dtype; None: the params'.
    chunk_size: L, the time steps per chunk of the whole-sequence path (``CHUNK_SIZE``); the
      values do not depend on it.

  Returns:
    A `Cell` with carry `MambaCarry(h, conv)`, ``h`` ``(*batch, E D * N)`` and ``conv``
    ``(*batch, (K - 1) * E D)``, zeros, in `carry_dtype`; output ``(*batch, D)``.

  Raises:
    ValueError: for a non-positive size, ``expand``, ``conv_width``, ``dt_rank`` or
      ``chunk_size``,
      ``dt_min``/``dt_max`` not ``0 < dt_min <= dt_max``, or a non-real dtype.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> cell = jaxrnn.mamba(hidden_size=4, state_size=3)
    >>> params = cell.init(jax.random.key(0), input_size=5)  # 5 != 4: w_in projects
    >>> params.in_proj.shape, params.x_proj.shape, params.a_log.shape, params.conv_w.shape
    ((4, 16), (8, 7), (8, 3), (4, 8))
    >>> carry, ys = jaxrnn.scan(cell, params, jnp.ones((2, 7, 5)))
    >>> ys.shape, carry.h.shape, carry.conv.shape
    ((2, 7, 4), (2, 24), (2, 24))
  """
  config = dict(locals())  # every argument of the factory, as called
  _check_config(config)
  init = functools.partial(_init, config=config)
  step = functools.partial(_step, compute_dtype=compute_dtype, requested=carry_dtype)
  initial_carry = functools.partial(_initial_carry, requested=carry_dtype)
  for arg in ("dtype", "carry_dtype", "compute_dtype"):
    config[arg] = base.dtype_name(config[arg])
  sequence = _sequence(compute_dtype, carry_dtype, chunk_size)
  return base.Cell.library(init, initial_carry, step, NAME, tuple(sorted(config.items())), sequence)


KIND = base.CellKind(
  NAME,
  mamba,
  MambaParams,
  MambaCarry,
  None,
  # small (compile time is most of a check): w_in, a two-input window and resets still met
  base.Example(
    (("hidden_size", 4), ("expand", 1), ("state_size", 2), ("conv_width", 3)), input_size=3
  ),
)
