"""minGRU and minLSTM against float64 NumPy loops of Feng et al. 2024's equations."""

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

import jaxrnn
from jaxrnn.cells import linear_scan
from jaxrnn.cells.base import HiddenCarry

MODULES = {k: importlib.import_module(f"jaxrnn.cells.{k}") for k in ("min_gru", "min_lstm")}
CASES = [(k, ls) for k in MODULES for ls in (False, True)]
B, T, I, H = 3, 6, 2, 4


def sigmoid(v):
  return 1.0 / (1.0 + np.exp(-v))


def np_step(kind, log_space, w, b, h, x):
  """The paper's equations, one step, float64."""
  pre = x @ w + b
  g = lambda v: np.where(v >= 0, v + 0.5, sigmoid(v))  # noqa: E731
  if kind == "min_gru":
    k, h_tilde = np.split(pre, 2, axis=-1)
    z = sigmoid(k)
    h_tilde = g(h_tilde) if log_space else h_tilde
    return (1 - z) * h + z * h_tilde
  k_f, k_i, h_tilde = np.split(pre, 3, axis=-1)
  f, i = sigmoid(k_f), sigmoid(k_i)
  h_tilde = g(h_tilde) if log_space else h_tilde
  return f / (f + i) * h + i / (f + i) * h_tilde


def np_row(kind, log_space, w, b, xs, h, length, reverse, resets, rc):
  """One row over time: valid part [0, length), resets replace the carry before a step."""
  ys = np.zeros(xs.shape[:-1] + (h.shape[-1],))
  for t in reversed(range(length)) if reverse else range(length):
    if resets is not None and resets[t]:
      h = rc
    h = np_step(kind, log_space, w, b, h, xs[t])
    ys[t] = h
  return h, ys


def np_params(params):
  b = np.zeros(params.w_ih.shape[-1]) if params.b is None else np.asarray(params.b, np.float64)
  return np.asarray(params.w_ih, np.float64), b


def jax_reset_loop(cell, params, h0, xs, mask, resets, rc, reverse):
  """A lax.scan of ``cell.step`` with masks and resets: the contract's reference, time-major."""

  def body(h, inputs):
    x, m, r = inputs
    new, y = cell.step(params, HiddenCarry(jnp.where(r[:, None], rc, h)), x)
    return jnp.where(m[:, None], new.h, h), jnp.where(m[:, None], y, jnp.zeros_like(y))

  h, ys = lax.scan(body, h0, (xs, mask, resets), reverse=reverse)
  return HiddenCarry(h), ys


def bare_sequence(kind, log_space):
  """The cell's whole-sequence function with the resets arguments (scan passes them later)."""
  mod = MODULES[kind]
  return linear_scan.sequence(functools.partial(mod.coefficients, log_space=log_space), log_space)


def make(kind, log_space, rng, dtype=jnp.float32):
  cell = getattr(jaxrnn, kind)(H, log_space=log_space, dtype=dtype)
  params = cell.init(jax.random.key(1), I)
  xs = jnp.asarray(rng.standard_normal((B, T, I)) * 2, dtype)
  h0 = jnp.asarray(np.abs(rng.standard_normal((B, H))), dtype)
  return cell, params, xs, h0


@pytest.mark.parametrize("kind,log_space", CASES)
def test_step_and_scan_against_numpy(kind, log_space, rng):
  cell, params, xs, h0 = make(kind, log_space, rng)
  w, b = np_params(params)
  lengths = np.array([T, 0, 4])

  @jax.jit
  def run(params, xs, h0):
    c = HiddenCarry(h0)
    steps, h = [], c
    for t in range(3):
      h, y = cell.step(params, h, xs[:, t])
      steps.append(y)
    out = {"steps": jnp.stack(steps, 1)}
    for reverse in (False, True):
      for impl in ("auto", "step"):
        carry, ys = jaxrnn.scan(
          cell, params, xs, c, seq_lengths=lengths, reverse=reverse, impl=impl
        )
        out[f"{reverse}-{impl}"] = (carry.h, ys)
    return out

  out = run(params, xs, h0)
  x64, h64 = np.asarray(xs, np.float64), np.asarray(h0, np.float64)
  expect = np.stack(
    [np_row(kind, log_space, w, b, x64[r], h64[r], 3, False, None, None)[1][:3] for r in range(B)]
  )
  np.testing.assert_allclose(out["steps"], expect, rtol=1e-5, atol=1e-6)
  for reverse in (False, True):
    rows = [
      np_row(kind, log_space, w, b, x64[r], h64[r], lengths[r], reverse, None, None)
      for r in range(B)
    ]
    for impl in ("auto", "step"):
      h, ys = out[f"{reverse}-{impl}"]
      np.testing.assert_allclose(h, np.stack([r[0] for r in rows]), rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(ys, np.stack([r[1] for r in rows]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[f"{reverse}-auto"][1], out[f"{reverse}-step"][1], atol=1e-6)
  if log_space:  # g > 0 and a non-negative carry: h stays positive
    assert bool((out["False-auto"][1][0] > 0).all())


@pytest.fixture(params=linear_scan.METHOD_NAMES)
def method(request, monkeypatch):
  """Each way the sequence can run the recurrence, whatever this backend's default."""
  monkeypatch.setitem(linear_scan.METHODS, jax.default_backend(), request.param)
  return request.param


@pytest.mark.parametrize("kind,log_space", CASES)
def test_sequence_with_resets_against_loops(kind, log_space, method, rng):
  """Masked, with resets, both ways: values to 1e-6 and gradients (the recurrence's own
  VJP, both directions summed) to 1e-5 relative against autodiff of the step loop."""
  cell, params, xs, h0 = make(kind, log_space, rng)
  xs_t = jnp.moveaxis(xs, 1, 0)
  mask = jnp.asarray(np.arange(T)[:, None] < np.array([T, 0, 4])[None])
  resets = jnp.asarray(rng.random((T, B)) < 0.3) & mask
  rc = jnp.asarray(rng.standard_normal((B, H)), jnp.float32)  # any sign
  sequence = bare_sequence(kind, log_space)

  def fast(params, h0, xs_t, rc, reverse):
    return sequence(params, HiddenCarry(h0), xs_t, mask, reverse, 1, resets, HiddenCarry(rc))

  def loop(params, h0, xs_t, rc, reverse):
    return jax_reset_loop(cell, params, h0, xs_t, mask, resets, rc, reverse)

  def loss(fn, params, h0, xs_t, rc):  # both directions in one gradient
    out = {reverse: fn(params, h0, xs_t, rc, reverse) for reverse in (False, True)}
    total = sum(jnp.sum(c.h**2) + jnp.sum(jnp.sin(ys)) for c, ys in out.values())
    return total, {reverse: (c.h, ys) for reverse, (c, ys) in out.items()}

  grad = jax.grad(loss, argnums=(1, 2, 3, 4), has_aux=True)
  (g_fast, v_fast), (g_loop, v_loop) = jax.jit(
    lambda *args: [grad(fn, *args) for fn in (fast, loop)]
  )(params, h0, xs_t, rc)
  for a, e in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_loop), strict=True):
    np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6 * float(jnp.abs(e).max()))
  w, b = np_params(params)
  for reverse in (False, True):
    (h, ys), (h_loop, ys_loop) = v_fast[reverse], v_loop[reverse]
    np.testing.assert_allclose(h, h_loop, atol=1e-6)
    np.testing.assert_allclose(ys, ys_loop, atol=1e-6)
    for r in range(B):
      h_ref, ys_ref = np_row(
        kind,
        log_space,
        w,
        b,
        np.asarray(xs[r], np.float64),
        np.asarray(h0[r], np.float64),
        int(mask[:, r].sum()),
        reverse,
        np.asarray(resets[:, r]),
        np.asarray(rc[r], np.float64),
      )
      np.testing.assert_allclose(h[r], h_ref, rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(ys[:, r], ys_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "kind,log_space,how",
  [(k, ls, how) for (k, ls), how in zip(CASES, ("sequential", "associative") * 2, strict=True)],
)
def test_check_grads_float64(kind, log_space, how, rng, monkeypatch):
  """The hand-written VJP against finite differences, each method on half the cases;
  second order for one (the VJP is written in jnp, so it is itself differentiable)."""
  monkeypatch.setitem(linear_scan.METHODS, jax.default_backend(), how)
  order = 2 if (kind, log_space) == ("min_gru", False) else 1
  with jax.enable_x64(True):
    cell, params, xs, h0 = make(kind, log_space, rng, jnp.float64)
    xs_t = jnp.moveaxis(xs, 1, 0)[:4]
    mask = jnp.asarray(np.arange(4)[:, None] < np.array([4, 0, 3])[None])
    resets = jnp.asarray([[0, 0, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0]], bool)
    sequence = bare_sequence(kind, log_space)
    zero = jnp.zeros_like(h0)

    @jax.jit
    def f(params, h0, xs_t, rc):
      carry, ys = sequence(params, HiddenCarry(h0), xs_t, mask, True, 1, resets, HiddenCarry(rc))
      return carry.h, ys

    check_grads(f, (params, h0, xs_t, h0[::-1]), order=order, modes=("rev",), eps=1e-5)
    if not log_space:
      return
    check_grads(  # from a zero carry: h0 enters linearly, never through log(h0)
      jax.jit(lambda p, x: jaxrnn.scan(cell, p, x, HiddenCarry(zero))[1]),
      (params, xs),
      order=1,
      modes=("rev",),
      eps=1e-5,
    )


@pytest.mark.parametrize("kind", list(MODULES))
def test_layers_config_and_errors(kind, rng):
  factory = getattr(jaxrnn, kind)
  cell = factory(H, log_space=True, use_bias=False)
  assert factory(**dict(cell.config)) == cell
  assert cell != factory(H)
  params = cell.init(jax.random.key(0), I)
  assert params.b is None and params.input_size == I and params.hidden_size == H
  model = jaxrnn.rnn_layers(kind, H, num_layers=2)
  mparams = model.init(jax.random.key(0), I)
  _, ys = model.apply(mparams, jnp.ones((B, T, I)))
  assert ys.shape == (B, T, H)
  with pytest.raises(ValueError, match="hidden_size=0"):
    factory(0)
  with pytest.raises(ValueError, match="log_space='yes'"):
    factory(H, log_space="yes")
  with pytest.raises(ValueError, match="features"):
    cell.step(params, cell.initial_carry(params, (B,)), jnp.ones((B, I + 1)))
