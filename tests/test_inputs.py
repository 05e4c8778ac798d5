"""Issue 21: params that must match their model, token-id models, a key per TBPTT window,
and errors that name the mistake (argument order, carry kind)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrnn
from jaxrnn import checkpoint, params_check
from jaxrnn.cells.base import HiddenCarry
from jaxrnn.train import TrainState, make_tbptt_step, window_keys

B, T, I = 2, 4, 3


@pytest.fixture(scope="module")
def lstm_params():
  """An 8-unit LSTM, and the params of a 16-unit one (same input size)."""
  return jaxrnn.lstm(8), jaxrnn.lstm(16).init(jax.random.key(0), I)


@pytest.fixture(scope="module")
def gru_model():
  model = jaxrnn.rnn_layers("gru", 8)
  wrong = jaxrnn.rnn_layers("gru", 16).init(jax.random.key(0), I)
  return model, model.init(jax.random.key(0), I), wrong


# ----------------------------------------------------------------- 1. params of another size

GRU_LEAF = r"params\[0\].w_ih has shape \(3, 48\); expected \(3, 24\), what rnn_layers's init "


def test_scan_and_step_refuse_params_of_another_size(lstm_params):
  cell, p16 = lstm_params
  xs = jnp.ones((B, T, I))
  with pytest.raises(
    ValueError,
    match=r"^scan: params.w_ih has shape \(3, 64\); expected \(3, 32\), what lstm's init gives "
    r"for input_size=3 \(params of another model\?\)\.$",
  ):
    jaxrnn.scan(cell, p16, xs)
  carry = jaxrnn.lstm(16).initial_carry(p16, (B,))
  with pytest.raises(ValueError, match=r"^lstm.step: params.w_ih has shape \(3, 64\); expected"):
    cell.step(p16, carry, xs[:, 0])
  p_proj = jaxrnn.lstm(8, proj_size=4).init(jax.random.key(0), I)
  with pytest.raises(
    ValueError, match=r"^scan: params.w_proj is an array of shape \(8, 4\); expected None, what"
  ):
    jaxrnn.scan(cell, p_proj, xs)


def test_apply_stream_export_refuse_params_of_another_size(gru_model, tmp_path):
  model, _, wrong = gru_model
  xs = jnp.ones((B, T, I))
  with pytest.raises(ValueError, match=r"^rnn_layers.apply: " + GRU_LEAF):
    model.apply(wrong, xs)
  with pytest.raises(ValueError, match=r"^rnn_layers.apply: " + GRU_LEAF):
    jax.jit(model.apply)(wrong, xs)  # at trace time
  s = jaxrnn.stream(model)
  state = jaxrnn.rnn_layers("gru", 16).initial_carry(wrong, (B,))
  with pytest.raises(ValueError, match=r"^stream.step: " + GRU_LEAF):
    s.step(wrong, state, xs[:, 0])
  with pytest.raises(ValueError, match=r"^export.save: " + GRU_LEAF):
    jaxrnn.export.save(tmp_path, model, wrong)
  assert list(tmp_path.iterdir()) == []  # nothing written: load(expected_config=) sees none


def test_checkpoint_refuses_params_of_another_size(gru_model, tmp_path, monkeypatch):
  model, params, wrong = gru_model
  with pytest.raises(ValueError, match=r"^checkpoint.save: " + GRU_LEAF):
    checkpoint.save(tmp_path, 0, wrong, model=model)
  state = TrainState.create(wrong, optax.sgd(0.1))
  with pytest.raises(ValueError, match=r"^checkpoint.save: " + GRU_LEAF):
    checkpoint.save(tmp_path, 0, state, model=model)
  # A checkpoint written before the check (16-unit params recorded as the 8-unit model):
  with monkeypatch.context() as m:
    m.setattr(params_check, "check_state", lambda *a: None)
    checkpoint.save(tmp_path, 1, wrong, model=model)
  with pytest.raises(ValueError, match=r"^checkpoint.restore: " + GRU_LEAF):
    checkpoint.restore(tmp_path, wrong, model=model)
  # Right params pass and come back exact; a model that is a record of a part is left alone.
  checkpoint.save(tmp_path, 2, {"params": params, "extra": jnp.zeros(3)}, model=model)
  checkpoint.save(tmp_path, 3, {"rnn": params, "w": jnp.zeros(3)}, model=model)
  target = {"params": params, "extra": jnp.zeros(3)}
  restored, _ = checkpoint.restore(tmp_path, target, step=2, model=model)
  np.testing.assert_array_equal(restored["params"][0].w_hh, params[0].w_hh)


def test_right_params_pass_and_equal_the_unchecked_path(gru_model):
  model, params, _ = gru_model
  xs = jax.random.normal(jax.random.key(1), (B, T, I))
  lengths = jnp.array([T, 2])
  checked = model.apply(params, xs, seq_lengths=lengths)
  unchecked = params_check.raw(model.apply)(params, xs, seq_lengths=lengths)
  for a, b in zip(jax.tree.leaves(checked), jax.tree.leaves(unchecked), strict=True):
    np.testing.assert_array_equal(a, b)
  # The jitted program is the same with the checks off: they run in Python, at trace time.
  on = jax.jit(model.apply).lower(params, xs).as_text()
  with pytest.MonkeyPatch.context() as m:
    for name in ("check", "check_carry", "check_arrays"):
      m.setattr(params_check, name, lambda *a, **k: None)
    off = jax.jit(model.apply).lower(params, xs).as_text()
  assert on == off


def test_dtypes_whole_tree_casts_pass_half_casts_do_not(lstm_params):
  cell = jaxrnn.lstm(4)
  params = cell.init(jax.random.key(0), I)
  xs = jnp.ones((B, T, I))
  half = params._replace(w_hh=params.w_hh.astype(jnp.bfloat16))
  with pytest.raises(
    ValueError,
    match=r"^scan: params.w_hh has dtype bfloat16; expected float32 like params.w_ih: lstm's "
    r"init gives both float32 \(cast all the params or none\)\.$",
  ):
    jaxrnn.scan(cell, half, xs)
  ints = params._replace(b=params.b.astype(jnp.int32))
  with pytest.raises(ValueError, match=r"^scan: params.b has dtype int32; expected float32, what"):
    jaxrnn.scan(cell, ints, xs)
  whole = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
  _, ys = jaxrnn.scan(cell, whole, xs.astype(jnp.bfloat16))
  assert ys.dtype == jnp.bfloat16


def test_user_cell_without_input_size_is_checked_by_structure():
  from user_cell import leaky

  cell = leaky(5)
  params = cell.init(jax.random.key(0), I)
  xs = jnp.ones((B, T, I))
  # Its params declare no input_size: another size is not seen, another structure is.
  _, ys = jaxrnn.scan(cell, leaky(7).init(jax.random.key(0), I), xs)
  assert ys.shape == (B, T, 7)
  with pytest.raises(ValueError, match=r"^scan: params is a dict with keys \['w'\]; expected Le"):
    jaxrnn.scan(cell, {"w": params.w}, xs)


# ----------------------------------------------------------------- 3. token-id models

VOCAB, EMBED, H = 7, 3, 4


@pytest.fixture(scope="module")
def token_model():
  """A user's model on ``(batch,)`` int ids: an embedding, then a GRU; apply from step."""
  gru = jaxrnn.gru(H)

  def init(key, input_size):
    k1, k2 = jax.random.split(key)
    return {"embed": jax.random.normal(k1, (input_size, EMBED)), "gru": gru.init(k2, EMBED)}

  def initial_carry(params, batch_shape=()):
    return gru.initial_carry(params["gru"], batch_shape)

  def step(params, carry, ids):
    return gru.step(params["gru"], carry, params["embed"][ids])

  model = jaxrnn.SequenceModel(init, None, initial_carry, step=step, name="tokens")
  ids = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (3, 5)), jnp.int32)
  return model, model.init(jax.random.key(0), VOCAB), ids


def _loop(model, params, ids, resets, lengths):
  """The reference: one step at a time, restarting where ``resets``, frozen past ``lengths``."""
  carry0 = model.initial_carry(params, (ids.shape[0],))
  carry, ys = carry0, []
  for t in range(ids.shape[1]):
    restart, valid = resets[:, t, None], (t < lengths)[:, None]
    carry = jax.tree.map(functools.partial(jnp.where, restart), carry0, carry)
    new, y = model.step(params, carry, ids[:, t])
    carry = jax.tree.map(functools.partial(jnp.where, valid), new, carry)
    ys.append(jnp.where(valid, y, 0.0))
  return carry, jnp.stack(ys, 1)


def test_token_ids_apply_with_lengths_and_resets(token_model):
  model, params, ids = token_model
  resets = jnp.zeros(ids.shape, bool).at[0, 2].set(True).at[2, 3].set(True)
  lengths = jnp.array([5, 2, 4])
  carry, ys = model.apply(params, ids, seq_lengths=lengths, resets=resets)
  ref_carry, ref = _loop(model, params, ids, resets, lengths)
  assert ys.shape == (3, 5, H)
  np.testing.assert_allclose(ys, ref, atol=1e-6)
  np.testing.assert_allclose(carry.h, ref_carry.h, atol=1e-6)
  # With a carry given, the carry says where the batch ends; the same numbers.
  c2, ys2 = model.apply(params, ids, model.initial_carry(params, (3,)), resets=resets)
  np.testing.assert_allclose(ys2, _loop(model, params, ids, resets, jnp.full(3, 5))[1], atol=1e-6)


def test_token_ids_stream_with_resets(token_model):
  model, params, ids = token_model
  s = jaxrnn.stream(model)
  step = jax.jit(s.step)
  resets = jnp.zeros(ids.shape, bool).at[1, 1].set(True)
  state = s.init_state(params, (3,))
  _, ref = model.apply(params, ids, resets=resets)
  for t in range(ids.shape[1]):
    state, y = step(params, state, ids[:, t], resets[:, t])
    np.testing.assert_allclose(y, ref[:, t], atol=1e-6)
  with pytest.raises(ValueError, match=r"reset has shape \(2,\); expected the state's batch "):
    s.step(params, state, ids[:, 0], jnp.zeros((2,), bool))


def test_token_ids_export_agrees(token_model, tmp_path):
  model, params, ids = token_model
  spec = jax.ShapeDtypeStruct((), jnp.int32)
  jaxrnn.export.save(tmp_path, model, params, input_spec=spec)
  art = jaxrnn.export.load(tmp_path)
  resets = np.zeros(ids.shape, bool)
  resets[2, 1] = True
  lengths = np.array([5, 3, 5])
  _, ys = art.apply(np.asarray(ids), seq_lengths=lengths, resets=resets)
  _, ref = model.apply(params, ids, seq_lengths=jnp.asarray(lengths), resets=jnp.asarray(resets))
  np.testing.assert_allclose(ys, ref, atol=1e-6)
  state = art.init_state(3)
  for t in range(5):
    state, y = art.step(state, np.asarray(ids[:, t]), resets[:, t])
    np.testing.assert_allclose(y[0], ref[0, t], atol=1e-6)
    np.testing.assert_allclose(y[2], ref[2, t], atol=1e-6)


# ----------------------------------------------------------------- 4. a key per TBPTT window


def _dropout_loss(params, carry, batch, key):
  """A loss whose value is its dropout mask, as bits: w * sum(mask * x) with x = 2**k."""
  mask = jax.random.bernoulli(key, 0.5, batch["x"].shape)
  return params["w"] * jnp.sum(jnp.where(mask, batch["x"], 0.0)), carry


def test_tbptt_key_per_window():
  opt = optax.sgd(0.0)  # params stay put: each window's loss is its mask's
  state = TrainState.create({"w": jnp.float32(1.0)}, opt)
  step = make_tbptt_step(_dropout_loss, opt, window=4)
  bits = 2.0 ** jnp.arange(8, dtype=jnp.float32).reshape(2, 4)
  stream = {"x": jnp.tile(bits, (1, 3))}  # three windows of (2, 4)
  carry = jnp.zeros(2)
  key = jax.random.key(3)
  _, _, m1 = step(state, carry, stream, key)
  _, _, m2 = step(state, carry, stream, key)
  _, _, m3 = step(state, carry, stream, jax.random.key(4))
  masks = [jax.random.bernoulli(k, 0.5, (2, 4)) for k in window_keys(key, 3)]
  expected = [float(jnp.sum(jnp.where(m, bits, 0.0))) for m in masks]
  np.testing.assert_array_equal(m1["loss"], expected)  # window i: fold_in(key, i)
  assert len(set(expected)) == 3  # the masks differ per window
  np.testing.assert_array_equal(m1["loss"], m2["loss"])  # and repeat under the same key
  assert not np.array_equal(m1["loss"], m3["loss"])
  with pytest.raises(ValueError, match=r"key has shape \(2,\) and dtype key<fry>; expected one"):
    step(state, carry, stream, jax.random.split(key))


def test_tbptt_without_key_keeps_the_old_loss_signature():
  opt = optax.sgd(0.0)
  state = TrainState.create({"w": jnp.float32(2.0)}, opt)
  step = make_tbptt_step(lambda p, c, b: (p["w"] * jnp.sum(b["x"]), c), opt, window=4)
  _, _, metrics = step(state, jnp.zeros(2), {"x": jnp.ones((2, 8))})
  np.testing.assert_array_equal(metrics["loss"], [16.0, 16.0])


# ----------------------------------------------------------------- 5. the likely mistake


def test_argument_swaps_name_the_order(gru_model):
  cell = jaxrnn.lstm(4)
  params = cell.init(jax.random.key(0), I)
  xs = jnp.ones((B, T, I))
  with pytest.raises(
    ValueError,
    match=r"^scan: xs is a LSTMParams\(w_ih, w_hh, b, w_proj\); expected an array\. The "
    r"arguments go scan\(cell, params, xs, carry=None, \.\.\.\)\.$",
  ):
    jaxrnn.scan(cell, xs, params)
  with pytest.raises(ValueError, match=r"got LSTMParams; the arguments go scan\(cell, params, xs"):
    jaxrnn.scan(params, cell, xs)
  model, m_params, _ = gru_model
  with pytest.raises(
    ValueError,
    match=r"^rnn_layers.apply: xs is a tuple of 1 \(GRUParams\); expected an array\. The "
    r"arguments go apply\(params, xs, carry=None, \.\.\.\)\.$",
  ):
    model.apply(xs, m_params)
  carry = cell.initial_carry(params, (B,))
  with pytest.raises(
    ValueError,
    match=r"^lstm.step: x is a LSTMParams\(w_ih, w_hh, b, w_proj\); expected an array\. The "
    r"arguments go step\(params, carry, x\)\.$",
  ):
    cell.step(xs[:, 0], carry, params)
  with pytest.raises(
    ValueError,
    match=r"^lstm.step: params is an array of shape \(2, 3\); expected LSTMParams\(.*\), what "
    r"lstm's init gives\. The arguments go step\(params, carry, x\)\.$",
  ):
    cell.step(xs[:, 0], carry, xs[:, 0])


def test_a_carry_of_another_kind_names_the_expected_type():
  cell = jaxrnn.lstm(4)
  params = cell.init(jax.random.key(0), I)
  xs = jnp.ones((B, T, I))
  gru_carry = jaxrnn.gru(4).initial_carry(jaxrnn.gru(4).init(jax.random.key(0), I), (B,))
  assert isinstance(gru_carry, HiddenCarry)
  message = (
    r"carry is a HiddenCarry\(h\); expected LSTMCarry\(h, c\), what lstm's initial_carry "
    r"returns \(is it another model's carry\?\)\.$"
  )
  with pytest.raises(ValueError, match=r"^lstm.step: " + message):
    cell.step(params, gru_carry, xs[:, 0])
  with pytest.raises(ValueError, match=r"^scan: " + message):
    jaxrnn.scan(cell, params, xs, gru_carry)
  with pytest.raises(ValueError, match=r"^recurrent.apply: carry is a HiddenCarry\(h\)"):
    jaxrnn.recurrent(cell).apply(params, xs, gru_carry)
