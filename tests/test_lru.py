"""The LRU (`jaxrnn.lru`) against the paper's appendix code as a float64 NumPy loop, against
memax's LRU with the same weights, against finite differences, and its ring initialisation.

memax's ``LRU(recurrent_size=N, hidden_size=H, key)`` maps a width-H input to a width-H
output (no projection: ``w_in`` and ``b_in`` are None here); its weights map as
``nu_log``, ``theta_log``, ``gamma_log`` and ``d = D`` unchanged, ``b_re = B_re.T``,
``b_im = B_im.T`` (memax's ``(N, H)``, here ``(H, N)``), ``c_re = C_re.T``, ``c_im = C_im.T``
(memax's ``(H, N)``, here ``(N, H)``); its carry ``((lambda^k, h), start)`` holds ``h``. memax
0.1.1's ``backward_map`` annotates its output as width N, so it runs only with ``N == H``.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxrnn
from jaxrnn.cells import linear_scan
from jaxrnn.cells.base import HiddenCarry
from jaxrnn.cells.lru import LRUParams, carry_dtype, diag_lambda

B, T, I, H, N = 3, 7, 3, 4, 5
LENGTHS = np.array([T, 0, 4])


def use_method(monkeypatch, how):
  """`jaxrnn.linear_recurrence`'s method ``how`` on this backend, whatever its default."""
  monkeypatch.setitem(linear_scan.METHODS, jax.default_backend(), how)


def paper_forward(p, u_seq, h):
  """The paper's appendix A ``forward_LRU``, with its parallel scan written as the loop it
  computes, from the carry ``h``, float64: ``(h, ys)``."""
  nu_log, theta_log, B_re, B_im, C_re, C_im, D, gamma_log = p
  Lambda = np.exp(-np.exp(nu_log) + 1j * np.exp(theta_log))
  B_norm = (B_re + 1j * B_im) * np.expand_dims(np.exp(gamma_log), axis=-1)
  C = C_re + 1j * C_im
  ys = []
  for u in u_seq:
    h = Lambda * h + B_norm @ u
    ys.append((C @ h).real + D * u)
  return h, np.array(ys).reshape(len(u_seq), D.shape[0])


def paper_params(params: LRUParams):
  """The paper's eight arrays (its ``(N, H)`` ``B`` and ``(H, N)`` ``C``) in float64, and the
  input projection as a function (the identity without one)."""
  p = [np.asarray(a, np.float64) for a in params[2:]]
  nu_log, theta_log, gamma_log, b_re, b_im, c_re, c_im, d = p
  paper = (nu_log, theta_log, b_re.T, b_im.T, c_re.T, c_im.T, d, gamma_log)
  if params.w_in is None:
    return paper, lambda x: x
  w, b = np.asarray(params.w_in, np.float64), np.asarray(params.b_in, np.float64)
  return paper, lambda x: x @ w + b


def paper_row(params, xs, h0, length, resets, reverse):
  """One row through `paper_forward`, segment by segment: its valid part ``[0, length)``, read
  backwards with ``reverse``; a segment starts from zeros (the initial carry), the first one
  read from ``h0``; outputs past the length are zero."""
  paper, project = paper_params(params)
  ys = np.zeros((xs.shape[0], params.hidden_size))
  starts = [t for t in range(1, length) if resets[t]]
  segments = list(zip([0, *starts], [*starts, length], strict=True))
  if reverse:
    segments = segments[::-1]
  h = h0
  for i, (s, e) in enumerate(segments):
    if i > 0 or (resets[0] and length > 0 and not reverse):  # reverse: h0 enters at the end
      h = np.zeros_like(h0)
    order = np.arange(s, e)[::-1] if reverse else np.arange(s, e)
    h, ys[order] = paper_forward(paper, project(xs[order]), h)
  return h, ys


def make(rng, dtype, input_size=I, state_size=N):
  cell = jaxrnn.lru(H, state_size=state_size, r_min=0.5, max_phase=math.pi, dtype=dtype)
  params = cell.init(jax.random.key(1), input_size)
  xs = jnp.asarray(rng.standard_normal((B, T, input_size)), dtype)
  h0 = rng.standard_normal((B, state_size)) + 1j * rng.standard_normal((B, state_size))
  return cell, params, xs, jnp.asarray(h0, carry_dtype(params))


@pytest.mark.parametrize(
  "dtype,input_size,how",
  [
    ("float32", I, "sequential"),
    ("float32", H, "associative"),
    ("float64", I, "associative"),
    ("float64", H, "sequential"),
  ],
)
def test_scan_against_the_papers_code(dtype, input_size, how, rng, monkeypatch):
  """`jaxrnn.scan` with lengths (T, 0, 4), resets and reverse against `paper_forward` per
  segment: the linear-recurrence path by each method (and ``impl="step"`` with the
  sequential one), 1e-5 relative in float32, 1e-9 in float64, with (I=3) and without (I=H)
  the input projection."""
  use_method(monkeypatch, how)
  impls = ("auto", "step") if how == "sequential" else ("auto",)  # the step loop: twice
  tol = dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else dict(rtol=1e-9, atol=1e-9)
  resets = np.zeros((B, T), bool)
  resets[0, [0, 3]] = True
  resets[2, 2] = True
  with jax.enable_x64(dtype == "float64"):
    cell, params, xs, h0 = make(rng, dtype, input_size)

    @jax.jit
    def run(params, xs, h0):
      kw = dict(seq_lengths=LENGTHS, resets=resets)
      return {
        (reverse, impl): jaxrnn.scan(
          cell, params, xs, HiddenCarry(h0), reverse=reverse, impl=impl, **kw
        )
        for reverse in (False, True)
        for impl in impls
      }

    out = run(params, xs, h0)
    assert out[(False, "auto")][0].h.dtype == jnp.dtype(
      "complex64" if dtype == "float32" else "complex128"
    )
  x64, h64 = np.asarray(xs, np.float64), np.asarray(h0, np.complex128)
  for reverse in (False, True):
    rows = [paper_row(params, x64[b], h64[b], LENGTHS[b], resets[b], reverse) for b in range(B)]
    for impl in impls:
      carry, ys = out[(reverse, impl)]
      np.testing.assert_allclose(carry.h, np.stack([r[0] for r in rows]), **tol)
      np.testing.assert_allclose(ys, np.stack([r[1] for r in rows]), **tol)


def memax_weights(m) -> tuple:
  """memax's LRU weights, in its field order."""
  return (m.nu_log, m.theta_log, m.gamma_log, m.B_re, m.B_im, m.C_re, m.C_im, m.D)


def from_memax(nu_log, theta_log, gamma_log, B_re, B_im, C_re, C_im, D) -> LRUParams:
  """memax's LRU weights (or their gradients) as `LRUParams` (see the module docstring)."""
  return LRUParams(None, None, nu_log, theta_log, gamma_log, B_re.T, B_im.T, C_re.T, C_im.T, D)


def memax_rows(m, xs, starts, h0):
  """memax's LRU over each row (its own scan, its own resets), from the carry ``h0``:
  ``(last h, ys)``. memax mixes dtypes implicitly, so it runs under standard promotion."""

  def row(x, start, h):
    carry = ((jnp.ones_like(h), h), jnp.zeros((), bool))
    ((_, hs), _), ys = m(carry, (x, start))
    return hs[-1], ys

  with jax.numpy_dtype_promotion("standard"):
    return jax.vmap(row)(xs, starts, h0)


def test_equals_memax_with_the_same_weights(rng):
  """memax's LRU (N = H, no projection) and `jaxrnn.scan` from the same weights and carry,
  with resets, forward and reverse (memax over the flipped rows): values to 1e-5 relative,
  and the gradient of a loss of the outputs with respect to every weight to 1e-4."""
  from memax.equinox.semigroups.lru import LRU

  with jax.numpy_dtype_promotion("standard"):  # recurrent_size = hidden_size: see above
    m = LRU(H, H, jax.random.key(3))
  cell, params = jaxrnn.lru(H, state_size=H), from_memax(*memax_weights(m))
  xs = jnp.asarray(rng.standard_normal((B, T, H)), jnp.float32)
  h0 = jnp.asarray(rng.standard_normal((B, H)) + 1j * rng.standard_normal((B, H)), jnp.complex64)
  resets = np.zeros((B, T), bool)
  resets[0, [0, 3]] = True
  resets[2, 5] = True
  # reverse: memax reads the flipped row; a segment [s, e] starts (flipped) where e + 1 did
  flipped = np.concatenate([np.zeros((B, 1), bool), resets[:, :0:-1]], axis=1)

  def ours(params, reverse):
    carry, ys = jaxrnn.scan(cell, params, xs, HiddenCarry(h0), resets=resets, reverse=reverse)
    return carry.h, ys

  def theirs(m, reverse):
    if not reverse:
      return memax_rows(m, xs, jnp.asarray(resets), h0)
    h, ys = memax_rows(m, xs[:, ::-1], jnp.asarray(flipped), h0)
    return h, ys[:, ::-1]

  import equinox as eqx

  def loss(run, weights):  # both directions: their outputs, and a loss of them to differentiate
    out = [run(weights, reverse) for reverse in (False, True)]
    return sum(jnp.sum(jnp.sin(ys)) for _, ys in out), out

  ours_loss = functools.partial(loss, ours)
  theirs_loss = functools.partial(loss, lambda w, r: theirs(eqx.tree_at(memax_weights, m, w), r))
  (_, got), g = jax.jit(jax.value_and_grad(ours_loss, has_aux=True))(params)
  with jax.numpy_dtype_promotion("standard"):
    (_, want), g_m = jax.jit(jax.value_and_grad(theirs_loss, has_aux=True))(memax_weights(m))
  for (h, ys), (h_m, ys_m) in zip(got, want, strict=True):  # forward, then reverse
    np.testing.assert_allclose(ys, ys_m, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h, h_m, rtol=1e-5, atol=1e-5)
  assert g.w_in is None and g.b_in is None
  for name, a, e in zip(LRUParams._fields[2:], g[2:], from_memax(*g_m)[2:], strict=True):
    np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5 * float(jnp.abs(e).max()), err_msg=name)


@pytest.mark.parametrize("how", linear_scan.METHOD_NAMES)
def test_check_grads_float64(how, rng, monkeypatch):
  """`jax.test_util.check_grads` (finite differences, float64 params, complex128 carry) of
  `jaxrnn.scan` with lengths and resets, with respect to the params (projection included),
  the complex initial carry and the inputs; forward by one method, reverse by the other."""
  use_method(monkeypatch, how)
  resets = np.zeros((B, T), bool)
  resets[0, 3] = resets[2, 1] = True
  with jax.enable_x64(True):
    cell, params, xs, h0 = make(rng, "float64")
    assert params.w_in is not None and h0.dtype == jnp.complex128

    @jax.jit
    def f(params, h0, xs):
      kw = dict(seq_lengths=LENGTHS, resets=resets, reverse=how == "associative")
      carry, ys = jaxrnn.scan(cell, params, xs, HiddenCarry(h0), **kw)
      return carry.h, ys

    check_grads(f, (params, h0, xs), order=1, modes=("rev",), eps=1e-5)


def test_ring_initialisation():
  """The paper's ring: ``|lambda|`` within ``[r_min, r_max]`` with ``|lambda|^2`` uniform
  there (Kolmogorov-Smirnov distance below 0.03 over 4096 draws), the phase within
  ``[0, max_phase]`` and uniform, ``gamma = sqrt(1 - |lambda|^2)``, ``B`` and ``C`` at the
  paper's scales; and the defaults (0, 1, 6.28; N = H) inside the unit disc, gamma finite."""
  r_min, r_max, max_phase, n = 0.4, 0.9, math.pi / 4, 4096
  cell = jaxrnn.lru(8, state_size=n, r_min=r_min, r_max=r_max, max_phase=max_phase)
  p = cell.init(jax.random.key(0), 8)
  assert p.w_in is None and p.b_in is None  # input_size == H: no projection
  modulus = np.exp(-np.exp(np.asarray(p.nu_log, np.float64)))
  phase = np.exp(np.asarray(p.theta_log, np.float64))
  lam = np.asarray(diag_lambda(p))
  np.testing.assert_allclose(np.abs(lam), modulus, rtol=1e-6)
  assert r_min * (1 - 1e-6) <= modulus.min() and modulus.max() <= r_max * (1 + 1e-6)
  assert 0 < phase.min() and phase.max() <= max_phase * (1 + 1e-6)

  def ks(sample, lo, hi):
    cdf = (np.sort(sample) - lo) / (hi - lo)
    return np.max(np.abs(cdf - (np.arange(1, len(sample) + 1) - 0.5) / len(sample)))

  assert ks(modulus**2, r_min**2, r_max**2) < 0.03
  assert ks(phase, 0.0, max_phase) < 0.03
  np.testing.assert_allclose(np.exp(np.asarray(p.gamma_log)), np.sqrt(1 - modulus**2), rtol=1e-5)
  for w, scale in ((p.b_re, 1 / math.sqrt(16)), (p.b_im, 1 / math.sqrt(16))):
    assert abs(float(jnp.std(w)) / scale - 1) < 0.05
  for w in (p.c_re, p.c_im):
    assert abs(float(jnp.std(w)) * math.sqrt(n) - 1) < 0.05

  default = jaxrnn.lru(4)
  assert dict(default.config) == dict(
    carry_dtype=None,
    compute_dtype=None,
    dtype="float32",
    hidden_size=4,
    max_phase=6.28,
    r_max=1.0,
    r_min=0.0,
    state_size=None,
  )
  p = default.init(jax.random.key(1), 3)
  assert p.state_size == 4 and p.w_in.shape == (3, 4) and p.b_in.shape == (4,)
  modulus = np.exp(-np.exp(np.asarray(p.nu_log, np.float64)))
  assert (0 < modulus).all() and (modulus < 1).all() and np.isfinite(p.gamma_log).all()


def test_config_policy_and_errors(rng):
  """The config rebuilds the cell; stacked bidirectional layers project I, then 2H; a bfloat16
  compute dtype keeps the complex64 carry and stays near float32; bad arguments, zoneout (the
  output is a readout, not the state) and a real carry are ValueErrors naming the value."""
  cell = jaxrnn.lru(H, state_size=N, r_min=0.5, r_max=0.99, max_phase=1.0)
  assert jaxrnn.lru(**dict(cell.config)) == cell
  model = jaxrnn.rnn_layers("lru", H, num_layers=2, bidirectional=True, state_size=N)
  params = model.init(jax.random.key(0), I)
  assert params[0].forward.w_in.shape == (I, H) and params[1].forward.w_in.shape == (2 * H, H)
  xs = jnp.asarray(rng.standard_normal((B, T, I)), jnp.float32)

  params = cell.init(jax.random.key(0), I)
  low = jaxrnn.lru(**dict(cell.config, compute_dtype="bfloat16"))
  c_low, ys_low = jaxrnn.scan(low, params, xs)
  c, ys = jaxrnn.scan(cell, params, xs)
  assert c_low.h.dtype == jnp.complex64 and ys_low.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(ys_low, np.float32), ys, atol=0.1)

  with pytest.raises(ValueError, match="zoneout=0.1: the 'lru' cell's output is a readout"):
    jaxrnn.rnn_layers("lru", H, zoneout=0.1)  # its output is not its (complex) state
  with pytest.raises(ValueError, match="complex"):
    cell.step(params, HiddenCarry(jnp.zeros((B, N), jnp.float32)), xs[:, 0])
  bad = [
    dict(r_min=0.9, r_max=0.5),
    dict(r_max=1.5),
    dict(r_min=-0.1),
    dict(max_phase=0.0),
    dict(r_min=True),
    dict(state_size=0),
    dict(dtype="int32"),
    dict(compute_dtype="complex64"),
  ]
  for kwargs in bad:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
      jaxrnn.lru(H, **kwargs)
