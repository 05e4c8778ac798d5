"""Cells against PyTorch's cells, the seed's worked example, and numerical gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import to_np
from jax.test_util import check_grads

import jaxrnn

TOL = dict(atol=1e-5, rtol=1e-5)


def test_seed_worked_example():
  # The seed's figure: input size 1, state size 2, inputs 1 then 2.
  u = jnp.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]])  # [[recurrent], [input]]
  params = jaxrnn.ElmanParams.from_concatenated(
    u, b=jnp.array([0.1, -0.1]), v=jnp.array([[1.0], [2.0]]), c=jnp.array([0.1])
  )
  np.testing.assert_allclose(params.w_hh, [[0.1, 0.2], [0.3, 0.4]])
  np.testing.assert_allclose(params.w_ih, [[0.5, 0.6]])
  np.testing.assert_allclose(params.concatenated(), u)
  cell = jaxrnn.elman(2, output_size=1)
  carry = cell.initial_carry(params)
  carry, o1 = cell.step(params, carry, jnp.array([1.0]))
  np.testing.assert_allclose(carry.h, [0.537, 0.462], atol=5e-4)
  np.testing.assert_allclose(o1, [1.56], atol=5e-3)
  carry, o2 = cell.step(params, carry, jnp.array([2.0]))
  np.testing.assert_allclose(carry.h, [0.860, 0.884], atol=5e-4)
  np.testing.assert_allclose(o2, [2.73], atol=5e-3)
  # Same numbers from separate matrices and from scan.
  sep = jaxrnn.ElmanParams(
    w_ih=jnp.array([[0.5, 0.6]]),
    w_hh=jnp.array([[0.1, 0.2], [0.3, 0.4]]),
    b=jnp.array([0.1, -0.1]),
    w_out=jnp.array([[1.0], [2.0]]),
    b_out=jnp.array([0.1]),
  )
  final, ys = jaxrnn.scan(cell, sep, jnp.array([[1.0], [2.0]]))
  np.testing.assert_allclose(ys[:, 0], [1.561, 2.727], atol=1e-3)
  np.testing.assert_allclose(final.h, carry.h, atol=1e-7)


def _torch_cell(kind, input_size, hidden, bias, nonlinearity="tanh"):
  torch.manual_seed(0)
  if kind == "elman":
    return torch.nn.RNNCell(input_size, hidden, bias=bias, nonlinearity=nonlinearity)
  if kind == "lstm":
    return torch.nn.LSTMCell(input_size, hidden, bias=bias)
  return torch.nn.GRUCell(input_size, hidden, bias=bias)


def _params_from_cell(kind, m):
  """Builds jaxrnn params from a torch cell by hand, independent of interop.from_torch."""
  w_ih = jnp.asarray(to_np(m.weight_ih).T)
  w_hh = jnp.asarray(to_np(m.weight_hh).T)
  b_ih = to_np(m.bias_ih) if m.bias else None
  b_hh = to_np(m.bias_hh) if m.bias else None
  if kind == "elman":
    return jaxrnn.ElmanParams(w_ih, w_hh, None if b_ih is None else jnp.asarray(b_ih + b_hh))
  if kind == "lstm":
    return jaxrnn.LSTMParams(w_ih, w_hh, None if b_ih is None else jnp.asarray(b_ih + b_hh))
  if b_ih is None:
    return jaxrnn.GRUParams(w_ih, w_hh)
  h = w_hh.shape[0]
  b = np.concatenate([b_ih[: 2 * h] + b_hh[: 2 * h], b_ih[2 * h :]])
  return jaxrnn.GRUParams(w_ih, w_hh, jnp.asarray(b), jnp.asarray(b_hh[2 * h :]))


CASES = [
  ("elman", dict(activation="tanh"), dict(nonlinearity="tanh")),
  ("elman", dict(activation="relu"), dict(nonlinearity="relu")),
  ("lstm", {}, {}),
  ("gru", {}, {}),
]


@pytest.mark.parametrize("kind,jkw,tkw", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_step_matches_torch_cell(kind, jkw, tkw, bias, rng):
  I, H, B = 5, 7, 4
  m = _torch_cell(kind, I, H, bias, **tkw)
  cell = {"elman": jaxrnn.elman, "lstm": jaxrnn.lstm, "gru": jaxrnn.gru}[kind](
    H, use_bias=bias, **jkw
  )
  params = _params_from_cell(kind, m)
  x = rng.standard_normal((B, I)).astype(np.float32)
  h0 = rng.standard_normal((B, H)).astype(np.float32)
  c0 = rng.standard_normal((B, H)).astype(np.float32)
  xt = torch.tensor(x, requires_grad=True)
  if kind == "lstm":
    carry = jaxrnn.LSTMCarry(jnp.asarray(h0), jnp.asarray(c0))
    h_t, c_t = m(xt, (torch.tensor(h0), torch.tensor(c0)))
    out_t = h_t
  else:
    carry = jaxrnn.HiddenCarry(jnp.asarray(h0))
    out_t = m(xt, torch.tensor(h0))
  new, y = cell.step(params, carry, jnp.asarray(x))
  np.testing.assert_allclose(y, to_np(out_t), **TOL)
  np.testing.assert_allclose(new.h, to_np(out_t), **TOL)
  if kind == "lstm":
    np.testing.assert_allclose(new.c, to_np(c_t), **TOL)
  # Input gradient of a weighted sum of the outputs.
  w = rng.standard_normal((B, H)).astype(np.float32)
  (out_t * torch.tensor(w)).sum().backward()
  gx = jax.grad(lambda x: jnp.sum(cell.step(params, carry, x)[1] * w))(jnp.asarray(x))
  np.testing.assert_allclose(gx, to_np(xt.grad), **TOL)


@pytest.mark.parametrize(
  "cell",
  [
    jaxrnn.elman(3),
    jaxrnn.elman(3, activation="relu", output_size=2),
    jaxrnn.lstm(3),
    jaxrnn.lstm(3, proj_size=2),
    jaxrnn.gru(3),
  ],
  ids=["elman", "elman-relu-readout", "lstm", "lstm-proj", "gru"],
)
def test_check_grads_float64(cell):
  with jax.enable_x64(True):
    params = cell.init(jax.random.key(0), input_size=2)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    carry = jax.tree.map(
      lambda a: jax.random.normal(jax.random.key(1), a.shape, jnp.float64),
      cell.initial_carry(params, (3,)),
    )
    x = jax.random.normal(jax.random.key(2), (3, 2), jnp.float64)

    @jax.jit  # compiled once: check_grads evaluates it many times
    def f(params, carry, x):
      new, y = cell.step(params, carry, x)
      return jnp.sum(y**2) + sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(new))

    check_grads(f, (params, carry, x), order=2, modes=("fwd", "rev"), eps=1e-4)


def test_lstm_forget_bias_lives_in_init():
  H = 6
  p0 = jaxrnn.lstm(H, forget_bias=0.0).init(jax.random.key(0), 3)
  p3 = jaxrnn.lstm(H, forget_bias=3.0).init(jax.random.key(0), 3)
  diff = np.asarray(p3.b - p0.b)
  np.testing.assert_allclose(diff[H : 2 * H], 3.0, atol=1e-6)
  np.testing.assert_allclose(np.delete(diff, np.s_[H : 2 * H]), 0.0)
  # Zero-bias initialisers: the forget slice is exactly the forget bias.
  po = jaxrnn.lstm(H, forget_bias=1.0, recurrent_init="orthogonal").init(jax.random.key(0), 3)
  np.testing.assert_array_equal(po.b, np.r_[np.zeros(H), np.ones(H), np.zeros(2 * H)])


def test_initialisers():
  H = 8
  scale = 1 / np.sqrt(H)
  p = jaxrnn.lstm(H).init(jax.random.key(0), 5)
  assert p.w_ih.dtype == jnp.float32
  assert np.abs(p.w_ih).max() <= scale and np.abs(p.w_hh).max() <= scale
  assert np.abs(p.w_ih).max() > 0.9 * scale  # really spread over the PyTorch range
  po = jaxrnn.gru(H, recurrent_init="orthogonal").init(jax.random.key(0), 5)
  for g in range(3):
    blk = np.asarray(po.w_hh[:, g * H : (g + 1) * H])
    np.testing.assert_allclose(blk.T @ blk, np.eye(H), atol=1e-5)
  pi = jaxrnn.elman(H, activation="relu", recurrent_init="identity").init(jax.random.key(0), 5)
  np.testing.assert_array_equal(pi.w_hh, np.eye(H))
  np.testing.assert_array_equal(pi.b, np.zeros(H))
  assert np.abs(pi.w_ih).std() < 0.01
  # Same key, same params; another key, other params.
  cell = jaxrnn.elman(H)
  a, b = cell.init(jax.random.key(1), 5), cell.init(jax.random.key(1), 5)
  c = cell.init(jax.random.key(2), 5)
  np.testing.assert_array_equal(a.w_hh, b.w_hh)
  assert not np.allclose(a.w_hh, c.w_hh)


def test_step_works_with_any_batch_shape():
  cell = jaxrnn.lstm(4)
  params = cell.init(jax.random.key(0), 3)
  x = jax.random.normal(jax.random.key(1), (2, 5, 3))
  carry = cell.initial_carry(params, (2, 5))
  _, y = cell.step(params, carry, x)
  _, y_flat = cell.step(params, cell.initial_carry(params, (10,)), x.reshape(10, 3))
  np.testing.assert_allclose(y.reshape(10, 4), y_flat, atol=1e-7)
  _, y0 = cell.step(params, cell.initial_carry(params), x[1, 2])
  np.testing.assert_allclose(y0, y[1, 2], atol=1e-7)


def test_cells_are_hashable_and_configured():
  cell = jaxrnn.lstm(4, proj_size=2)
  assert dict(cell.config)["proj_size"] == 2 and cell.name == "lstm"
  hash(cell.config)


@pytest.mark.parametrize(
  "make,match",
  [
    (lambda: jaxrnn.elman(4, activation="sigmoid"), r"activation='sigmoid' is not one of"),
    (lambda: jaxrnn.elman(0), r"hidden_size=0: expected a positive int"),
    (lambda: jaxrnn.lstm(4, proj_size=4), r"proj_size=4 must be smaller than hidden_size=4"),
    (lambda: jaxrnn.gru(4, recurrent_init="xavier"), r"recurrent_init='xavier' is not one of"),
    (lambda: jaxrnn.gru(4).init(jax.random.key(0), 0), r"input_size=0: expected a positive"),
    (
      lambda: jaxrnn.lstm(4, proj_size=2, recurrent_init="identity").init(jax.random.key(0), 3),
      r"identity' needs a square recurrent block",
    ),
  ],
)
def test_bad_configuration_raises(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_step_bad_shapes_raise():
  cell = jaxrnn.lstm(4)
  params = cell.init(jax.random.key(0), 3)
  carry = cell.initial_carry(params, (2,))
  with pytest.raises(ValueError, match=r"x has 5 features .* expect input_size=3"):
    cell.step(params, carry, jnp.ones((2, 5)))
  with pytest.raises(ValueError, match=r"carry batch shape \(3,\) does not match x batch shape"):
    cell.step(params, cell.initial_carry(params, (3,)), jnp.ones((2, 3)))
  with pytest.raises(ValueError, match=r"carry.c has shape"):
    cell.step(params, jaxrnn.LSTMCarry(carry.h, jnp.ones((2, 5))), jnp.ones((2, 3)))
  with pytest.raises(ValueError, match=r"u has shape \(2, 2\); expected \(n \+ x, n\)"):
    jaxrnn.ElmanParams.from_concatenated(jnp.ones((2, 2)))


def test_cast_to_compute_keeps_a_complex_carry_complex():
  """A complex carry is cast to the compute dtype's complex counterpart, its imaginary part
  kept (casting it to a real dtype would silently drop the state's phase)."""
  from jaxrnn.cells.base import cast_to_compute

  params = {"w": jnp.ones((2, 2), jnp.float32)}
  carry = jnp.array([1 + 2j, -3 - 0.5j], jnp.complex64)
  for compute, want in ((jnp.bfloat16, jnp.complex64), (None, jnp.complex64)):
    _, c, x = cast_to_compute("c", params, carry, jnp.ones(2, jnp.float32), compute)
    assert c.dtype == want and x.dtype == (compute or jnp.float32)
    np.testing.assert_array_equal(np.asarray(c), np.asarray(carry))
  with jax.enable_x64(True):
    params64 = {"w": jnp.ones((2, 2), jnp.float64)}
    _, c, _ = cast_to_compute("c", params64, carry, jnp.ones(2, jnp.float64), None)
    assert c.dtype == jnp.complex128
    np.testing.assert_array_equal(np.asarray(c), np.asarray(carry).astype(np.complex128))
