"""Layer-normalized LSTM and GRU against a float64 NumPy loop of Ba, Kiros and Hinton 2016;
the LSTM's whole-sequence kernel against its step loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from kernels import assert_fused_is_step

import jaxrnn

I, H, T, N = 3, 4, 5, 3
EPS = 1e-5
TOL = dict(atol=2e-5, rtol=2e-5)


# ------------------------------------------------------------------ the reference, float64 NumPy


def _ln(a, gain, bias, groups):
  """Layer norm over ``groups`` equal column blocks: biased variance, epsilon inside the root."""
  s = a.reshape(a.shape[:-1] + (groups, a.shape[-1] // groups))
  mu = s.mean(axis=-1, keepdims=True)
  var = ((s - mu) ** 2).mean(axis=-1, keepdims=True)
  return ((s - mu) / np.sqrt(var + EPS)).reshape(a.shape) * gain + bias


def _sig(a):
  return 1.0 / (1.0 + np.exp(-a))


def _lstm_np(p, carry, x, per_gate):
  """Ba et al. 2016, section 3.1, gates [i, f, g, o]; ``carry`` is ``(h, c)``."""
  h, c = carry
  k = 4 if per_gate else 1
  z = _ln(x @ p["w_ih"], p["ln_ih_gain"], p["ln_ih_bias"], k)
  z = z + _ln(h @ p["w_hh"], p["ln_hh_gain"], p["ln_hh_bias"], k)
  if p["b"] is not None:
    z = z + p["b"]
  i, f, g, o = np.split(z, 4, axis=-1)
  c = _sig(f) * c + _sig(i) * np.tanh(g)
  h = _sig(o) * np.tanh(_ln(c, p["ln_c_gain"], p["ln_c_bias"], 1))
  return (h, c), h


def _gru_np(p, carry, x, per_gate):
  """PyTorch's GRU with LN(x W_ih) for x W_ih + b_ih and LN(h W_hh) for h W_hh + b_hh."""
  (h,) = carry
  k = 3 if per_gate else 1
  gi = _ln(x @ p["w_ih"], p["ln_ih_gain"], p["ln_ih_bias"], k)
  gh = _ln(h @ p["w_hh"], p["ln_hh_gain"], p["ln_hh_bias"], k)
  r = _sig(gi[:, :H] + gh[:, :H])
  z = _sig(gi[:, H : 2 * H] + gh[:, H : 2 * H])
  n = np.tanh(gi[:, 2 * H :] + r * gh[:, 2 * H :])
  h = (1.0 - z) * n + z * h
  return (h,), h


def _scan_np(step, p, carry, xs, lengths, reverse):
  """Row by row: the valid part read forwards or backwards, zeros past the length."""
  ys = np.zeros(xs.shape[:2] + (H,))
  final = [np.zeros_like(leaf) for leaf in carry]
  for b, n in enumerate(lengths):
    row = tuple(leaf[b : b + 1] for leaf in carry)
    for t in reversed(range(n)) if reverse else range(n):
      row, y = step(p, row, xs[b : b + 1, t])
      ys[b, t] = y[0]
    for leaf, value in zip(final, row, strict=True):
      leaf[b] = value[0]
  return tuple(final), ys


# ------------------------------------------------------------------ cases

CASES = [
  ("layer_norm_lstm", dict(per_gate=False)),
  ("layer_norm_lstm", dict(per_gate=True, use_bias=False)),
  ("layer_norm_gru", dict(per_gate=False)),
  ("layer_norm_gru", dict(per_gate=True)),
]


def _setup(kind, kw, dtype=np.float32):
  """Random params (gains and biases too, so that every leaf matters), carry and inputs."""
  cell = jaxrnn.cells.KINDS[kind].factory(H, dtype=dtype, **kw)
  params = cell.init(jax.random.key(0), I)
  rng = np.random.default_rng(1)
  ref = {}
  for name, leaf in params._asdict().items():
    if leaf is None:
      ref[name] = None
    elif "gain" in name:
      ref[name] = rng.uniform(0.5, 1.5, leaf.shape)
    else:
      ref[name] = rng.normal(0.0, 0.7, leaf.shape)
  params = type(params)(**{k: None if v is None else jnp.asarray(v, dtype) for k, v in ref.items()})
  n_carry = 2 if kind == "layer_norm_lstm" else 1
  carry_np = tuple(rng.normal(0.0, 0.5, (N, H)) for _ in range(n_carry))
  carry = type(cell.initial_carry(params, (N,)))(*(jnp.asarray(c, dtype) for c in carry_np))
  xs_np = rng.normal(0.0, 1.0, (N, T, I))
  step_np = _lstm_np if kind == "layer_norm_lstm" else _gru_np
  return cell, params, carry, jnp.asarray(xs_np, dtype), ref, carry_np, xs_np, step_np


@pytest.mark.parametrize("kind,kw", CASES)
def test_step_and_scan_against_numpy(kind, kw):
  cell, params, carry, xs, ref, carry_np, xs_np, step_np = _setup(kind, kw)
  lengths = np.array([T, 0, 3])

  @jax.jit
  def run(params, carry, xs):
    c, steps = carry, []
    for t in range(3):  # a few steps from a nonzero carry
      c, y = cell.step(params, c, xs[:, t])
      steps.append(y)
    fwd = jaxrnn.scan(cell, params, xs, carry, seq_lengths=jnp.asarray(lengths))
    bwd = jaxrnn.scan(cell, params, xs, carry, seq_lengths=jnp.asarray(lengths), reverse=True)
    return c, jnp.stack(steps, axis=1), fwd, bwd

  c, steps, fwd, bwd = run(params, carry, xs)
  c_np = carry_np
  for t in range(3):
    c_np, y_np = step_np(ref, c_np, xs_np[:, t], kw["per_gate"])
    np.testing.assert_allclose(steps[:, t], y_np, **TOL)
  for leaf, want in zip(c, c_np, strict=True):
    np.testing.assert_allclose(leaf, want, **TOL)
  for (final, ys), reverse in ((fwd, False), (bwd, True)):
    final_np, ys_np = _scan_np(
      lambda p, c, x: step_np(p, c, x, kw["per_gate"]), ref, carry_np, xs_np, lengths, reverse
    )
    np.testing.assert_allclose(ys, ys_np, **TOL)
    for leaf, want in zip(final, final_np, strict=True):
      np.testing.assert_allclose(leaf, want, **TOL)
  np.testing.assert_array_equal(fwd[0][0][1], carry[0][1])  # length 0: the initial carry


@pytest.mark.parametrize("kind,kw", [CASES[0], CASES[3]])
def test_check_grads_float64(kind, kw):
  with jax.enable_x64(True):
    cell, params, carry, xs, *_ = _setup(kind, kw, np.float64)
    lengths = jnp.array([3, 0, 2])
    w = jnp.asarray(np.random.default_rng(2).normal(size=(N, 3, H)))

    @jax.jit
    def loss(params, carry, xs):
      final, ys = jaxrnn.scan(cell, params, xs, carry, seq_lengths=lengths, reverse=True, unroll=1)
      return jnp.sum(ys * w) + sum(jnp.sum(leaf**2) for leaf in final)

    # eps=1e-5: with 1e-4 the central differences of this loss were off by 2e-5 relative
    # (layer norm's curvature), at the tolerance; 1e-5 is well within float64's precision.
    check_grads(loss, (params, carry, xs[:, :3]), order=1, modes=("rev",), eps=1e-5)


def test_init_layers_config_and_errors():
  lstm = jaxrnn.layer_norm_lstm(H, forget_bias=2.0)
  p = lstm.init(jax.random.key(0), I)
  np.testing.assert_array_equal(p.b, np.r_[np.zeros(H), 2.0 * np.ones(H), np.zeros(2 * H)])
  np.testing.assert_array_equal(p.ln_ih_gain, np.ones(4 * H))
  np.testing.assert_array_equal(p.ln_c_bias, np.zeros(H))
  assert jaxrnn.layer_norm_lstm(H, use_bias=False).init(jax.random.key(0), I).b is None
  for cell in (lstm, jaxrnn.layer_norm_gru(H, per_gate=True, compute_dtype=jnp.bfloat16)):
    assert jaxrnn.cells.KINDS[cell.name].factory(**dict(cell.config)) == cell
  # compute in bfloat16, carry back in float32
  gru = jaxrnn.layer_norm_gru(H, compute_dtype=jnp.bfloat16)
  gp = gru.init(jax.random.key(0), I)
  carry, y = gru.step(gp, gru.initial_carry(gp, (2,)), jnp.ones((2, I)))
  assert carry.h.dtype == jnp.float32 and y.dtype == jnp.bfloat16
  for kind, layers, bidi in (("layer_norm_lstm", 1, True), ("layer_norm_gru", 1, False)):
    model = jaxrnn.rnn_layers(kind, H, num_layers=layers, bidirectional=bidi, per_gate=True)
    mp = model.init(jax.random.key(1), I)
    ys = jax.jit(model.apply)(mp, jnp.ones((2, T, I)), seq_lengths=jnp.array([T, 2]))[1]
    assert ys.shape == (2, T, (1 + bidi) * H)
  with pytest.raises(ValueError, match="epsilon=0.0"):
    jaxrnn.layer_norm_lstm(H, epsilon=0.0)
  with pytest.raises(ValueError, match="per_gate='yes'"):
    jaxrnn.layer_norm_gru(H, per_gate="yes")


def test_lstm_kernel_is_its_step_loop():
  # per_gate and no b here; test_check_grads_float64 takes the kernel through the other case.
  cell, params, carry, xs, *_ = _setup("layer_norm_lstm", CASES[1][1])
  assert_fused_is_step(cell, params, carry, xs)


def test_gru_kernel_is_its_step_loop():
  # without per_gate here; test_check_grads_float64 takes the kernel through per_gate.
  cell, params, carry, xs, *_ = _setup("layer_norm_gru", CASES[2][1])
  assert_fused_is_step(cell, params, carry, xs)
