"""S5 against float64 NumPy loops of Smith, Warrington and Linderman 2023's equations."""

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxrnn
from jaxrnn.cells.base import HiddenCarry

s5_module = importlib.import_module("jaxrnn.cells.s5")  # jaxrnn.cells.s5 is the factory

B, T = 3, 7
LENGTHS = np.array([T, 4, 0])
RESETS = np.zeros((B, T), bool)
RESETS[0, [0, 3]] = True
RESETS[1, 2] = True
# (hidden_size, state_size, blocks, conj_sym, input_size): with a projection and conjugate
# symmetry; without a projection, in two blocks, without conjugate symmetry
CONFIGS = [(4, 6, 1, True, 3), (3, 8, 2, False, 3)]


def hippo_normal(n):
  """HiPPO-N, entry by entry as the paper defines it (section 4.3, appendix B.1.1):
  ``-(i + 1/2)^1/2 (k + 1/2)^1/2`` below the diagonal, ``-1/2`` on it, ``+`` above."""
  a = np.zeros((n, n))
  for i in range(n):
    for k in range(n):
      if i > k:
        a[i, k] = -np.sqrt(i + 0.5) * np.sqrt(k + 0.5)
      elif i == k:
        a[i, k] = -0.5
      else:
        a[i, k] = np.sqrt(i + 0.5) * np.sqrt(k + 0.5)
  return a


def np_s5(params, xs, h0, lengths, resets, reverse, conj_sym):
  """The paper's equations (ZOH discretisation, diagonal recurrence, readout), float64,
  row by row; a reset starts a segment from zeros (forward: before step t; reverse: after
  reading t + 1, the segment's end); outputs past a row's length are 0."""
  p = {k: None if v is None else np.asarray(v, np.float64) for k, v in params._asdict().items()}
  lam = p["lambda_re"] + 1j * p["lambda_im"]
  delta = np.exp(p["log_step"])
  lam_bar = np.exp(lam * delta)
  b_bar = ((lam_bar - 1.0) / lam)[:, None] * (p["b_tilde"][..., 0] + 1j * p["b_tilde"][..., 1])
  c = p["c_tilde"][..., 0] + 1j * p["c_tilde"][..., 1]
  xs = np.asarray(xs, np.float64)
  ys = np.zeros(xs.shape[:2] + (p["d"].shape[0],))
  finals = []
  for b in range(xs.shape[0]):
    h = np.asarray(h0[b], np.complex128)
    n = lengths[b]
    for t in reversed(range(n)) if reverse else range(n):
      if (t + 1 < n and resets[b, t + 1]) if reverse else resets[b, t]:
        h = np.zeros_like(h)
      u = xs[b, t] if p["w_in"] is None else xs[b, t] @ p["w_in"] + p["b_in"]
      h = lam_bar * h + b_bar @ u
      ys[b, t] = (2.0 if conj_sym else 1.0) * (c @ h).real + p["d"] * u
    finals.append(h)
  return np.stack(finals), ys


def by_imag(eigenvalues):
  """Sorted by imaginary part (the real parts are all -1/2, equal up to rounding)."""
  return eigenvalues[np.argsort(eigenvalues.imag, kind="stable")]


def close(got, want, rtol):
  """Equal within ``rtol`` relative to the largest magnitude of ``want``."""
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(np.abs(want).max(), 1.0))


@functools.cache
def setup(config, dtype, seed=0):
  H, P, J, conj_sym, I = config
  cell = jaxrnn.s5(H, state_size=P, blocks=J, conj_sym=conj_sym, dtype=dtype)

  @jax.jit  # one compilation, not one per eager op
  def draw(key):
    k_p, k_x, k_h = jax.random.split(key, 3)
    params = cell.init(k_p, I)
    h0 = cell.initial_carry(params, (B,)).h
    h0 = jax.random.normal(k_h, h0.shape, h0.dtype)
    return params, jax.random.normal(k_x, (B, T, I), dtype), HiddenCarry(h0)

  return cell, *draw(jax.random.key(seed))


def test_hippo_n_and_its_diagonalisation_match_the_paper_and_numpy():
  for n in (1, 2, 5, 8):
    np.testing.assert_allclose(s5_module.hippo_n(n), hippo_normal(n), rtol=0, atol=1e-12)
  for P, J, conj_sym in [(8, 1, True), (8, 1, False), (12, 3, True), (6, 2, False)]:
    lam, v, v_inv = s5_module.diagonal_hippo(P, J, conj_sym)
    n = P // J
    a = np.kron(np.eye(J), hippo_normal(n))
    want = by_imag(np.linalg.eigvals(a))  # NumPy's general eigendecomposition
    full = np.concatenate([lam, lam.conj()]) if conj_sym else lam
    np.testing.assert_allclose(by_imag(full), want, rtol=0, atol=1e-9 * n)
    np.testing.assert_allclose(a @ v, v * lam[None, :], atol=1e-9 * n)  # A V = V Lambda
    np.testing.assert_allclose(v_inv @ v, np.eye(lam.shape[0]), atol=1e-12)


def test_init_eigenvalues_shapes_and_ranges():
  with jax.enable_x64(True):
    kw = dict(state_size=8, dt_min=0.01, dt_max=0.2, dtype=jnp.float64)
    cells = {c: jaxrnn.s5(4, conj_sym=c, **kw) for c in (True, False)}
    both = jax.jit(lambda key: {c: cell.init(key, 3) for c, cell in cells.items()})
    inits = both(jax.random.key(1))
  want = by_imag(np.linalg.eigvals(hippo_normal(8)))
  for conj_sym, params in inits.items():
    lam = np.asarray(params.lambda_re) + 1j * np.asarray(params.lambda_im)
    full = np.concatenate([lam, lam.conj()]) if conj_sym else lam
    np.testing.assert_allclose(by_imag(full), want, rtol=0, atol=1e-9 * 8)
    Pp = 4 if conj_sym else 8
    shapes = jax.tree.map(lambda a: a.shape, params)
    assert shapes == s5_module.S5Params(
      (Pp,), (Pp,), (Pp, 4, 2), (4, Pp, 2), (4,), (Pp,), (3, 4), (4,)
    )
    log_step = np.asarray(params.log_step)
    assert np.all((log_step >= np.log(0.01)) & (log_step <= np.log(0.2)))
    assert (params.input_size, params.hidden_size, params.state_size) == (3, 4, Pp)
  same_size = jaxrnn.s5(4, state_size=8)
  same = jax.eval_shape(lambda k: same_size.init(k, 4), jax.random.key(1))
  assert same.w_in is None and same.b_in is None and same.input_size == 4  # no projection


def all_runs(cell, impls=("auto",)):
  """``{(reverse, impl): (carry, ys)}`` of `jaxrnn.scan` with lengths and resets, one jit."""

  @jax.jit
  def run(params, xs, carry):
    kw = dict(seq_lengths=LENGTHS, resets=RESETS)
    return {
      (r, impl): jaxrnn.scan(cell, params, xs, carry, reverse=r, impl=impl, **kw)
      for r in (False, True)
      for impl in impls
    }

  return run


@pytest.mark.parametrize("config", CONFIGS)
def test_scan_equals_the_papers_equations_with_lengths_resets_and_reverse(config):
  cell, params, xs, h0 = setup(config, jnp.float32)
  assert cell.coefficients is not None and cell.readout is not None
  assert h0.h.dtype == jnp.complex64
  impls = ("auto", "step") if config == CONFIGS[0] else ("auto",)  # "step": the registry's too
  runs = all_runs(cell, impls)(params, xs, h0)
  for (reverse, _), (carry, ys) in runs.items():
    want_h, want_y = np_s5(params, xs, np.asarray(h0.h), LENGTHS, RESETS, reverse, config[3])
    assert ys.dtype == jnp.float32 and carry.h.dtype == jnp.complex64
    close(ys, want_y, 1e-5)
    close(carry.h, want_h, 1e-5)


def test_float64_equals_the_papers_equations_to_1e_9():
  with jax.enable_x64(True):
    cell, params, xs, h0 = setup(CONFIGS[0], jnp.float64)
    assert h0.h.dtype == jnp.complex128
    for (reverse, _), (carry, ys) in all_runs(cell)(params, xs, h0).items():
      want_h, want_y = np_s5(params, xs, np.asarray(h0.h), LENGTHS, RESETS, reverse, True)
      close(ys, want_y, 1e-9)
      close(carry.h, want_h, 1e-9)


def test_gradients_of_the_linear_recurrence_equal_the_step_loops():
  cell, params, xs, h0 = setup(CONFIGS[0], jnp.float32)

  def loss(params, xs, impl):
    kw = dict(seq_lengths=LENGTHS, resets=RESETS, reverse=True, impl=impl)
    carry, ys = jaxrnn.scan(cell, params, xs, h0, **kw)
    return jnp.sum(jnp.sin(ys)) + jnp.sum(jnp.abs(carry.h) ** 2)

  grads = jax.jit(lambda p, x: [jax.grad(loss, (0, 1))(p, x, i) for i in ("auto", "step")])
  got, want = grads(params, xs)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    close(g, w, 1e-4)


def test_check_grads_float64():
  with jax.enable_x64(True):
    cell, params, xs, h0 = setup(CONFIGS[0], jnp.float64)

    @jax.jit
    def loss(params, xs):
      carry, ys = jaxrnn.scan(cell, params, xs, h0, seq_lengths=LENGTHS, resets=RESETS)
      return jnp.sum(jnp.sin(ys)) + jnp.sum(jnp.abs(carry.h) ** 2)

    check_grads(loss, (params, xs), order=1, modes=("rev",), eps=1e-5)


def test_compute_dtype_keeps_a_complex64_carry():
  _, params, xs, h0 = setup(CONFIGS[0], jnp.float32)
  low, plain = (jaxrnn.s5(4, state_size=6, compute_dtype=c) for c in (jnp.bfloat16, None))
  steps = jax.jit(lambda p, h, x: (low.step(p, h, x), plain.step(p, h, x)))
  (carry, y), (_, want) = steps(params, h0, xs[:, 0])
  assert carry.h.dtype == jnp.complex64 and y.dtype == jnp.bfloat16
  close(np.asarray(y, np.float32), want, 5e-2)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(state_size=5), "even block size"),
    (dict(state_size=8, blocks=3), "not a multiple of blocks=3"),
    (dict(state_size=0), "state_size=0"),
    (dict(state_size=4, conj_sym=1), "conj_sym=1"),
    (dict(state_size=4, dt_min=0.2, dt_max=0.1), "dt_min=0.2 > dt_max=0.1"),
    (dict(state_size=4, dt_min=-1.0), "positive numbers"),
  ],
)
def test_bad_config_is_a_value_error(kwargs, match):
  with pytest.raises(ValueError, match=match):
    jaxrnn.s5(4, **kwargs)


def test_integer_inputs_and_wrong_widths_are_value_errors():
  cell, params, _, h0 = setup(CONFIGS[0], jnp.float32)
  with pytest.raises(ValueError, match="floating dtype"):
    cell.step(params, h0, jnp.ones((B, 3), jnp.int32))
  with pytest.raises(ValueError, match="input_size=3"):
    cell.step(params, h0, jnp.ones((B, 5)))
