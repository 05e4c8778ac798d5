"""The Linear Recurrent Unit, LRU (Orvieto et al. 2023, "Resurrecting Recurrent Neural Networks
for Long Sequences"): a complex diagonal linear recurrence from a ring initialisation."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxrnn.cells import base
from jaxrnn.cells.base import HiddenCarry

NAME = "lru"


class LRUParams(NamedTuple):
  """Parameters of `jaxrnn.lru`, all real (a complex weight is held as its two parts).

  Attributes:
    w_in: ``(input_size, H)`` or None: the input projection ``u = x @ w_in + b_in``; None
      when ``input_size == H`` (then ``u = x``, the paper's layer).
    b_in: ``(H,)`` or None, with ``w_in``.
    nu_log: ``(N,)``: ``|lambda| = exp(-exp(nu_log))``.
    theta_log: ``(N,)``: ``arg(lambda) = exp(theta_log)``.
    gamma_log: ``(N,)``: the learned normalisation ``gamma = exp(gamma_log)`` of ``B``.
    b_re, b_im: ``(H, N)`` each: ``B u`` is ``u @ (b_re + i b_im)``: the paper's ``B``
      ``(N, H)`` transposed.
    c_re, c_im: ``(N, H)`` each: ``C h`` is ``h @ (c_re + i c_im)``: the paper's ``C``
      ``(H, N)`` transposed.
    d: ``(H,)``: the real skip ``D``.

  From memax's ``LRU(recurrent_size=N, hidden_size=H)`` (input width H, so ``w_in`` and
  ``b_in`` are None): ``nu_log``, ``theta_log``, ``gamma_log`` and ``d = D`` as they are,
  ``b_re = B_re.T``, ``b_im = B_im.T``, ``c_re = C_re.T``, ``c_im = C_im.T``; its carry
  ``((lambda^k, h), start)`` holds ``h`` (``tests/test_lru.py`` checks the two agree).
  """

  w_in: jax.Array | None
  b_in: jax.Array | None
  nu_log: jax.Array
  theta_log: jax.Array
  gamma_log: jax.Array
  b_re: jax.Array
  b_im: jax.Array
  c_re: jax.Array
  c_im: jax.Array
  d: jax.Array

  @property
  def input_size(self) -> int:
    """The rows of ``w_in``, or H without a projection."""
    return self.d.shape[-1] if self.w_in is None else self.w_in.shape[-2]

  @property
  def hidden_size(self) -> int:
    """H, the output width (and the projected input's): the length of ``d``."""
    return self.d.shape[-1]

  @property
  def state_size(self) -> int:
    """N, the width of the complex state ``h``: the length of ``nu_log``."""
    return self.nu_log.shape[-1]


def carry_dtype(params: LRUParams, requested: Any = None) -> Any:
  """The complex dtype of ``h``: the complex counterpart (`jaxrnn.cells.base.complex_of`) of
  the factory's ``carry_dtype`` (``requested``) resolved for the params
  (`jaxrnn.cells.base.resolve_carry_dtype`): complex64 for float32 (or narrower) params,
  complex128 for float64 ones."""
  return base.complex_of(base.resolve_carry_dtype(params.nu_log.dtype, requested))


def _real(params: LRUParams, requested: Any = None) -> Any:
  """The real dtype of the recurrence: that of `carry_dtype`'s parts."""
  return jnp.finfo(carry_dtype(params, requested)).dtype


def diag_lambda(params: LRUParams, requested: Any = None) -> jax.Array:
  """``lambda = exp(-exp(nu_log) + i exp(theta_log))`` ``(N,)``, in `carry_dtype`."""
  real = _real(params, requested)
  nu, theta = params.nu_log.astype(real), params.theta_log.astype(real)
  return jnp.exp(lax.complex(-jnp.exp(nu), jnp.exp(theta)))


def project(params: LRUParams, x: jax.Array) -> jax.Array:
  """The layer's input ``u`` ``(..., H)``: ``x @ w_in + b_in``, or ``x`` without a projection."""
  return x if params.w_in is None else base.add_bias(x @ params.w_in, params.b_in)


def coefficients(
  params: LRUParams, x: jax.Array, compute_dtype: Any = None, requested: Any = None
) -> tuple[jax.Array, jax.Array]:
  """``(a, b)`` of ``h' = a h + b`` for every row of ``x`` ``(..., I)``, complex ``(..., N)``:
  ``a = lambda``, ``b = gamma * (u B)``. The matmuls run in the compute dtype, ``lambda``,
  ``gamma`` and the products in `carry_dtype` (``requested``: the factory's ``carry_dtype``)."""
  p, _, x = base.cast_to_compute(NAME, params, (), x, compute_dtype)
  u, real = project(p, x), _real(params, requested)
  gamma = jnp.exp(params.gamma_log.astype(real))
  bu_re, bu_im = (u @ p.b_re).astype(real), (u @ p.b_im).astype(real)
  b = lax.complex(base.rowwise(gamma, bu_re) * bu_re, base.rowwise(gamma, bu_im) * bu_im)
  return jnp.broadcast_to(base.rowwise(diag_lambda(params, requested), b), b.shape), b


def readout(params: LRUParams, h: jax.Array, x: jax.Array, compute_dtype: Any = None) -> jax.Array:
  """The output ``y = Re(C h) + D * u`` ``(..., H)`` from the states ``h`` ``(..., N)`` and
  the inputs ``x`` ``(..., I)``, in the compute dtype."""
  p, _, x = base.cast_to_compute(NAME, params, (), x, compute_dtype)
  dt = x.dtype
  ch = jnp.real(h).astype(dt) @ p.c_re - jnp.imag(h).astype(dt) @ p.c_im
  u = project(p, x)
  return ch + base.rowwise(p.d, u) * u


def _check_carry(params: LRUParams, carry: HiddenCarry, x: jax.Array) -> None:
  """The step's eager checks: shapes (`jaxrnn.cells.base.check_step_input`) and a complex
  ``h`` (its real part alone would drop the state's phase)."""
  base.check_step_input(NAME, x, params.input_size, carry.h, params.state_size)
  if not jnp.issubdtype(carry.h.dtype, jnp.complexfloating):
    raise ValueError(
      f"{NAME}.step: carry.h has dtype {carry.h.dtype}; expected a complex dtype "
      f"({jnp.dtype(carry_dtype(params)).name}, what initial_carry gives)."
    )


def _check_config(config: dict[str, Any]) -> None:
  base.check_positive("hidden_size", config["hidden_size"])
  base.check_positive("state_size", config["state_size"], allow_none=True)
  for name in ("r_min", "r_max", "max_phase"):
    value = config[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
      raise ValueError(f"{name}={value!r}: expected a float.")
  r_min, r_max = config["r_min"], config["r_max"]
  if not 0.0 <= r_min < r_max <= 1.0:
    raise ValueError(
      f"r_min={r_min!r}, r_max={r_max!r}: expected 0 <= r_min < r_max <= 1 (the ring of |lambda|)."
    )
  if not config["max_phase"] > 0.0:
    raise ValueError(f"max_phase={config['max_phase']!r}: expected a positive float.")
  base.check_carry_dtype(config["carry_dtype"])
  for name in ("dtype", "compute_dtype"):
    value = config[name]
    if value is not None and not jnp.issubdtype(jnp.dtype(value), jnp.floating):
      raise ValueError(f"{name}={value!r}: expected a real floating dtype (params stay real).")


def _init(key: jax.Array, input_size: int, *, config: dict[str, Any]) -> LRUParams:
  """The paper's initialisation (its appendix A), the projection as ``torch.nn.Linear``'s."""
  base.check_input_size(input_size)
  H, dtype = config["hidden_size"], jnp.dtype(config["dtype"])
  N = H if config["state_size"] is None else config["state_size"]
  r_min, r_max, max_phase = config["r_min"], config["r_max"], config["max_phase"]
  k_u1, k_u2, k_bre, k_bim, k_cre, k_cim, k_d, k_in = jax.random.split(key, 8)
  wide = jnp.dtype(jnp.float64 if dtype == jnp.float64 else jnp.float32)  # at least float32
  tiny = jnp.finfo(wide).tiny  # u in (0, 1): no log(0)
  u1 = jax.random.uniform(k_u1, (N,), wide, minval=tiny)
  u2 = jax.random.uniform(k_u2, (N,), wide, minval=tiny)
  r2 = u1 * (r_max**2 - r_min**2) + r_min**2  # |lambda|^2, uniform on the ring's area
  nu_log = jnp.log(-0.5 * jnp.log(r2))
  theta_log = jnp.log(max_phase * u2)
  gamma_log = 0.5 * jnp.log1p(-r2)  # log sqrt(1 - |lambda|^2)
  normal = lambda k, shape, scale: (jax.random.normal(k, shape, wide) / scale).astype(dtype)  # noqa: E731
  w_in = b_in = None
  if input_size != H:
    k_w, k_b = jax.random.split(k_in)
    scale = base.hidden_scale(input_size)
    w_in = base.uniform(k_w, (input_size, H), scale, dtype)
    b_in = base.uniform(k_b, (H,), scale, dtype)
  return LRUParams(
    w_in,
    b_in,
    nu_log.astype(dtype),
    theta_log.astype(dtype),
    gamma_log.astype(dtype),
    normal(k_bre, (H, N), (2 * H) ** 0.5),
    normal(k_bim, (H, N), (2 * H) ** 0.5),
    normal(k_cre, (N, H), N**0.5),
    normal(k_cim, (N, H), N**0.5),
    normal(k_d, (H,), 1.0),
  )


def _initial_carry(params: LRUParams, batch_shape: Any = (), *, requested: Any) -> HiddenCarry:
  base.check_params(NAME, params, LRUParams, "initial_carry")
  batch = base.as_batch_shape(batch_shape)
  return HiddenCarry(jnp.zeros(batch + (params.state_size,), carry_dtype(params, requested)))


def _step(params: LRUParams, carry: HiddenCarry, x: jax.Array, *, compute_dtype, requested):
  base.check_params(NAME, params, LRUParams)
  x = jnp.asarray(x) if not isinstance(x, jax.Array | jax.core.Tracer) else x
  _check_carry(params, carry, x)
  a, b = coefficients(params, x, compute_dtype, requested)
  h = a * carry.h.astype(a.dtype) + b
  return HiddenCarry(h.astype(carry.h.dtype)), readout(params, h, x, compute_dtype)


def lru(
  hidden_size: int,
  *,
  state_size: int | None = None,
  r_min: float = 0.0,
  r_max: float = 1.0,
  max_phase: float = 6.28,
  dtype: Any = jnp.float32,
  carry_dtype: Any = None,
  compute_dtype: Any = None,
) -> base.Cell:
  """The Linear Recurrent Unit of Orvieto et al. 2023 (sections 3.2 to 3.4, appendix A)::

      u  = x @ w_in + b_in            (only when input_size != H; else u = x)
      lambda = exp(-exp(nu_log) + i exp(theta_log))        (N,), complex, |lambda| < 1
      h' = lambda * h + exp(gamma_log) * (B u)             (*batch, N), complex
      y  = Re(C h') + D * u                                (*batch, H), real

  with ``B = b_re + i b_im`` and ``C = c_re + i c_im`` (the params hold every complex
  weight as its real and imaginary parts: params are never complex, so checkpoints,
  export and sharding see real arrays only) and ``gamma = exp(gamma_log)`` the paper's
  learned normalisation (its appendix code). The carry `HiddenCarry(h)` is complex:
  complex64 for float32 params, complex128 for float64.

  Widths: the paper maps a width-H input to a width-H output. Here ``hidden_size`` is the
  output width H as for every other cell, and when ``input_size != H`` the cell first
  projects the input to H with a learned dense layer (``w_in``, ``b_in``; both None when
  the sizes match), so `stack` and `bidirectional` (2H into the next layer) work
  unchanged; ``D * u`` reads the projected input.

  The step is linear in ``h`` with coefficients from ``x`` alone, so the cell declares them
  (`Cell`'s ``coefficients`` and ``readout``): `jaxrnn.scan` runs a whole sequence as one
  matmul, one `jaxrnn.linear_recurrence` (lengths, resets and reverse folded in) and one
  readout matmul; ``step`` serves streaming and export.

  Initialisation (the paper's appendix A, its section 3.3 ring): ``|lambda|^2`` uniform
  on ``[r_min^2, r_max^2]`` (so ``lambda`` is uniform on the ring's area) and
  ``arg(lambda)`` uniform on ``[0, max_phase]``: ``nu_log = log(-log(|lambda|^2) / 2)``,
  ``theta_log = log(arg lambda)`` (each ``u`` drawn from ``(0, 1)``, never 0);
  ``gamma_log = log(sqrt(1 - |lambda|^2))``; ``b_re``, ``b_im`` from
  ``N(0, 1 / (2H))``; ``c_re``, ``c_im`` from ``N(0, 1 / N)``; ``d`` from ``N(0, 1)``;
  ``w_in`` and ``b_in`` from ``U(-1/sqrt(input_size), 1/sqrt(input_size))``
  (``torch.nn.Linear``'s default).

  Args:
    hidden_size: H, the output width.
    state_size: N, the width of the complex state; None: N = H.
    r_min, r_max: the ring of ``|lambda|`` at initialisation, ``0 <= r_min < r_max <= 1``
      (the paper's code defaults, 0 and 1).
    max_phase: the largest ``arg(lambda)`` at initialisation (the paper's code: 6.28).
    dtype: the params' dtype (real).
    carry_dtype: the carry's, as every cell's (`jaxrnn.cells.factory`), as its complex
      counterpart: None gives complex64 for bfloat16, float16 and float32 params,
      complex128 for float64; there is no 16-bit complex dtype, so ``jnp.bfloat16`` gives
      complex64 too.
    compute_dtype: the matmuls' dtype; None: the params'. ``lambda``, ``gamma`` and the
      recurrence stay in the carry's complex dtype.

  Returns:
    A `Cell` with carry `HiddenCarry(h)`, ``h`` complex ``(*batch, N)``, output
    ``(*batch, H)``.

  Raises:
    ValueError: for a non-positive size, a ring outside ``0 <= r_min < r_max <= 1``, a
      non-positive ``max_phase`` or a non-real dtype.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> cell = jaxrnn.lru(hidden_size=4, state_size=8)
    >>> params = cell.init(jax.random.key(0), input_size=3)
    >>> carry, ys = jaxrnn.scan(cell, params, jnp.ones((5, 7, 3)))
    >>> ys.shape, carry.h.shape, carry.h.dtype
    ((5, 7, 4), (5, 8), dtype('complex64'))
  """
  config = dict(locals())  # every argument of the factory, as called
  _check_config(config)
  init = functools.partial(_init, config=config)
  dtypes = dict(compute_dtype=compute_dtype, requested=carry_dtype)
  step = functools.partial(_step, **dtypes)
  for arg in ("dtype", "carry_dtype", "compute_dtype"):
    config[arg] = base.dtype_name(config[arg])
  return base.Cell.library(
    init,
    functools.partial(_initial_carry, requested=carry_dtype),
    step,
    NAME,
    tuple(sorted(config.items())),
    coefficients=functools.partial(coefficients, **dtypes),
    readout=functools.partial(readout, compute_dtype=compute_dtype),
  )


KIND = base.CellKind(
  NAME,
  lru,
  LRUParams,
  HiddenCarry,
  None,
  base.Example((("hidden_size", 4), ("state_size", 3)), input_size=3),  # the projection too
)
