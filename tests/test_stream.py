"""`jaxrnn.stream`: step-by-step outputs against `model.apply`, reset masks, one compile."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxrnn

TOL = dict(atol=1e-6, rtol=1e-6)
I, T, B = 3, 5, 4

MODELS = {
  "lstm": lambda: jaxrnn.recurrent(jaxrnn.lstm(5)),
  "gru_time_major": lambda: jaxrnn.recurrent(jaxrnn.gru(5), time_major=True),
  "elman_relu": lambda: jaxrnn.recurrent(jaxrnn.elman(5, activation="relu")),
  "lstm_proj_2_layers": lambda: jaxrnn.rnn_layers("lstm", 6, num_layers=2, proj_size=3),
  "gru_3_layers_dropout": lambda: jaxrnn.rnn_layers("gru", 4, num_layers=3, dropout_rate=0.5),
  "mixed_stack": lambda: jaxrnn.stack(
    [jaxrnn.recurrent(jaxrnn.lstm(5)), jaxrnn.rnn_layers("elman", 4, num_layers=2)],
    dropout_rate=0.3,
  ),
}


def _xs(rng, batch=(B,), length=T):
  return jnp.asarray(rng.standard_normal(batch + (length, I)).astype(np.float32))


def _apply(model, params, xs, **kw):
  """model.apply on batch-major xs, batch-major ys, whatever the model's layout."""
  time_major = dict(model.config).get("time_major", False)
  if time_major:
    xs = jnp.moveaxis(xs, -2, 0)
  carry, ys = model.apply(params, xs, deterministic=True, **kw)
  return carry, jnp.moveaxis(ys, 0, -2) if time_major else ys


def _run(s, params, xs, state, jit=True):
  step = jax.jit(s.step) if jit else s.step
  ys = []
  for t in range(xs.shape[-2]):
    state, y = step(params, state, xs[..., t, :])
    ys.append(y)
  return state, jnp.stack(ys, axis=-2)


def _assert_trees_close(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **TOL)


@pytest.mark.parametrize("name", MODELS)
def test_stream_matches_apply(name, rng):
  model = MODELS[name]()
  params = model.init(jax.random.key(1), I)
  xs = _xs(rng)
  s = jaxrnn.stream(model)
  state, ys = _run(s, params, xs, s.init_state(params, (B,)))
  carry, ref = _apply(model, params, xs)
  np.testing.assert_allclose(np.asarray(ys), np.asarray(ref), **TOL)
  _assert_trees_close(state, carry)


def test_stream_eager_unbatched_and_multi_batch(rng):
  model = jaxrnn.rnn_layers("lstm", 5, num_layers=2)
  params = model.init(jax.random.key(2), I)
  s = jaxrnn.stream(model)
  for batch, jit in [((), False), ((2, 3), True)]:
    xs = _xs(rng, batch, length=2)
    state, ys = _run(s, params, xs, s.init_state(params, batch), jit=jit)
    carry, ref = _apply(model, params, xs)
    np.testing.assert_allclose(np.asarray(ys), np.asarray(ref), **TOL)
    _assert_trees_close(state, carry)


def test_stream_of_a_cell_and_of_a_torch_module(rng):
  cell = jaxrnn.gru(5)
  params = cell.init(jax.random.key(3), I)
  xs = _xs(rng)
  s = jaxrnn.stream(cell)
  state, ys = _run(s, params, xs, s.init_state(params, (B,)))
  carry, ref = jaxrnn.scan(cell, params, xs)
  np.testing.assert_allclose(np.asarray(ys), np.asarray(ref), **TOL)
  _assert_trees_close(state, carry)

  torch.manual_seed(0)
  module = torch.nn.LSTM(I, 5, num_layers=2, batch_first=True)
  model, params = jaxrnn.from_torch(module)
  s = jaxrnn.stream(model)
  state, ys = _run(s, params, xs, s.init_state(params, (B,)))
  ref = module(torch.from_numpy(np.array(xs)))[0].detach().numpy()
  np.testing.assert_allclose(np.asarray(ys), ref, atol=1e-5, rtol=1e-5)


def test_state_is_the_models_carry(rng):
  """apply on a prefix, stream the rest: the same as apply on the whole."""
  model = jaxrnn.rnn_layers("gru", 5, num_layers=2)
  params = model.init(jax.random.key(4), I)
  xs = _xs(rng)
  carry, ys_head = model.apply(params, xs[:, :3])
  state, ys_tail = _run(jaxrnn.stream(model), params, xs[:, 3:], carry)
  carry_ref, ref = model.apply(params, xs)
  np.testing.assert_allclose(np.asarray(ys_tail), np.asarray(ref[:, 3:]), **TOL)
  _assert_trees_close(state, carry_ref)


def test_reset_restarts_rows_without_leakage(rng):
  model = MODELS["lstm_proj_2_layers"]()
  params = model.init(jax.random.key(5), I)
  xs = _xs(rng)
  s = jaxrnn.stream(model)
  step = jax.jit(s.step)
  reset_at = {1: 2, 2: 4}  # row -> time step at which it restarts
  state = s.init_state(params, (B,))
  ys = []
  for t in range(T):
    reset = np.array([reset_at.get(b) == t for b in range(B)])
    state, y = step(params, state, xs[:, t], reset)
    ys.append(y)
  ys = np.asarray(jnp.stack(ys, axis=1))
  _, full = model.apply(params, xs)
  for b in range(B):
    t0 = reset_at.get(b, 0)
    np.testing.assert_allclose(ys[b, :t0], np.asarray(full[b, :t0]), **TOL)
    _, fresh = model.apply(params, xs[b : b + 1, t0:])  # a fresh run on the suffix
    np.testing.assert_allclose(ys[b, t0:], np.asarray(fresh[0]), **TOL)
  assert not np.allclose(ys[1, 2:], np.asarray(full[1, 2:]), atol=1e-3)  # it did restart


def test_reset_uses_the_models_initial_carry(rng):
  """A reset row goes back to initial_carry, whatever state it was in."""
  cell = jaxrnn.lstm(4)
  base = cell.init(jax.random.key(6), I)
  s = jaxrnn.stream(cell)
  state = jaxrnn.LSTMCarry(jnp.full((2, 4), 5.0), jnp.full((2, 4), -5.0))
  x = jnp.asarray(rng.standard_normal((2, I)).astype(np.float32))
  new, y = s.step(base, state, x, jnp.array([True, False]))
  fresh, y0 = cell.step(base, cell.initial_carry(base, (1,)), x[:1])
  kept, y1 = cell.step(base, jax.tree.map(lambda v: v[1:], state), x[1:])
  np.testing.assert_allclose(np.asarray(y), np.concatenate([y0, y1]), **TOL)
  _assert_trees_close(new, jax.tree.map(lambda a, b: jnp.concatenate([a, b]), fresh, kept))


def test_streaming_latency_benchmark_runs():
  from experiments.bench_streaming import VARIANTS, streaming_latency, table

  (row,) = streaming_latency((4,), repeats=3, warmup=1)
  assert row["hidden_size"] == 4 and row["batch_size"] == 1
  assert all(row[f"{v}_ms"] > 0 for v in VARIANTS)
  assert "| 4 |" in table([row])


def test_streaming_latency_ratios_are_medians_of_per_round_ratios():
  from experiments.bench_streaming import VARIANTS, latency_row
  from experiments.timing import Timings

  seconds = {v: [1e-3] * 3 for v in VARIANTS}
  seconds |= dict(jaxrnn_aot=[1e-3, 3e-3, 2e-3], jaxrnn_jit=[4e-3, 3e-3, 1e-3])
  row = latency_row(4, Timings(seconds | dict(torch=[2e-3, 2e-3, 8e-3])))
  assert row["jaxrnn_aot_ms"] == pytest.approx(2.0) and row["torch_ms"] == pytest.approx(2.0)
  assert row["ratio_to_torch"] == pytest.approx(0.5)  # rounds: 1/2, 3/2, 2/8 (medians: 2/2)
  assert row["jit_ratio_to_torch"] == pytest.approx(1.5)  # 4/2, 3/2, 1/8
  assert row["repeats"] == 3


def test_jit_compiles_once_for_a_fixed_shape(rng):
  model = jaxrnn.rnn_layers("lstm", 5, num_layers=2)
  params = model.init(jax.random.key(7), I)
  s = jaxrnn.stream(model)
  traces = []

  def counted(params, state, x, reset):
    traces.append(1)
    return s.step(params, state, x, reset)

  step = jax.jit(counted, donate_argnums=1)
  state = s.init_state(params, (B,))
  xs = _xs(rng)
  for t in range(T):
    state, _ = step(params, state, xs[:, t], jnp.asarray(rng.random(B) < 0.3))
  assert len(traces) == 1
  assert step._cache_size() == 1


@pytest.mark.parametrize(
  "model, match",
  [
    (lambda: jaxrnn.rnn_layers("lstm", 4, bidirectional=True), r"bidirectional=True"),
    (lambda: jaxrnn.recurrent(jaxrnn.gru(4), reverse=True), r"reverse=True"),
    (
      lambda: jaxrnn.bidirectional(
        jaxrnn.recurrent(jaxrnn.gru(4)), jaxrnn.recurrent(jaxrnn.gru(4), reverse=True)
      ),
      r"the model is bidirectional",
    ),
    (
      lambda: jaxrnn.stack(
        [jaxrnn.recurrent(jaxrnn.gru(4)), jaxrnn.recurrent(jaxrnn.gru(4), reverse=True)]
      ),
      r"the model has layer 1, which reads in reverse",
    ),
    (lambda: "lstm", r"expected a jaxrnn.SequenceModel or jaxrnn.Cell, got str"),
  ],
)
def test_models_that_cannot_stream(model, match):
  with pytest.raises(ValueError, match=match):
    jaxrnn.stream(model())


def test_bad_step_inputs(rng):
  model = jaxrnn.rnn_layers("lstm", 5, num_layers=2)
  params = model.init(jax.random.key(8), I)
  s = jaxrnn.stream(model)
  state = s.init_state(params, (B,))
  x = jnp.ones((B, I))
  with pytest.raises(ValueError, match=r"reset has dtype int32; expected bool"):
    s.step(params, state, x, jnp.zeros((B,), jnp.int32))
  with pytest.raises(ValueError, match=r"reset has shape \(3,\); expected .* \(4,\)"):
    s.step(params, state, x, np.zeros((3,), bool))
  with pytest.raises(ValueError, match=r"x has 2 features .* expect input_size=3"):
    s.step(params, state, jnp.ones((B, 2)))
  with pytest.raises(ValueError, match=r"state is a tuple of 1 \(LSTMCarry\); expected a tuple of"):
    s.step(params, state[:1], x)
  with pytest.raises(ValueError, match=r"state is a LSTMCarry\(h, c\); expected a tuple of 2 \(LS"):
    s.step(params, state[0], x, np.zeros((B,), bool))
  with pytest.raises(ValueError, match=r"lstm.step: x has shape \(\); expected \(\*batch, 3\)"):
    s.step(params, state, 1.0)
