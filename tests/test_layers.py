"""Sequence layers and `from_torch` / `to_torch` against torch.nn.RNN, LSTM and GRU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import to_np
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import jaxrnn

TOL = dict(atol=1e-5, rtol=1e-5)
I, T, B = 3, 6, 4

MODULES = {
  "rnn_tanh": lambda **kw: torch.nn.RNN(I, 5, nonlinearity="tanh", **kw),
  "rnn_relu": lambda **kw: torch.nn.RNN(I, 5, nonlinearity="relu", **kw),
  "lstm": lambda **kw: torch.nn.LSTM(I, 5, **kw),
  "lstm_proj": lambda **kw: torch.nn.LSTM(I, 5, proj_size=2, **kw),
  "gru": lambda **kw: torch.nn.GRU(I, 5, **kw),
}
CONFIGS = [  # (num_layers, bidirectional, bias, batch_first)
  (1, False, True, True),
  (2, True, True, False),
  (2, False, False, True),
  (3, True, False, True),
]


def _run_torch(m, x, lengths, state):
  """The module on x (batch-first numpy), packed when lengths is given."""
  xt = torch.tensor(x, requires_grad=True)
  inp = xt if m.batch_first else xt.transpose(0, 1)
  if lengths is not None:
    inp = pack_padded_sequence(inp, torch.tensor(lengths), m.batch_first, enforce_sorted=False)
  out, hn = m(inp, state)
  if lengths is not None:
    out, _ = pad_packed_sequence(out, m.batch_first, total_length=x.shape[1])
  if not m.batch_first:
    out = out.transpose(0, 1)
  return xt, out, hn if isinstance(hn, tuple) else (hn,)


@pytest.mark.parametrize("kind", MODULES)
@pytest.mark.parametrize("num_layers,bidir,bias,batch_first", CONFIGS)
@pytest.mark.parametrize("padded", [False, True])
def test_from_torch_matches_module(kind, num_layers, bidir, bias, batch_first, padded, rng):
  torch.manual_seed(0)
  m = MODULES[kind](num_layers=num_layers, bidirectional=bidir, bias=bias, batch_first=batch_first)
  model, params = jaxrnn.from_torch(m)
  x = rng.standard_normal((B, T, I)).astype(np.float32)
  lengths = np.array([6, 2, 5, 1]) if padded else None
  # A random initial state for half of the cases, PyTorch's zeros for the rest.
  state = None
  if num_layers == 2:
    D = 2 if bidir else 1
    hs = 2 if kind == "lstm_proj" else 5
    h0 = torch.tensor(rng.standard_normal((num_layers * D, B, hs)).astype(np.float32))
    c0 = torch.tensor(rng.standard_normal((num_layers * D, B, 5)).astype(np.float32))
    state = (h0, c0) if kind.startswith("lstm") else h0
  xt, out_t, hn_t = _run_torch(m, x, lengths, state)

  carry0 = None
  if state is not None:
    carry0 = jaxrnn.carry_from_torch(model, *(state if isinstance(state, tuple) else (state,)))
  xs = jnp.asarray(x if batch_first else x.transpose(1, 0, 2))
  kw = {} if lengths is None else dict(seq_lengths=jnp.asarray(lengths))

  def run(xs):
    return model.apply(params, xs, carry0, **kw)

  carry, ys = jax.jit(run)(xs)
  ys_bf = ys if batch_first else jnp.swapaxes(ys, 0, 1)
  np.testing.assert_allclose(ys_bf, to_np(out_t), **TOL)
  for mine, theirs in zip(jaxrnn.carry_to_torch(model, carry), hn_t, strict=True):
    np.testing.assert_allclose(mine, to_np(theirs), **TOL)

  # Input gradients of a weighted sum of outputs and final state.
  w = rng.standard_normal(out_t.shape).astype(np.float32)
  (out_t * torch.tensor(w)).sum().add(hn_t[0].sum()).backward()

  def loss(xs):
    carry, ys = run(xs)
    ys_bf = ys if batch_first else jnp.swapaxes(ys, 0, 1)
    return jnp.sum(ys_bf * w) + jnp.sum(jaxrnn.carry_to_torch(model, carry)[0])

  gx = jax.jit(jax.grad(loss))(xs)
  gx = gx if batch_first else jnp.swapaxes(gx, 0, 1)
  np.testing.assert_allclose(gx, to_np(xt.grad), **TOL)


@pytest.mark.parametrize("kind", ["elman", "lstm", "gru"])
def test_to_torch_round_trip(kind, rng):
  cell_kw = dict(proj_size=3) if kind == "lstm" else {}
  model = jaxrnn.rnn_layers(kind, 6, num_layers=2, bidirectional=True, **cell_kw)
  params = model.init(jax.random.key(0), I)
  m = {"elman": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind](
    I, 6, num_layers=2, bidirectional=True, batch_first=True, **cell_kw
  )
  m.load_state_dict(jaxrnn.to_torch(params))
  x = rng.standard_normal((B, T, I)).astype(np.float32)
  _, ys = model.apply(params, jnp.asarray(x))
  np.testing.assert_allclose(ys, to_np(m(torch.tensor(x))[0]), **TOL)
  # And back again: the same function.
  model2, params2 = jaxrnn.from_torch(m)
  _, ys2 = model2.apply(params2, jnp.asarray(x))
  np.testing.assert_allclose(ys2, ys, atol=1e-6)


def test_from_torch_float64_module(rng):
  m = torch.nn.GRU(I, 4, batch_first=True).double()
  with jax.enable_x64(True):
    model, params = jaxrnn.from_torch(m)
    assert params[0].w_ih.dtype == np.float64
    x = rng.standard_normal((B, T, I))
    _, ys = model.apply(params, jnp.asarray(x))
    np.testing.assert_allclose(ys, to_np(m(torch.tensor(x))[0]), atol=1e-12)


def _identity_layer():
  return jaxrnn.SequenceModel(
    init=lambda key, input_size: (),
    apply=lambda params, xs, carry=None, **kw: ((), xs),
    initial_carry=lambda params, batch_shape=(): (),
  )


def test_dropout_between_layers():
  model = jaxrnn.stack([_identity_layer(), _identity_layer()], dropout_rate=0.25)
  xs = jnp.ones((50, 40, 10))
  _, ys = model.apply(((), ()), xs, key=jax.random.key(0))
  values = np.unique(np.asarray(ys))
  np.testing.assert_allclose(values, [0.0, 1 / 0.75], rtol=1e-6)
  assert abs(float((ys == 0).mean()) - 0.25) < 0.01
  assert abs(float(ys.mean()) - 1.0) < 0.02
  _, ys_same = model.apply(((), ()), xs, key=jax.random.key(0))
  _, ys_other = model.apply(((), ()), xs, key=jax.random.key(1))
  np.testing.assert_array_equal(ys, ys_same)
  assert not np.array_equal(ys, ys_other)
  _, ys_eval = model.apply(((), ()), xs, deterministic=True)
  np.testing.assert_array_equal(ys_eval, xs)


def test_dropout_in_rnn_layers_only_between_layers(rng):
  det = jaxrnn.rnn_layers("lstm", 8, num_layers=2)
  drop = jaxrnn.rnn_layers("lstm", 8, num_layers=2, dropout_rate=0.5)
  params = det.init(jax.random.key(0), I)
  xs = jnp.asarray(rng.standard_normal((B, T, I)).astype(np.float32))
  _, y_det = det.apply(params, xs)
  _, y_eval = drop.apply(params, xs, deterministic=True)
  np.testing.assert_array_equal(y_det, y_eval)
  _, y_train = drop.apply(params, xs, key=jax.random.key(3))
  assert float(jnp.abs(y_train - y_det).max()) > 1e-3
  # One layer: nothing to drop between, so training equals evaluation.
  one = jaxrnn.rnn_layers("gru", 8, dropout_rate=0.5)
  p1 = one.init(jax.random.key(0), I)
  np.testing.assert_array_equal(
    one.apply(p1, xs, key=jax.random.key(1))[1], one.apply(p1, xs, deterministic=True)[1]
  )


def test_bidirectional_aligned_with_forward_on_padded_batches(rng):
  cell = jaxrnn.gru(4)
  fwd, bwd = jaxrnn.recurrent(cell), jaxrnn.recurrent(cell, reverse=True)
  model = jaxrnn.bidirectional(fwd, bwd)
  params = model.init(jax.random.key(0), I)
  xs = jnp.asarray(rng.standard_normal((B, T, I)).astype(np.float32))
  lengths = jnp.array([6, 3, 0, 1])
  carry, ys = model.apply(params, xs, seq_lengths=lengths)
  cf, yf = jaxrnn.scan(cell, params.forward, xs, seq_lengths=lengths)
  cb, yb = jaxrnn.scan(cell, params.backward, xs, seq_lengths=lengths, reverse=True)
  np.testing.assert_array_equal(ys, jnp.concatenate([yf, yb], -1))
  np.testing.assert_array_equal(carry.backward.h, cb.h)
  # Row 1 (length 3): the backward output at t is the reverse scan of x[1, t:3].
  for t in range(3):
    _, y = jaxrnn.scan(cell, params.backward, xs[1, t:3][::-1])
    np.testing.assert_allclose(ys[1, t, 4:], y[-1], atol=1e-6)


def test_stack_initial_carry_matches_apply_default(rng):
  model = jaxrnn.rnn_layers("lstm", 5, num_layers=2, bidirectional=True, proj_size=2)
  params = model.init(jax.random.key(0), I)
  xs = jnp.asarray(rng.standard_normal((B, T, I)).astype(np.float32))
  c0 = model.initial_carry(params, (B,))
  a = model.apply(params, xs)
  b = model.apply(params, xs, c0)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert c0[1].forward.h.shape == (B, 2) and c0[1].forward.c.shape == (B, 5)


@pytest.mark.parametrize(
  "make,match",
  [
    (lambda: jaxrnn.rnn_layers("transformer", 4), r"kind='transformer' is not one of"),
    (lambda: jaxrnn.rnn_layers("lstm", 4, num_layers=0), r"num_layers=0: expected a positive"),
    (lambda: jaxrnn.stack([]), r"stack needs at least one layer"),
    (lambda: jaxrnn.rnn_layers("gru", 4, dropout_rate=1.0), r"dropout_rate=1.0: expected a number"),
    (
      lambda: jaxrnn.bidirectional(
        jaxrnn.recurrent(jaxrnn.gru(2)), jaxrnn.recurrent(jaxrnn.gru(2), time_major=True)
      ),
      r"forward has time_major=False but backward has time_major=True",
    ),
    (
      lambda: jaxrnn.from_torch(torch.nn.Linear(2, 2)),
      r"module is a Linear; expected torch.nn.RNN",
    ),
  ],
)
def test_bad_configuration_raises(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_bad_apply_raises():
  model = jaxrnn.rnn_layers("lstm", 4, num_layers=2, dropout_rate=0.2)
  params = model.init(jax.random.key(0), I)
  xs = jnp.ones((B, T, I))
  with pytest.raises(ValueError, match=r"dropout_rate=0.2 needs a key"):
    model.apply(params, xs)
  with pytest.raises(ValueError, match=r"is a tuple of 1 \(LSTMParams\); expected a tuple of 2"):
    model.apply(params[:1], xs, deterministic=True)
  with pytest.raises(ValueError, match=r"xs has 5 features .* expect input_size=3"):
    model.apply(params, jnp.ones((B, T, 5)), deterministic=True)
  with pytest.raises(ValueError, match=r"seq_lengths has shape \(3,\); expected .* \(4,\)"):
    model.apply(params, xs, seq_lengths=jnp.array([1, 2, 3]), deterministic=True)
  with pytest.raises(ValueError, match=r"c_0 must be given for an LSTM"):
    jaxrnn.carry_from_torch(model, jnp.zeros((2, B, 4)))
  readout = (jaxrnn.elman(4, output_size=2).init(jax.random.key(0), I),)
  with pytest.raises(ValueError, match=r"readout .* has no torch.nn.RNN equivalent"):
    jaxrnn.to_torch(readout)
