"""Regularizers (jaxrnn.regularizers) against NumPy loops of the cells' equations with masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from jaxrnn import regularizers
from jaxrnn.cells.base import HiddenCarry
from jaxrnn.cells.kernel import Noise

T, N, I, H = 7, 3, 4, 5


def sig(a):
  return 1.0 / (1.0 + np.exp(-a))


def np_lstm(p, xs, h_mask, kh, kc, lengths):
  """The LSTM with recurrent dropout (h_mask) and zoneout (kh, kc), PyTorch's equations."""
  w_ih, w_hh, b = (np.asarray(a, np.float64) for a in (p.w_ih, p.w_hh, p.b))
  h, c = np.zeros((N, H)), np.zeros((N, H))
  ys = np.zeros((T, N, H))
  for t in range(T):
    z = xs[t] @ w_ih + (h * h_mask) @ w_hh + b
    i, f, g, o = (
      sig(z[:, :H]),
      sig(z[:, H : 2 * H]),
      np.tanh(z[:, 2 * H : 3 * H]),
      sig(z[:, 3 * H :]),
    )
    c_new = f * c + i * g
    h_new = o * np.tanh(c_new)
    valid = (t < lengths)[:, None]
    h_z, c_z = kh[t] * h + (1 - kh[t]) * h_new, kc[t] * c + (1 - kc[t]) * c_new
    h, c = np.where(valid, h_z, h), np.where(valid, c_z, c)
    ys[t] = np.where(valid, h, 0.0)
  return ys


def np_gru(p, xs, h_mask, kh, lengths):
  """The GRU (PyTorch's equations); recurrent dropout masks h in the recurrent product only."""
  w_ih, w_hh, b, b_hn = (np.asarray(a, np.float64) for a in (p.w_ih, p.w_hh, p.b, p.b_hn))
  h = np.zeros((N, H))
  ys = np.zeros((T, N, H))
  for t in range(T):
    gi, gh = xs[t] @ w_ih + b, (h * h_mask) @ w_hh
    r = sig(gi[:, :H] + gh[:, :H])
    z = sig(gi[:, H : 2 * H] + gh[:, H : 2 * H])
    n = np.tanh(gi[:, 2 * H :] + r * (gh[:, 2 * H :] + b_hn))
    h_new = (1 - z) * n + z * h
    valid = (t < lengths)[:, None]
    h = np.where(valid, kh[t] * h + (1 - kh[t]) * h_new, h)
    ys[t] = np.where(valid, h, 0.0)
  return ys


def _noise(lstm: bool):
  rng = np.random.default_rng(0)
  h_mask = (rng.random((N, H)) > 0.3) / 0.7
  kh = (rng.random((T, N, H)) < 0.4).astype(np.float64)
  kc = (rng.random((T, N, H)) < 0.2).astype(np.float64)
  keep = jaxrnn.LSTMCarry(jnp.asarray(kh, jnp.float32), jnp.asarray(kc, jnp.float32))
  if not lstm:
    keep = HiddenCarry(jnp.asarray(kh, jnp.float32))
  return Noise(jnp.asarray(h_mask, jnp.float32), keep), h_mask, kh, kc


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_masks_inside_the_recurrence_match_numpy_on_every_impl(kind):
  cell = jaxrnn.lstm(H) if kind == "lstm" else jaxrnn.gru(H)
  params = cell.init(jax.random.key(0), I)
  xs = jax.random.normal(jax.random.key(1), (T, N, I))
  lengths = np.array([7, 4, 0])
  noise, h_mask, kh, kc = _noise(kind == "lstm")
  x64 = np.asarray(xs, np.float64)
  if kind == "lstm":
    want = np_lstm(params, x64, h_mask, kh, kc, lengths)
  else:
    want = np_gru(params, x64, h_mask, kh, lengths)

  def loss(p, impl):
    kw = dict(seq_lengths=lengths, time_major=True, impl=impl, noise=noise)
    _, ys = jaxrnn.scan(cell, p, xs, **kw)
    return jnp.sum(ys * jnp.cos(ys)), ys

  grads = {}
  for impl in ("fused", "step"):
    (_, ys), grads[impl] = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)(
      params, impl
    )
    np.testing.assert_allclose(ys, want, atol=2e-6)
  leaves = zip(jax.tree.leaves(grads["fused"]), jax.tree.leaves(grads["step"]), strict=True)
  for g_fused, g_step in leaves:
    rel = np.linalg.norm(g_fused - g_step) / np.linalg.norm(g_step)
    assert rel < 1e-5, rel


def test_regularized_layer_same_key_same_numbers_on_every_impl_and_masks_as_specified():
  key, xs = jax.random.key(3), jax.random.normal(jax.random.key(1), (N, T, I))
  rates = dict(input_dropout=0.5, recurrent_dropout=0.5, weight_drop=0.5, zoneout=0.5)
  out = {}
  for impl in ("auto", "step"):
    model = jaxrnn.recurrent(jaxrnn.lstm(H), impl=impl, **rates)
    params = model.init(jax.random.key(0), I)
    loss = lambda p, m=model: jnp.sum(m.apply(p, xs, key=key)[1] ** 2)  # noqa: E731
    out[impl] = jax.value_and_grad(loss)(params)
  for a, b in zip(jax.tree.leaves(out["auto"]), jax.tree.leaves(out["step"]), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # The masks draw() made: one input mask per row (the same at every step), one weight mask.
  dropped_params, dropped_xs, noise = regularizers.draw(
    jaxrnn.lstm(H),
    tuple(sorted(rates.items())),
    params,
    xs,
    key,
    False,
    False,
  )
  ratio = np.asarray(dropped_xs / xs)
  np.testing.assert_allclose(ratio, np.broadcast_to(ratio[:, :1], ratio.shape), atol=1e-6)
  assert set(np.round(np.unique(ratio), 5)) == {0.0, 2.0}
  w_ratio = np.asarray(dropped_params.w_hh / params.w_hh)
  assert set(np.round(np.unique(w_ratio), 5)) == {0.0, 2.0}
  np.testing.assert_array_equal(dropped_params.w_ih, params.w_ih)
  assert set(np.unique(noise.h_mask)) == {0.0, 2.0} and noise.keep.h.shape == (T, N, H)
  assert 0.3 < float(jnp.mean(noise.keep.c)) < 0.7  # zoneout keeps with probability 0.5


def test_deterministic_is_the_plain_model_and_zoneout_its_expected_mask():
  xs = jax.random.normal(jax.random.key(1), (N, T, I))
  lengths = np.array([7, 4, 0])
  plain = jaxrnn.recurrent(jaxrnn.lstm(H))
  params = plain.init(jax.random.key(0), I)
  dropped = jaxrnn.recurrent(
    jaxrnn.lstm(H), input_dropout=0.3, recurrent_dropout=0.3, weight_drop=0.3
  )
  want = plain.apply(params, xs, seq_lengths=lengths)[1]
  got = dropped.apply(params, xs, seq_lengths=lengths, deterministic=True)[1]
  np.testing.assert_array_equal(got, want)
  zoned = jaxrnn.recurrent(jaxrnn.lstm(H), zoneout={"h": 0.3, "c": 0.6})
  ys = zoned.apply(params, xs, seq_lengths=lengths, deterministic=True)[1]
  ones = np.ones((T, N, H))
  x64 = np.asarray(jnp.moveaxis(xs, 1, 0), np.float64)
  want = np_lstm(params, x64, np.ones((N, H)), 0.3 * ones, 0.6 * ones, lengths)
  np.testing.assert_allclose(jnp.moveaxis(ys, 1, 0), want, atol=2e-6)
  # Streaming with the model's step gives the same (zoneout's expected mask).
  carry, stepped = zoned.initial_carry(params, (1,)), []
  for t in range(T):
    carry, y = zoned.step(params, carry, xs[:1, t])
    stepped.append(y)
  np.testing.assert_allclose(jnp.stack(stepped, 1), ys[:1], atol=1e-6)


def test_packed_row_equals_its_segments_with_deterministic_regularizers():
  model = jaxrnn.rnn_layers(
    "gru",
    H,
    num_layers=2,
    bidirectional=True,
    zoneout=0.4,
    recurrent_dropout=0.2,
    input_dropout=0.1,
  )
  params = model.init(jax.random.key(0), I)
  xs = jax.random.normal(jax.random.key(1), (1, T, I))
  resets = np.zeros((1, T), bool)
  resets[0, 3] = True
  _, packed = model.apply(params, xs, resets=resets, deterministic=True)
  _, first = model.apply(params, xs[:, :3], deterministic=True)
  _, second = model.apply(params, xs[:, 3:], deterministic=True)
  np.testing.assert_allclose(packed, jnp.concatenate([first, second], 1), atol=1e-6)


def test_regularizer_errors_name_the_value():
  for name in ("recurrent_dropout", "weight_drop"):
    with pytest.raises(ValueError, match=f"{name}=0.2: the 'min_gru' cell has no recurrent"):
      jaxrnn.recurrent(jaxrnn.min_gru(H), **{name: 0.2})
  with pytest.raises(ValueError, match=r"zoneout=1.0: expected a number in \[0, 1\)"):
    jaxrnn.recurrent(jaxrnn.lstm(H), zoneout=1.0)
  with pytest.raises(ValueError, match=r"zoneout names \['n'\]"):
    model = jaxrnn.recurrent(jaxrnn.gru(H), zoneout={"n": 0.1})
    model.apply(model.init(jax.random.key(0), I), jnp.ones((N, T, I)), deterministic=True)
  model = jaxrnn.recurrent(jaxrnn.lstm(H), input_dropout=0.1)
  with pytest.raises(ValueError, match="need a key"):
    model.apply(model.init(jax.random.key(0), I), jnp.ones((N, T, I)))


def test_return_carries_matches_a_python_loop_of_step():
  cell = jaxrnn.lstm(H)
  params = cell.init(jax.random.key(0), I)
  xs = jax.random.normal(jax.random.key(1), (N, T, I))
  lengths = np.array([7, 4, 0])
  carry, ys, carries = jaxrnn.scan(cell, params, xs, seq_lengths=lengths, return_carries=True)
  c = cell.initial_carry(params, (N,))
  for t in range(T):
    new, _ = cell.step(params, c, xs[:, t])
    valid = (t < lengths)[:, None]
    c = jax.tree.map(lambda a, b, v=valid: jnp.where(v, a, b), new, c)
    np.testing.assert_allclose(carries.h[:, t], c.h, atol=1e-6)
    np.testing.assert_allclose(carries.c[:, t], c.c, atol=1e-6)
  np.testing.assert_array_equal(carries.h[:, -1], carry.h)
  with pytest.raises(ValueError, match="cannot take return_carries=True"):
    jaxrnn.scan(cell, params, xs, impl="fused", return_carries=True)
