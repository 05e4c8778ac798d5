"""The one model contract: a user's cell works everywhere a built-in one does.

The cell (tests/user_cell.py) is written on the public `Cell` contract only. Every
check compares against an independent reference: a Python loop of the cell's own
``step`` over each row's valid part, or the model composed by hand.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import processes
import pytest
import user_cell

import jaxrnn
from jaxrnn import checkpoint, train

B, T, I = 3, 6, 3
LENGTHS = np.array([6, 3, 0])


def _xs(rng, *shape):
  return jnp.asarray(rng.standard_normal(shape), jnp.float32)


def _loop_reference(cell, params, xs, lengths, reverse):
  """Row by row, the cell's step over the row's valid part (read backwards if reverse)."""
  ys, carries = np.zeros(xs.shape[:2] + (5,), np.float32), []
  for b in range(xs.shape[0]):
    carry = cell.initial_carry(params, ())
    order = range(lengths[b] - 1, -1, -1) if reverse else range(lengths[b])
    for t in order:
      carry, y = cell.step(params, carry, xs[b, t])
      ys[b, t] = y
    carries.append(carry.h)
  return np.stack(carries), ys


# The user cell's scan (lengths, resets, reverse) against a loop of its step, and the rest of
# the cell contract: tests/test_registry.py (`jaxrnn.testing.check_cell`).


def test_user_cell_in_a_stack_and_bidirectional_equal_the_composition(rng):
  cell, lstm = user_cell.CELL, jaxrnn.lstm(4)
  xs = _xs(rng, B, T, I)
  params = user_cell.MODEL.init(jax.random.key(1), I)
  carry, ys = user_cell.MODEL.apply(params, xs, seq_lengths=LENGTHS)
  c0, h0 = jaxrnn.scan(cell, params[0], xs, seq_lengths=LENGTHS)
  c1, h1 = jaxrnn.scan(lstm, params[1], h0, seq_lengths=LENGTHS)
  np.testing.assert_array_equal(ys, h1)
  np.testing.assert_array_equal(carry[0].h, c0.h)

  bi = jaxrnn.bidirectional(jaxrnn.recurrent(cell), jaxrnn.recurrent(cell, reverse=True))
  p = bi.init(jax.random.key(2), I)
  _, ys = bi.apply(p, xs, seq_lengths=LENGTHS)
  _, fwd = _loop_reference(cell, p.forward, xs, LENGTHS, reverse=False)
  _, bwd = _loop_reference(cell, p.backward, xs, LENGTHS, reverse=True)
  np.testing.assert_allclose(ys, np.concatenate([fwd, bwd], axis=-1), atol=1e-6)


def test_stream_and_export_of_a_stack_with_a_user_cell_equal_apply(rng, tmp_path):
  model = user_cell.MODEL
  params = model.init(jax.random.key(3), I)
  xs = _xs(rng, B, T, I)
  carry, ys = model.apply(params, xs)
  s = jaxrnn.stream(model)
  state = s.init_state(params, (B,))
  step = jax.jit(s.step)
  for t in range(T):
    state, y = step(params, state, xs[:, t])
    np.testing.assert_allclose(y, ys[:, t], atol=1e-6)
  np.testing.assert_allclose(state[1].c, carry[1].c, atol=1e-6)

  manifest = jaxrnn.export.save(tmp_path, model, params, streaming=True, input_size=I)
  assert manifest["streaming"]["available"] is True
  artifact = jaxrnn.export.load(tmp_path, expected_config=model)
  _, ys_loaded = artifact.apply(np.asarray(xs))
  np.testing.assert_allclose(ys_loaded, ys, atol=1e-6)
  a_state = artifact.init_state(B)
  for t in range(T):
    a_state, y = artifact.step(a_state, np.asarray(xs[:, t]))
  np.testing.assert_allclose(y, ys[:, -1], atol=1e-6)


def test_checkpoint_of_a_user_cell_model_restores_bit_exactly(tmp_path):
  model = user_cell.MODEL
  opt = optax.adam(1e-2)
  state = train.TrainState.create(model.init(jax.random.key(4), I), opt)
  checkpoint.save(tmp_path, 3, state, model=model)
  target = train.TrainState.create(model.init(jax.random.key(5), I), opt)
  restored, info = checkpoint.restore(tmp_path, target, model=model)
  assert info["step"] == 3
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
    np.testing.assert_array_equal(a, b)


def test_data_parallel_sharded_step_of_a_user_cell_equals_one_device():
  here = os.path.dirname(os.path.abspath(__file__))
  env = processes.env(4)
  proc = subprocess.run(
    [sys.executable, os.path.join(here, "user_cell.py")],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
  report = json.loads(line[len("RESULT ") :])
  assert report["devices"] == 4
  assert report["spec"] == "P('data',)"
  assert report["moved"] > 1e-3  # training changed the parameters...
  assert report["diff"] < 1e-6  # ...and 4 devices changed them as one device did


# ----------------------------------------------------------------- static values


def test_cells_and_models_are_static_values_equal_by_config():
  assert jaxrnn.lstm(4) == jaxrnn.lstm(4) and hash(jaxrnn.lstm(4)) == hash(jaxrnn.lstm(4))
  assert jaxrnn.lstm(4) != jaxrnn.lstm(5) and jaxrnn.lstm(4) != jaxrnn.gru(4)
  model = jaxrnn.rnn_layers("gru", 4, num_layers=2)
  assert model == jaxrnn.rnn_layers("gru", 4, num_layers=2)
  assert model != jaxrnn.rnn_layers("gru", 4, num_layers=2, remat=True)
  assert jax.tree.leaves(model) == [] and jax.tree.leaves(jaxrnn.lstm(4)) == []
  for cell in (jaxrnn.lstm(3, proj_size=2, dtype=jnp.bfloat16), jaxrnn.elman(3, output_size=2)):
    assert dict(cell.config)["dtype"] in ("bfloat16", "float32")
    assert getattr(jaxrnn, cell.name)(**dict(cell.config)) == cell


def test_user_cells_are_equal_only_with_the_same_functions():
  a = user_cell.leaky(5)
  b = user_cell.leaky(5)  # same code, new functions: a different cell
  assert a != b and a == jaxrnn.Cell(a.init, a.initial_carry, a.step, name="leaky")
  assert a == a.replace() and a.replace(name="other") != a
  bare = jaxrnn.Cell(a.init, a.initial_carry, a.step)  # positional construction
  assert bare.name == "custom" and bare.sequence is None


def test_a_model_passes_through_plain_jit_and_equal_models_do_not_retrace(rng):
  traces = []

  @jax.jit
  def run(model, params, xs):
    traces.append(1)
    return model.apply(params, xs)[1]

  params = jaxrnn.rnn_layers("lstm", 4).init(jax.random.key(0), I)
  xs = _xs(rng, B, T, I)
  y1 = run(jaxrnn.rnn_layers("lstm", 4), params, xs)
  y2 = run(jaxrnn.rnn_layers("lstm", 4), params, xs)
  np.testing.assert_array_equal(y1, y2)
  assert len(traces) == 1


def test_a_model_inside_an_equinox_module_under_plain_jit(rng):
  import equinox as eqx

  class Net(eqx.Module):
    rnn: jaxrnn.SequenceModel
    params: tuple

  model = jaxrnn.rnn_layers("gru", 4)
  net = Net(model, model.init(jax.random.key(0), I))
  xs = _xs(rng, B, T, I)
  ys = jax.jit(lambda n, x: n.rnn.apply(n.params, x)[1])(net, xs)
  np.testing.assert_array_equal(ys, model.apply(net.params, xs)[1])


def test_a_user_sequence_model_from_a_step(rng):
  cell = user_cell.CELL
  model = jaxrnn.SequenceModel(cell.init, None, cell.initial_carry, step=cell.step)
  params = model.init(jax.random.key(0), I)
  xs = _xs(rng, B, T, I)
  _, ys = model.apply(params, xs, seq_lengths=LENGTHS)
  _, ref = _loop_reference(cell, params, xs, LENGTHS, reverse=False)
  np.testing.assert_allclose(ys, ref, atol=1e-6)
  with pytest.raises(ValueError, match=r"needs apply, or a step"):
    jaxrnn.SequenceModel(cell.init, None, cell.initial_carry)


# ----------------------------------------------------------------- dtype policy


def test_bfloat16_params_take_float32_inputs_and_keep_their_dtype(rng):
  cell = jaxrnn.lstm(4, dtype=jnp.bfloat16)
  params = cell.init(jax.random.key(0), I)
  xs = _xs(rng, B, T, I)
  carry, ys = jaxrnn.scan(cell, params, xs)
  assert ys.dtype == jnp.bfloat16 and carry.h.dtype == carry.c.dtype == jnp.float32  # carry_dtype
  ref_carry, ref_ys = jaxrnn.scan(cell, params, xs.astype(jnp.bfloat16))
  np.testing.assert_array_equal(ys, ref_ys)
  kept = jaxrnn.lstm(4, dtype=jnp.bfloat16, carry_dtype=jnp.bfloat16)
  carry, ys = jaxrnn.scan(kept, params, xs)
  assert carry.h.dtype == carry.c.dtype == ys.dtype == jnp.bfloat16


def test_float64_numpy_inputs_to_float32_params_under_x64(rng):
  x64 = rng.standard_normal((B, T, I))
  with jax.enable_x64(True):
    cell = jaxrnn.gru(4)
    params = cell.init(jax.random.key(0), I)
    carry, ys = jaxrnn.scan(cell, params, x64)
    assert ys.dtype == carry.h.dtype == jnp.float32
    ref = jaxrnn.scan(cell, params, jnp.asarray(x64, jnp.float32))[1]
    np.testing.assert_array_equal(ys, ref)


def test_compute_dtype_float32_over_bfloat16_params_equals_the_policy_by_hand(rng):
  kw = dict(dtype=jnp.bfloat16, compute_dtype=jnp.float32)
  params = jaxrnn.gru(4, **kw).init(jax.random.key(0), I)
  xs = _xs(rng, B, T, I)
  f32 = jaxrnn.gru(4)
  p32 = jax.tree.map(lambda a: a.astype(jnp.float32), params)
  # The default carry_dtype (float32 for bfloat16 params): the float32 cell on the copy.
  carry, ys = jaxrnn.scan(jaxrnn.gru(4, **kw), params, xs)
  assert carry.h.dtype == ys.dtype == jnp.float32
  ref_carry, ref_ys = jaxrnn.scan(f32, p32, xs)
  np.testing.assert_allclose(ys, ref_ys, atol=1e-6)
  np.testing.assert_allclose(carry.h, ref_carry.h, atol=1e-6)
  # A bfloat16 carry: by hand, the float32 cell on the float32 copy of the params, the
  # carry rounded to bfloat16 after every step.
  carry, ys = jaxrnn.scan(jaxrnn.gru(4, **kw, carry_dtype=jnp.bfloat16), params, xs)
  assert carry.h.dtype == jnp.bfloat16 and ys.dtype == jnp.float32
  h = jnp.zeros((B, 4), jnp.bfloat16)
  for t in range(T):
    c, y = f32.step(p32, jaxrnn.HiddenCarry(h.astype(jnp.float32)), xs[:, t])
    h = c.h.astype(jnp.bfloat16)
    np.testing.assert_allclose(ys[:, t], y, atol=1e-6)
  np.testing.assert_allclose(carry.h.astype(jnp.float32), h.astype(jnp.float32), atol=1e-2)


def test_integer_inputs_to_a_builtin_cell_are_a_value_error():
  cell = jaxrnn.lstm(4)
  params = cell.init(jax.random.key(0), I)
  with pytest.raises(ValueError, match=r"x has dtype int32; expected a floating dtype"):
    jaxrnn.scan(cell, params, jnp.ones((B, T, I), jnp.int32))


# ----------------------------------------------------------------- wrong params


def test_params_of_the_wrong_kind_are_named():
  lstm, gru = jaxrnn.lstm(4), jaxrnn.gru(4)
  p_lstm, p_gru = lstm.init(jax.random.key(0), I), gru.init(jax.random.key(0), I)
  xs = jnp.ones((B, T, I))
  with pytest.raises(ValueError, match=r"scan: params is a LSTMParams\(.*\); expected GRUParams"):
    jaxrnn.scan(gru, p_lstm, xs)
  with pytest.raises(ValueError, match=r"gru.initial_carry: params is a LSTMParams; expected GRU"):
    gru.initial_carry(p_lstm, (B,))
  with pytest.raises(ValueError, match=r"lstm.step: params is a GRUParams\(.*\); expected LSTMP"):
    lstm.step(p_gru, lstm.initial_carry(p_lstm, (B,)), xs[:, 0])
  model = jaxrnn.rnn_layers("lstm", 4, num_layers=2)
  with pytest.raises(
    ValueError, match=r"params is a LSTMParams\(.*\); expected a tuple of 2 \(LSTMParams, LSTMP"
  ):
    model.apply(p_lstm, xs)


# ----------------------------------------------------------------- bugs found while reading


def test_narrow_integer_lengths_give_the_int32_result(rng):
  cell = jaxrnn.gru(4)
  params = cell.init(jax.random.key(0), I)
  xs = _xs(rng, 2, 300, I)
  wide = jaxrnn.scan(cell, params, xs, seq_lengths=np.array([5, 120], np.int32))
  for dtype in (np.int8, np.uint8, np.int16):
    narrow = jaxrnn.scan(cell, params, xs, seq_lengths=np.array([5, 120], dtype))
    np.testing.assert_array_equal(narrow[1], wide[1])
  # ...and they are the lengths: row 1 stops after step 120.
  np.testing.assert_array_equal(wide[1][1, 120:], 0.0)
  # (to 1 ulp: the suite's XLA:CPU loop emitters may round the carry and the output apart)
  np.testing.assert_allclose(wide[0].h[1], wide[1][1, 119], rtol=2e-7, atol=0)
