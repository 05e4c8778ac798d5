"""`jaxrnn.linear_recurrence` against a Python loop of each segment, and a user's linear cell.

The reference runs every row's segments one at a time in plain JAX (forward, or from each
segment's end in reverse), so its autodiff is an independent gradient for the primitive's
hand-written VJP.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxrnn
from jaxrnn import testing
from jaxrnn.cells import linear_scan
from jaxrnn.testing import check_cell

B, T, S = 3, 6, (2, 2)  # batch, time, state shape
METHODS = ("sequential", "associative")
LENGTHS = np.array([6, 4, 0])
RESETS = np.zeros((B, T), bool)
RESETS[0, [0, 3]] = RESETS[1, 2] = RESETS[1, 5] = True  # row 1's reset at 5 is padding


def reference(a, b, h0, resets, reset_value, lengths, reverse):
  """``(h_final, hs)`` by looping over each row's segments, each computed alone."""
  finals, rows = [], []
  for r in range(a.shape[0]):
    n = int(lengths[r])
    starts = sorted({0} | {t for t in range(n) if resets[r, t]})
    bounds = list(zip(starts, [*starts[1:], n], strict=True)) if n else []
    hs = [jnp.zeros_like(h0[r])] * a.shape[1]
    h_final = h0[r]
    for i, (s, e) in enumerate(bounds):
      enters = (i == len(bounds) - 1) if reverse else (i == 0 and not resets[r, 0])
      h = h0[r] if enters else reset_value
      for t in reversed(range(s, e)) if reverse else range(s, e):
        h = a[r, t] * h + b[r, t]
        hs[t] = h
      if i == (0 if reverse else len(bounds) - 1):
        h_final = h
    finals.append(h_final)
    rows.append(jnp.stack(hs))
  return jnp.stack(finals), jnp.stack(rows)


def inputs(dtype, seed=0):
  rng = np.random.default_rng(seed)

  def draw(shape, scale=1.0):
    v = rng.uniform(-scale, scale, shape)
    if jnp.issubdtype(dtype, jnp.complexfloating):
      v = v + 1j * rng.uniform(-scale, scale, shape)
    return jnp.asarray(v, dtype)

  a, b = draw((B, T, *S), 0.95), draw((B, T, *S))
  return a, b, draw((B, *S)), draw(S), draw((B, T, *S)), draw((B, *S))


def loss(f, a, b, h0, reset_value, w, v):
  h_final, hs = f(a, b, h0, reset_value)
  return jnp.real(jnp.sum(w * hs) + jnp.sum(v * h_final)), (h_final, hs)


def compare(method, dtype, reverse, resets, lengths, rtol, grad_rtol):
  a, b, h0, reset_value, w, v = inputs(dtype)
  kw = dict(resets=None if resets is None else jnp.asarray(resets), reverse=reverse)
  kw.update(seq_lengths=None if lengths is None else jnp.asarray(lengths), method=method)
  ours = lambda a, b, h0, rv: jaxrnn.linear_recurrence(a, b, h0, reset_value=rv, **kw)  # noqa: E731
  rs = np.zeros((B, T), bool) if resets is None else resets
  ls = np.full(B, T) if lengths is None else lengths
  want_f = lambda a, b, h0, rv: reference(a, b, h0, rs, rv, ls, reverse)  # noqa: E731
  args = (a, b, h0, reset_value, w, v)
  grad = lambda f: jax.value_and_grad(loss, argnums=(1, 2, 3, 4), has_aux=True)(f, *args)  # noqa: E731
  (_, got), got_g = grad(ours)
  (_, want), want_g = grad(want_f)
  for g, e in zip(got, want, strict=True):
    np.testing.assert_allclose(g, e, rtol=rtol, atol=rtol)
  for g, e in zip(got_g, want_g, strict=True):
    np.testing.assert_allclose(g, e, rtol=grad_rtol, atol=grad_rtol)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("masks", [False, True])
def test_equals_loop_float32(method, dtype, reverse, masks):
  resets, lengths = (RESETS, LENGTHS) if masks else (None, None)
  compare(method, dtype, reverse, resets, lengths, 1e-5, 1e-4)


@pytest.mark.parametrize("masks", ["resets", "lengths"])
def test_auto_equals_loop(masks):
  resets, lengths = (RESETS, None) if masks == "resets" else (None, LENGTHS)
  compare("auto", jnp.complex64, True, resets, lengths, 1e-5, 1e-4)


@pytest.mark.parametrize("method", ["sequential", "associative"])
@pytest.mark.parametrize("dtype", ["float64", "complex128"])
def test_equals_loop_float64(method, dtype):
  with jax.enable_x64(True):
    for reverse in (False, True):
      compare(method, jnp.dtype(dtype), reverse, RESETS, LENGTHS, 1e-9, 1e-9)


@pytest.mark.parametrize("method", ["sequential", "associative"])
def test_check_grads_float64(method):
  with jax.enable_x64(True):
    a, b, h0, reset_value, _, _ = inputs(jnp.float64)
    kw = dict(resets=jnp.asarray(RESETS), seq_lengths=jnp.asarray(LENGTHS), method=method)

    @jax.jit  # compiled once: check_grads evaluates it many times
    def f(a, b, h0, rv):
      return jaxrnn.linear_recurrence(a, b, h0, reset_value=rv, reverse=True, **kw)

    check_grads(f, (a, b, h0, reset_value), order=2, modes=["rev"])


def test_layouts_and_defaults():
  a, b, h0, _, _, _ = inputs(jnp.float32)
  h, hs = jaxrnn.linear_recurrence(a, b, h0)
  h_t, hs_t = jaxrnn.linear_recurrence(a.swapaxes(0, 1), b.swapaxes(0, 1), h0, time_major=True)
  np.testing.assert_allclose(hs_t.swapaxes(0, 1), hs, rtol=1e-6)
  np.testing.assert_allclose(h_t, h, rtol=1e-6)
  # two batch axes, said by seq_lengths; a broadcast (per-state constant) decay; h0 zeros
  a1, b2 = jnp.full(S, 0.5), jnp.reshape(b, (1, B, T, *S))
  lengths = jnp.asarray(LENGTHS)[None]
  h2, hs2 = jaxrnn.linear_recurrence(a1, b2, seq_lengths=lengths)
  want = reference(jnp.broadcast_to(a1, b.shape), b, jnp.zeros_like(h0), RESETS * 0, 0, LENGTHS, 0)
  np.testing.assert_allclose(hs2[0], want[1], rtol=1e-6)
  np.testing.assert_allclose(h2[0], want[0], rtol=1e-6)
  assert hs2.shape == (1, B, T, *S) and h2.shape == (1, B, *S)
  h0_back, empty = jaxrnn.linear_recurrence(a[:, :0], b[:, :0], h0)  # T = 0 returns h0
  assert empty.shape == (B, 0, *S) and bool((h0_back == h0).all())


def test_errors():
  a = jnp.ones((B, T, 2))
  with pytest.raises(ValueError, match="method='fast'"):
    jaxrnn.linear_recurrence(a, a, method="fast")
  with pytest.raises(ValueError, match=r"h0 has shape \(3, 5\); expected"):
    jaxrnn.linear_recurrence(a, a, jnp.ones((3, 5)))
  with pytest.raises(ValueError, match="expected shapes that broadcast"):
    jaxrnn.linear_recurrence(a, jnp.ones((B, T, 3)))
  with pytest.raises(ValueError, match=r"seq_lengths must lie in \[0, T=6\]"):
    jaxrnn.linear_recurrence(a, a, seq_lengths=jnp.array([7, 1, 1]))
  with pytest.raises(ValueError, match="resets has dtype"):
    jaxrnn.linear_recurrence(a, a, resets=jnp.ones((B, T)))


# A user's RG-LRU-like cell (De et al. 2024): h' = a h + sqrt(1 - a^2) u, a gated decay.
def init(key, input_size, hidden_size=4):
  k1, k2 = jax.random.split(key)
  w = jax.random.normal(k1, (input_size, 2 * hidden_size)) / input_size**0.5
  return {"w": w, "lam": jax.random.normal(k2, (hidden_size,))}


def initial_carry(params, batch_shape=()):
  return jnp.zeros(tuple(batch_shape) + params["lam"].shape, params["lam"].dtype)


def coefficients(params, x):
  r, u = jnp.split(x.astype(params["w"].dtype) @ params["w"], 2, axis=-1)
  lam = jnp.broadcast_to(params["lam"], r.shape)
  a = jnp.exp(-8.0 * jax.nn.sigmoid(r) * jax.nn.softplus(lam))
  return a, jnp.sqrt(1.0 - a**2) * u


def readout(params, h, x):
  return jnp.tanh(h)


def step(params, h, x):
  a, b = coefficients(params, x)
  h = a * h + b
  return h, readout(params, h, x)


CELL = jaxrnn.Cell(
  init, initial_carry, step, "rg_lru_like", coefficients=coefficients, readout=readout
)


@pytest.mark.parametrize("check", list(testing.CHECKS))  # one at a time: each under 10 s
def test_user_cell_passes_check_cell(check):
  assert check_cell(CELL, 3, checks=[check]) == {check: "passed"}


@pytest.mark.parametrize("reverse", [False, True])
def test_user_cell_takes_the_parallel_path(monkeypatch, reverse):
  calls = []
  recurrence = linear_scan.recurrence
  monkeypatch.setattr(linear_scan, "recurrence", lambda *a: calls.append(a[-1]) or recurrence(*a))
  monkeypatch.setitem(linear_scan.METHODS, jax.default_backend(), "associative")
  params = CELL.init(jax.random.key(0), 3)
  xs = jax.random.normal(jax.random.key(1), (B, T, 3))
  kw = dict(seq_lengths=jnp.asarray(LENGTHS), resets=jnp.asarray(RESETS), reverse=reverse)
  got = jaxrnn.scan(CELL, params, xs, **kw)
  assert calls == ["associative"]
  want = jaxrnn.scan(CELL, params, xs, impl="step", **kw)  # its own step loop
  assert calls == ["associative"]
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_auto_avoids_the_associative_scan_that_does_not_fit(monkeypatch):
  calls = []
  recurrence = linear_scan.recurrence
  monkeypatch.setattr(linear_scan, "recurrence", lambda *a: calls.append(a[-1]) or recurrence(*a))
  monkeypatch.setitem(linear_scan.METHODS, jax.default_backend(), "associative")
  a = jnp.full((B, T, 2), 0.5)  # 144 bytes: the associative scan needs about 4.5 times that
  for free, expected in ((10**6, "associative"), (600, "sequential"), (None, "associative")):
    monkeypatch.setattr(linear_scan, "free_device_bytes", lambda free=free: free)
    jaxrnn.linear_recurrence(a, a)
    assert calls.pop() == expected, free


def test_coefficients_need_a_one_leaf_carry():
  def initial_carry(params, batch_shape=()):
    zeros = jnp.zeros(tuple(batch_shape) + (2,))
    return {"h": zeros, "n": zeros}

  def step(params, carry, x):
    return {"h": carry["h"] + x, "n": carry["n"]}, carry["h"] + x

  cell = jaxrnn.Cell(
    lambda key, input_size: {"w": jnp.zeros((input_size, 2))},
    initial_carry,
    step,
    coefficients=lambda params, x: (jnp.ones_like(x), x),
  )
  with pytest.raises(ValueError, match="the carry has 2 leaves"):
    jaxrnn.scan(cell, cell.init(None, 2), jnp.ones((1, 3, 2)))
