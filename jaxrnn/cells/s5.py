"""S5 (Smith, Warrington and Linderman 2023, "Simplified State Space Layers for Sequence
Modeling"): a diagonal complex linear state space model from the HiPPO-N initialisation."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxrnn.cells import base, linear_scan
from jaxrnn.cells.base import HiddenCarry


class S5Params(NamedTuple):
  """Parameters of `jaxrnn.s5`, all real; ``P'`` is the number of stored states (``P / 2``
  with ``conj_sym``, else ``P``), ``H`` the hidden (output) size.

  Attributes:
    lambda_re, lambda_im: ``(P',)``: the real and imaginary parts of the diagonal state
      matrix ``Lambda`` (continuous time).
    b_tilde: ``(P', H, 2)``: ``B~ = V^-1 B``, its real part ``[..., 0]``, imaginary ``[..., 1]``.
    c_tilde: ``(H, P', 2)``: ``C~ = C V``, real part ``[..., 0]``, imaginary ``[..., 1]``.
    d: ``(H,)``: the feedthrough ``D``, a vector (a diagonal matrix).
    log_step: ``(P',)``: ``log Delta``, one time step per state.
    w_in: ``(input_size, H)`` or None: the input projection, for ``x @ w_in``; None where
      ``input_size == H`` (no projection).
    b_in: ``(H,)`` or None: the input projection's bias, None with ``w_in``.
  """

  lambda_re: jax.Array
  lambda_im: jax.Array
  b_tilde: jax.Array
  c_tilde: jax.Array
  d: jax.Array
  log_step: jax.Array
  w_in: jax.Array | None = None
  b_in: jax.Array | None = None

  @property
  def input_size(self) -> int:
    """The input size: the rows of ``w_in``, else H."""
    return self.hidden_size if self.w_in is None else self.w_in.shape[-2]

  @property
  def hidden_size(self) -> int:
    """H, the output width: the length of ``d``."""
    return self.d.shape[-1]

  @property
  def state_size(self) -> int:
    """P', the stored (complex) states: the length of ``lambda_re``."""
    return self.lambda_re.shape[-1]


def hippo_n(n: int) -> np.ndarray:
  """The HiPPO-N matrix ``(n, n)``, float64: the normal part of HiPPO-LegS, ``A_LegS + p p^T``.

  ``A_LegS[i, k] = -sqrt(2i + 1) sqrt(2k + 1)`` below the diagonal, ``-(i + 1)`` on it,
  0 above; ``p_i = sqrt(i + 1/2)`` (as the reference's ``make_NPLR_HiPPO``).
  """
  q = np.sqrt(1.0 + 2.0 * np.arange(n))
  legs = -(np.tril(q[:, None] * q[None, :]) - np.diag(np.arange(n)))
  p = np.sqrt(np.arange(n) + 0.5)
  return legs + p[:, None] * p[None, :]


def diagonal_hippo(state_size: int, blocks: int, conj_sym: bool):
  """``(Lambda (P',), V (P, P'), V^-1 (P', P))``, complex128, as the reference's ``train.py``.

  Each of ``blocks`` diagonal blocks is HiPPO-N of size ``P / blocks``, diagonalised as the
  reference's ``make_DPLR_HiPPO`` does: HiPPO-N is ``-1/2 I`` plus a skew-symmetric ``K``,
  so ``Lambda = -1/2 + i w`` with ``w, V`` the eigenpairs of the Hermitian ``-i K``
  (ascending ``w``). With ``conj_sym`` each block keeps its first half (``w < 0``; the other
  half are their conjugates). ``V^-1`` is ``V^H`` (``V`` is unitary), block by block.
  """
  n = state_size // blocks
  s = hippo_n(n)
  skew = s - np.diag(np.diagonal(s))
  w, v = np.linalg.eigh(-1j * skew)
  lam = np.mean(np.diagonal(s)) + 1j * w
  keep = n // 2 if conj_sym else n
  lam, v = lam[:keep], v[:, :keep]
  eye = np.eye(blocks)
  return np.tile(lam, blocks), np.kron(eye, v), np.kron(eye, v.conj().T)


def state_dtype(params: S5Params, requested: Any = None) -> Any:
  """The carry's complex dtype: the complex counterpart (`jaxrnn.cells.base.complex_of`) of
  the factory's ``carry_dtype`` (``requested``) resolved for the params: complex128 for
  float64 params, else complex64."""
  return base.complex_of(base.resolve_carry_dtype(params.lambda_re.dtype, requested))


def discretize(params: S5Params, requested: Any = None):
  """Zero-order hold: ``(Lambda_bar (P',), B_bar_re (P', H), B_bar_im (P', H))``.

  ``Lambda_bar = exp(Lambda Delta)``, ``B_bar = (Lambda_bar - 1) / Lambda * B~`` row by row,
  ``Delta = exp(log_step)``; in the carry's precision (`state_dtype`'s parts).
  """
  real = jnp.finfo(state_dtype(params, requested)).dtype
  cast = lambda a: a.astype(real)  # noqa: E731
  re, im, step = cast(params.lambda_re), cast(params.lambda_im), jnp.exp(cast(params.log_step))
  lam = lax.complex(re, im)
  lam_bar = jnp.exp(lax.complex(re * step, im * step))
  gain = ((lam_bar - 1.0) / lam)[:, None]
  b_re, b_im = cast(params.b_tilde[..., 0]), cast(params.b_tilde[..., 1])
  return lam_bar, gain.real * b_re - gain.imag * b_im, gain.real * b_im + gain.imag * b_re


def project(params: S5Params, x: jax.Array, dtype: Any) -> jax.Array:
  """``u = x @ w_in + b_in`` ``(..., H)`` in ``dtype`` (``x`` itself without a projection).

  Floating inputs are cast to ``dtype``; others are a `ValueError` (the dtype policy).
  """
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(
      f"s5.step: x has dtype {x.dtype}; expected a floating dtype (inputs are cast to the "
      "compute dtype; embed integer token ids first)."
    )
  x = x.astype(dtype)
  if params.w_in is None:
    return x
  return base.add_bias(x @ params.w_in.astype(dtype), params.b_in.astype(dtype))


def make_coefficients(compute_dtype: Any, requested: Any = None):
  """``coefficients(params, x) -> (a, b)``: ``a = Lambda_bar``, ``b = B_bar u``, complex
  (`state_dtype` for the factory's ``carry_dtype``, ``requested``)."""

  def coefficients(params: S5Params, x: jax.Array):
    dt = params.lambda_re.dtype if compute_dtype is None else compute_dtype
    u = project(params, x, dt)
    lam_bar, b_re, b_im = discretize(params, requested)
    real = b_re.dtype
    bu = lax.complex((u @ b_re.T.astype(dt)).astype(real), (u @ b_im.T.astype(dt)).astype(real))
    return jnp.broadcast_to(lam_bar, bu.shape), bu

  return coefficients


def make_readout(compute_dtype: Any, conj_sym: bool):
  """``readout(params, h, x) -> y = Re(C~ h) + D u`` (``2 Re(C~ h) + D u`` with ``conj_sym``)."""

  def readout(params: S5Params, h: jax.Array, x: jax.Array):
    dt = params.lambda_re.dtype if compute_dtype is None else compute_dtype
    u = project(params, x, dt)
    c_re, c_im = params.c_tilde[..., 0].astype(dt), params.c_tilde[..., 1].astype(dt)
    y = h.real.astype(dt) @ c_re.T - h.imag.astype(dt) @ c_im.T
    y = 2.0 * y if conj_sym else y
    return y + base.rowwise(params.d.astype(dt), u) * u

  return readout


def check_config(config: dict[str, Any]) -> None:
  """The factory's arguments checked eagerly: a `ValueError` naming the bad value."""
  for name in ("hidden_size", "state_size", "blocks"):
    base.check_positive(name, config[name])
  base.check_carry_dtype(config["carry_dtype"])
  linear_scan.check_flags(conj_sym=config["conj_sym"])
  P, J = config["state_size"], config["blocks"]
  if P % J:
    raise ValueError(f"state_size={P} is not a multiple of blocks={J}.")
  if config["conj_sym"] and (P // J) % 2:
    raise ValueError(
      f"state_size={P}, blocks={J}: conj_sym=True needs an even block size (P / blocks = "
      f"{P // J}); each block keeps half its states, the other half being their conjugates."
    )
  dt = [config["dt_min"], config["dt_max"]]
  if any(isinstance(v, bool) or not isinstance(v, int | float) or not v > 0 for v in dt):
    raise ValueError(f"dt_min={dt[0]!r}, dt_max={dt[1]!r}: expected positive numbers.")
  if dt[0] > dt[1]:
    raise ValueError(f"dt_min={dt[0]!r} > dt_max={dt[1]!r}: expected dt_min <= dt_max.")


def make_init(config: dict[str, Any]):
  """``init(key, input_size) -> S5Params`` as the reference's ``S5SSM.setup`` draws them."""
  H, P, dtype = config["hidden_size"], config["state_size"], jnp.dtype(config["dtype"])
  lam, v, v_inv = diagonal_hippo(P, config["blocks"], config["conj_sym"])
  work = jnp.float64 if dtype == jnp.float64 else jnp.float32  # the products V^-1 B and C V
  lecun = jax.nn.initializers.lecun_normal

  def init(key, input_size):
    base.check_input_size(input_size)
    k_b, k_c, k_d, k_s, k_w, k_wb = jax.random.split(key, 6)
    real = lambda m: jnp.asarray(m.real, work)  # noqa: E731
    imag = lambda m: jnp.asarray(m.imag, work)  # noqa: E731
    b = lecun()(k_b, (P, H), work)  # fan_in P, as the reference's lecun_normal() on (P, H)
    b_tilde = jnp.stack([real(v_inv) @ b, imag(v_inv) @ b], axis=-1)
    c = lecun(batch_axis=0)(k_c, (H, P, 2), work)  # per row, fan_in P ("trunc_standard_normal")
    c_re, c_im = c[..., 0], c[..., 1]
    c_tilde = jnp.stack([c_re @ real(v) - c_im @ imag(v), c_re @ imag(v) + c_im @ real(v)], axis=-1)
    d = jax.random.normal(k_d, (H,), work)
    low, high = np.log(config["dt_min"]), np.log(config["dt_max"])
    log_step = jax.random.uniform(k_s, (lam.shape[0],), work, low, high)
    w_in = b_in = None
    if input_size != H:  # the dense projection to H, torch.nn.Linear's default init
      scale = base.hidden_scale(input_size)
      w_in = base.uniform(k_w, (input_size, H), scale, dtype)
      b_in = base.uniform(k_wb, (H,), scale, dtype)
    cast = lambda a: jnp.asarray(a).astype(dtype)  # noqa: E731
    parts = (lam.real, lam.imag, b_tilde, c_tilde, d, log_step)
    return S5Params(*(cast(a) for a in parts), w_in, b_in)

  return init


def s5(
  hidden_size: int,
  *,
  state_size: int,
  blocks: int = 1,
  conj_sym: bool = True,
  dt_min: float = 0.001,
  dt_max: float = 0.1,
  dtype: Any = jnp.float32,
  carry_dtype: Any = None,
  compute_dtype: Any = None,
) -> base.Cell:
  r"""The S5 layer's state space model (Smith, Warrington and Linderman 2023, ICLR), as a cell.

  A diagonal, complex, linear state space model with ``P`` states (section 3 and 4 of the
  paper; ``s5/ssm.py`` of its reference code), discretised by zero-order hold with one
  learned time step per state::

      u_t      = x_t W_in + b_in          (only where input_size != H; else u_t = x_t)
      Delta    = exp(log_step)                                   (P',)
      Lambda   = lambda_re + i lambda_im                         (P',)
      Lambda_b = exp(Lambda * Delta)                             (ZOH, section 2.2)
      B_b      = ((Lambda_b - 1) / Lambda)[:, None] * B~         (P', H)
      h_t      = Lambda_b * h_{t-1} + B_b u_t                    complex (P',)
      y_t      = 2 Re(C~ h_t) + D * u_t     (conj_sym; without it Re(C~ h_t) + D * u_t)

  With ``conj_sym`` (section 4.3 / appendix, the default) only ``P' = P / 2`` states are
  stored: the other half are their complex conjugates, whose contribution to ``C~ h`` is the
  conjugate, hence ``2 Re``. The recurrence is linear in ``h``, so `jaxrnn.scan` computes
  the coefficients of the whole sequence at once and runs them through
  `jaxrnn.linear_recurrence` (the cell declares ``coefficients`` and ``readout``, and its
  ``sequence`` is that path); ``step`` serves streaming and export. The paper's layer maps
  width H to width H; here ``hidden_size`` is H, the output width, and an input of another
  size is first projected to H by a learned dense layer (``w_in``, ``b_in``, None when
  ``input_size == hidden_size``), so stacks and bidirectional layers work unchanged. The
  paper's nonlinearity (GELU or GLU), normalisation and residual around the SSM are left to
  the model that stacks it.

  Initialisation (section 4.3 and appendix B; the reference's ``ssm_init.py`` and
  ``train.py``): ``Lambda`` is the diagonalised HiPPO-N matrix (the normal part of
  HiPPO-LegS, `hippo_n`; `diagonal_hippo`), on each of ``blocks`` diagonal blocks of size
  ``P / blocks``, with eigenvectors ``V``; ``B~ = V^-1 B`` with ``B`` ``(P, H)`` from
  ``lecun_normal``; ``C~ = C V`` with ``C`` ``(H, P)`` complex, each row's real and imaginary
  parts ``lecun_normal`` (fan-in ``P``; the reference's ``trunc_standard_normal``); ``D``
  standard normal; ``log_step`` uniform in ``[log dt_min, log dt_max]``; ``w_in`` and
  ``b_in`` PyTorch's ``nn.Linear`` default, U(-1/sqrt(input_size), 1/sqrt(input_size)).

  Weight layout: `S5Params` (all real arrays; complex ones with a trailing axis of 2, real
  then imaginary, as the reference stores ``B`` and ``C``).

  Args:
    hidden_size: H, the output width (the paper's H).
    state_size: P, the state size of the paper (with ``conj_sym`` the carry holds P / 2).
    blocks: J, the number of HiPPO-N blocks ``Lambda`` is initialised with (the paper's
      block-diagonal initialisation; the reference's ``--blocks``).
    conj_sym: enforce conjugate symmetry (store P / 2 states, output ``2 Re(C~ h)``).
    dt_min, dt_max: the range ``Delta`` is drawn from, log-uniformly.
    dtype, compute_dtype: the params' dtype and the dtype of the projections and readout
      (None: the params').
    carry_dtype: the carry's, as every cell's (`jaxrnn.cells.factory`), as its complex
      counterpart: None gives complex64 (complex128 for float64 params); there is no
      16-bit complex dtype, so ``jnp.bfloat16`` gives complex64 too. The discretisation
      and the recurrence run in its precision.

  Returns:
    A `Cell` with carry `HiddenCarry(h)`, ``h`` complex ``(*batch, P')``; the output is
    ``y`` ``(*batch, H)``, real.

  Raises:
    ValueError: a non-positive size, ``state_size`` not a multiple of ``blocks`` (of an
      even block size with ``conj_sym``), a non-bool ``conj_sym``, or a bad ``dt`` range.

  Example:
    >>> import jax, jax.numpy as jnp, jaxrnn
    >>> cell = jaxrnn.s5(hidden_size=4, state_size=8)
    >>> params = cell.init(jax.random.key(0), input_size=3)
    >>> carry, ys = jaxrnn.scan(cell, params, jnp.ones((5, 7, 3)))
    >>> ys.shape, ys.dtype, carry.h.shape, carry.h.dtype
    ((5, 7, 4), dtype('float32'), (5, 4), dtype('complex64'))
  """
  config = dict(locals())  # the factory's arguments
  check_config(config)
  compute_dtype = None if compute_dtype is None else jnp.dtype(compute_dtype)
  coefficients = make_coefficients(compute_dtype, carry_dtype)
  readout = make_readout(compute_dtype, conj_sym)
  run = linear_scan.sequence(coefficients, readout=readout)

  def step(params, carry, x):
    base.check_params(NAME, params, S5Params)
    x = jnp.asarray(x) if not isinstance(x, jax.Array | jax.core.Tracer) else x
    base.check_step_input(NAME, x, params.input_size, carry.h, params.state_size)
    a, b = coefficients(params, x)
    h = a * carry.h.astype(a.dtype) + b
    return HiddenCarry(h.astype(carry.h.dtype)), readout(params, h, x)

  def sequence(params, carry, xs, mask, reverse, unroll, resets=None, reset_carry=None):
    new, ys = run(params, carry, xs, mask, reverse, unroll, resets, reset_carry)
    return base.like(new, carry), ys  # the carry keeps its dtype, as the step's

  def initial_carry(params, batch_shape=()):
    base.check_params(NAME, params, S5Params, "initial_carry")
    shape = base.as_batch_shape(batch_shape) + (params.state_size,)
    return HiddenCarry(jnp.zeros(shape, state_dtype(params, carry_dtype)))

  for arg in ("dtype", "carry_dtype", "compute_dtype"):
    config[arg] = base.dtype_name(config[arg])
  config = tuple(sorted(config.items()))
  init = make_init(dict(config))
  return base.Cell.library(
    init, initial_carry, step, NAME, config, sequence, None, coefficients, readout
  )


NAME = "s5"
KIND = base.CellKind(
  NAME,
  s5,
  S5Params,
  HiddenCarry,
  None,
  base.Example((("hidden_size", 4), ("state_size", 4)), input_size=3),
)
