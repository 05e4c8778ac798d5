"""peephole_lstm, cifg_lstm, indrnn against float64 NumPy loops of their papers' equations;
mgu against flax.linen.MGUCell with the same weights, and its kernel with visible biases
against its step loop."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from kernels import assert_fused_is_step

import jaxrnn

I, H, N, T = 3, 4, 3, 4


def sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def peephole_ref(p, carry, x):
  """Gers et al. 2002 with Greff et al.'s output tanh: i, f see c_{t-1}; o sees c_t."""
  h, c = carry
  zi, zf, zg, zo = np.split(x @ p.w_ih + h @ p.w_hh + p.b, 4, axis=-1)
  i = sigmoid(zi + p.w_ci * c)
  f = sigmoid(zf + p.w_cf * c)
  c = f * c + i * np.tanh(zg)
  h = sigmoid(zo + p.w_co * c) * np.tanh(c)
  return (h, c), h


def cifg_ref(p, carry, x):
  """Greff et al. 2017's CIFG: f = 1 - i, blocks [i, g, o]."""
  h, c = carry
  zi, zg, zo = np.split(x @ p.w_ih + h @ p.w_hh + p.b, 3, axis=-1)
  i = sigmoid(zi)
  c = (1.0 - i) * c + i * np.tanh(zg)
  h = sigmoid(zo) * np.tanh(c)
  return (h, c), h


BOUND = 0.9


def indrnn_ref(p, carry, x):
  """Li et al. 2018: h' = relu(x W + u * h + b), |u| clipped to the bound."""
  u = np.clip(p.w_hh, -BOUND, BOUND)
  h = np.maximum(x @ p.w_ih + u * carry[0] + p.b, 0.0)
  return (h,), h


def flax_mgu_ref(p, carry, x):
  """flax.linen.MGUCell itself, our params copied into its param dict."""
  w_ih, w_hh, b, b_hn = (np.asarray(a, np.float32) for a in p)
  variables = {
    "params": {
      "if": {"kernel": w_ih[:, :H], "bias": b[:H]},
      "hf": {"kernel": w_hh[:, :H]},
      "hn": {"kernel": w_hh[:, H:], "bias": b_hn},
      "in": {"kernel": w_ih[:, H:], "bias": b[H:]},
    }
  }
  h, y = nn.MGUCell(features=H).apply(variables, carry[0].astype(np.float32), x.astype(np.float32))
  return (np.asarray(h, np.float64),), np.asarray(y, np.float64)


CASES = {
  "peephole_lstm": (jaxrnn.peephole_lstm, {}, peephole_ref),
  "cifg_lstm": (jaxrnn.cifg_lstm, {"forget_bias": 0.5}, cifg_ref),
  "mgu": (jaxrnn.mgu, {}, flax_mgu_ref),
  "indrnn": (jaxrnn.indrnn, {"recurrent_max": BOUND}, indrnn_ref),
}


def make_params(name, cell, key):
  params = cell.init(key, I)
  k = jax.random.fold_in(key, 1)
  if name == "indrnn":  # some weights beyond the bound, both signs, and a nonzero bias
    params = params._replace(w_hh=jnp.array([1.5, -1.2, 0.3, -0.5], params.w_hh.dtype))
  if name in ("mgu", "indrnn"):  # flax's / the paper's zero biases: make them visible
    params = jax.tree.map(
      lambda a: a + 0.1 * jax.random.normal(k, a.shape, a.dtype) if a.ndim == 1 else a, params
    )
  return params


def ref_loop(ref, params, carry, xs, lengths, reverse):
  """Per row, the reference step over the row's valid part: ``(carry, ys)``."""
  p = type(params)(*(None if a is None else np.asarray(a, np.float64) for a in params))
  carry = [np.array(c, np.float64) for c in carry]
  ys = np.zeros(xs.shape[:2] + (H,))
  for n, length in enumerate(lengths):
    row = tuple(c[n : n + 1] for c in carry)
    for t in reversed(range(length)) if reverse else range(length):
      row, y = ref(p, row, np.asarray(xs[n : n + 1, t], np.float64))
      ys[n, t] = y[0]
    for c, r in zip(carry, row, strict=True):
      c[n] = r[0]
  return carry, ys


@pytest.mark.parametrize("name", list(CASES))
def test_against_reference(name):
  factory, kwargs, ref = CASES[name]
  cell = factory(H, **kwargs)
  key = jax.random.key(0)
  params = make_params(name, cell, key)
  kc, kx = jax.random.split(jax.random.fold_in(key, 2))
  carry0 = jax.tree.map(
    lambda c: 0.5 * jax.random.normal(kc, c.shape, c.dtype), cell.initial_carry(params, (N,))
  )
  xs = jax.random.normal(kx, (N, T, I))
  lengths = jnp.array([T, 0, 2])

  @jax.jit
  def run(params, carry0, xs):
    carry, steps = carry0, []
    for t in range(T):
      carry, y = cell.step(params, carry, xs[:, t])
      steps.append(y)
    out = {"steps": (carry, jnp.stack(steps, axis=1))}
    for reverse in (False, True):
      out[str(reverse)] = jaxrnn.scan(
        cell, params, xs, carry0, seq_lengths=lengths, reverse=reverse
      )
    return out

  out = run(params, carry0, xs)
  tol = dict(rtol=1e-5, atol=1e-5)
  want = ref_loop(ref, params, carry0, xs, [T] * N, False)
  for got, exp in zip(jax.tree.leaves(out["steps"]), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(got, exp, **tol)
  for reverse in (False, True):
    want = ref_loop(ref, params, carry0, xs, np.asarray(lengths), reverse)
    for got, exp in zip(jax.tree.leaves(out[str(reverse)]), jax.tree.leaves(want), strict=True):
      np.testing.assert_allclose(got, exp, **tol)
  np.testing.assert_array_equal(out["False"][1][1], 0.0)  # length 0: zero outputs
  for got, c0 in zip(jax.tree.leaves(out["True"][0]), jax.tree.leaves(carry0), strict=True):
    np.testing.assert_array_equal(got[1], c0[1])  # length 0: the initial carry


@pytest.mark.parametrize("name", list(CASES))
def test_grads_float64(name):
  factory, kwargs, _ = CASES[name]
  with jax.enable_x64(True):
    cell = factory(2, dtype=jnp.float64, **kwargs)
    params = cell.init(jax.random.key(1), 2)
    if name == "indrnn":  # one weight beyond the bound (zero gradient), ReLU units active
      params = params._replace(w_hh=jnp.array([1.4, 0.6]), b=jnp.array([0.7, 0.9]))
    xs = jax.random.normal(jax.random.key(2), (2, 3, 2), jnp.float64)

    def loss(params, xs):
      carry, ys = jaxrnn.scan(cell, params, xs, seq_lengths=jnp.array([3, 2]), reverse=True)
      return jnp.sum(ys**2) + sum(jnp.sum(jnp.sin(c)) for c in jax.tree.leaves(carry))

    check_grads(jax.jit(loss), (params, xs), order=1, modes=("rev",), eps=1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_layers_config_and_errors(name):
  factory, kwargs, _ = CASES[name]
  cell = factory(H, **kwargs)
  assert factory(**dict(cell.config)) == cell
  assert jaxrnn.cells.KINDS[name].factory is factory
  model = jaxrnn.rnn_layers(name, H, num_layers=2, **kwargs)
  params = model.init(jax.random.key(0), input_size=I)
  _, ys = jax.jit(model.apply)(params, jnp.ones((2, 5, I)), seq_lengths=jnp.array([5, 3]))
  assert ys.shape == (2, 5, H)
  with pytest.raises(ValueError, match="hidden_size=0"):
    factory(0)


def test_bad_arguments_and_conventions():
  with pytest.raises(ValueError, match="recurrent_init='bad'"):
    jaxrnn.peephole_lstm(H, recurrent_init="bad")
  with pytest.raises(ValueError, match="recurrent_init='bad'"):
    jaxrnn.cifg_lstm(H, recurrent_init="bad")
  with pytest.raises(ValueError, match="activation='gelu'"):
    jaxrnn.indrnn(H, activation="gelu")
  with pytest.raises(ValueError, match="recurrent_max=-1.0"):
    jaxrnn.indrnn(H, recurrent_max=-1.0)
  with pytest.raises(ValueError, match="expected PeepholeLSTMParams"):
    zeros = jnp.zeros((1, H))
    lstm_params = jaxrnn.lstm(H).init(jax.random.key(0), I)
    jaxrnn.peephole_lstm(H).step(lstm_params, jaxrnn.LSTMCarry(zeros, zeros), jnp.ones((1, I)))
  key = jax.random.key(0)
  # CIFG: the forget bias is subtracted from the input gate's bias; zero peepholes = lstm.
  b = jaxrnn.cifg_lstm(H, recurrent_init="orthogonal", forget_bias=1.0).init(key, I).b
  np.testing.assert_array_equal(b, np.concatenate([-np.ones(H), np.zeros(2 * H)]))
  peep = jaxrnn.peephole_lstm(H, recurrent_init="orthogonal").init(key, I)
  assert not np.any(np.asarray(peep.w_ci)) and float(peep.b[H]) == 1.0
  lstm = jaxrnn.lstm(H)
  lp = jaxrnn.LSTMParams(peep.w_ih, peep.w_hh, peep.b)
  x, carry = jnp.ones((2, I)), lstm.initial_carry(lp, (2,))
  np.testing.assert_allclose(
    jaxrnn.peephole_lstm(H).step(peep, carry, x)[1], lstm.step(lp, carry, x)[1], rtol=1e-6
  )
  # IndRNN: the reference code's init U(0, bound) and its projection.
  u = jaxrnn.indrnn(64, recurrent_max=2 ** (1 / 10)).init(key, I).w_hh
  assert float(u.min()) >= 0.0 and float(u.max()) <= 2 ** (1 / 10) and float(u.max()) > 1.0
  p = jaxrnn.IndRNNParams(jnp.zeros((I, 2)), jnp.array([3.0, -0.2]))
  stacked = jaxrnn.indrnn_constrain((p, p), 1.0)
  np.testing.assert_array_equal(stacked[1].w_hh, np.float32([1.0, -0.2]))
  # MGU init: flax's forget bias of ones and zero candidate biases.
  m = jaxrnn.mgu(H).init(key, I)
  np.testing.assert_array_equal(m.b, np.concatenate([np.ones(H), np.zeros(H)]))


# The peephole and CIFG kernels against their step loops: tests/test_registry.py.


def test_mgu_kernel_is_its_step_loop():
  cell = jaxrnn.mgu(H)
  params = make_params("mgu", cell, jax.random.key(4))  # visible biases, b_hn inside the gate
  k1, k2 = jax.random.split(jax.random.key(5))
  carry = jax.tree.map(lambda c: jax.random.normal(k1, c.shape), cell.initial_carry(params, (N,)))
  assert_fused_is_step(cell, params, carry, jax.random.normal(k2, (N, 6, I)))
