"""What recurrent RL needs from the library: every step's carry (`return_carries`) for
replay and burn-in, one reset convention on every path, and a learned initial carry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxrnn

B, T, I, H = 2, 6, 3, 4
TOL = dict(atol=1e-5, rtol=1e-5)
RESETS = np.array(
  [[False, False, True, False, False, True], [False, True, False, False, True, False]]
)
LENGTHS = np.array([6, 4])


def _xs():
  return jax.random.normal(jax.random.key(1), (B, T, I))


def _where(flag, a, b):
  """Per row of the batch: ``a`` where ``flag`` ``(B,)``, else ``b`` (every leaf)."""
  return jax.tree.map(lambda u, v: jnp.where(flag.reshape((-1,) + (1,) * (u.ndim - 1)), u, v), a, b)


def _close(a, b):
  jax.tree.map(lambda u, v: np.testing.assert_allclose(np.asarray(u), np.asarray(v), **TOL), a, b)


def _loop(step, params, init, xs, resets, lengths):
  """A Python loop of ``step``: restart to ``init`` where a reset is, freeze past the length.

  Returns ``(carry, ys (B, T, O), carries (B, T, F))``, what ``apply`` must return."""
  carry, ys, carries, step = init, [], [], jax.jit(step)
  for t in range(xs.shape[1]):
    valid = jnp.asarray(t < lengths)
    carry = _where(jnp.asarray(resets[:, t]) & valid, init, carry)
    new, y = step(params, carry, xs[:, t])
    carry = _where(valid, new, carry)
    ys.append(_where(valid, y, jnp.zeros_like(y)))
    carries.append(carry)
  stack = lambda *a: jnp.stack(a, axis=1)  # noqa: E731
  return carry, jnp.stack(ys, axis=1), jax.tree.map(stack, *carries)


def _reverse_loop(step, params, init, xs, resets, lengths):
  """The backward direction, row by row: the valid part reversed, a segment restarting
  where the next step (in time) starts one; past the length, the initial carry."""
  rows = []
  for b in range(xs.shape[0]):
    n, row_init = int(lengths[b]), jax.tree.map(lambda a, b=b: a[b : b + 1], init)
    back = np.zeros((1, n), bool)
    back[0, 1:] = resets[b, n - 1 : 0 : -1]  # reversed index k reads t = n-1-k; restarts
    carry, ys, carries = _loop(
      step, params, row_init, xs[b : b + 1, :n][:, ::-1], back, np.array([n])
    )

    def pad(a, c, n=n):  # back in time order, then the initial carry (or 0) past the length
      return jnp.concatenate([a[:, ::-1], jnp.repeat(c[:, None], T - n, 1)], 1)

    rows.append((carry, pad(ys, jnp.zeros_like(ys[:, 0])), jax.tree.map(pad, carries, row_init)))
  return jax.tree.map(lambda *a: jnp.concatenate(a), *rows)


# return_carries runs every cell's step loop, whatever kernel its apply runs otherwise (gru's
# fused VJP, min_gru's linear recurrence); the registry's tests hold each kernel to that loop.
# lru, mamba and mlstm (chunkwise) pass this test too; they are left out of the suite for its
# time budget (about 5 s each).
SINGLE = {"gru": lambda: jaxrnn.gru(H), "min_gru": lambda: jaxrnn.min_gru(H)}


@pytest.mark.parametrize("kind", SINGLE)
def test_single_layer_carries_equal_a_loop_of_step(kind):
  cell = SINGLE[kind]()
  model = jaxrnn.recurrent(cell)
  params, xs = model.init(jax.random.key(0), I), _xs()
  carry, ys, carries = model.apply(
    params, xs, resets=RESETS, seq_lengths=LENGTHS, return_carries=True
  )
  init = model.initial_carry(params, (B,))
  _close((carry, ys, carries), _loop(cell.step, params, init, xs, RESETS, LENGTHS))


def test_stack_carries_equal_a_loop_of_the_stack_step_and_resume_exactly():
  layers = [jaxrnn.recurrent(jaxrnn.gru(H), time_major=True)]
  model = jaxrnn.stack(layers + [jaxrnn.recurrent(jaxrnn.lstm(3), time_major=True)])
  params, xs = model.init(jax.random.key(0), I), jnp.swapaxes(_xs(), 0, 1)
  kw = dict(resets=RESETS.T, seq_lengths=LENGTHS, deterministic=True)
  carry, ys, carries = model.apply(params, xs, return_carries=True, **kw)
  assert jax.tree.structure(carries) == jax.tree.structure(carry)  # a tuple of per-layer carries
  assert carries[1].c.shape == (T, B, 3)  # time-major, as ys
  init = model.initial_carry(params, (B,))
  to_batch = lambda a: jnp.swapaxes(a, 0, 1)  # noqa: E731
  ref_carry, ref_ys, ref_carries = _loop(model.step, params, init, to_batch(xs), RESETS, LENGTHS)
  _close((carry, ys, carries), (ref_carry, *jax.tree.map(to_batch, (ref_ys, ref_carries))))
  t = 2  # a replayed sequence: burn in to t from the stored carry, train on t+1 onwards
  stored, tail = jax.tree.map(lambda a: a[t], carries), np.maximum(LENGTHS - t - 1, 0)
  c, y = model.apply(params, xs[t + 1 :], stored, resets=RESETS.T[t + 1 :], seq_lengths=tail)
  _close((c, y), (carry, ys[t + 1 :]))


def test_bidirectional_carries_equal_each_directions_own_loop():
  model = jaxrnn.bidirectional(
    jaxrnn.recurrent(jaxrnn.gru(H)), jaxrnn.recurrent(jaxrnn.lstm(3), reverse=True)
  )
  params, xs = model.init(jax.random.key(0), I), _xs()
  carry, ys, carries = model.apply(
    params, xs, resets=RESETS, seq_lengths=LENGTHS, return_carries=True
  )
  init = model.initial_carry(params, (B,))
  f = _loop(jaxrnn.gru(H).step, params.forward, init.forward, xs, RESETS, LENGTHS)
  b = _reverse_loop(jaxrnn.lstm(3).step, params.backward, init.backward, xs, RESETS, LENGTHS)
  _close(carries, jaxrnn.BidirectionalCarry(f[2], b[2]))
  _close((carry, ys), (jaxrnn.BidirectionalCarry(f[0], b[0]), jnp.concatenate([f[1], b[1]], -1)))


def test_a_users_apply_without_an_option_is_an_error_naming_it():
  cell = jaxrnn.gru(H)

  def apply(
    params, xs, carry=None, *, seq_lengths=None, resets=None, key=None, deterministic=False
  ):
    return jaxrnn.scan(cell, params, xs, carry, seq_lengths=seq_lengths, resets=resets)

  mine = jaxrnn.SequenceModel(cell.init, apply, cell.initial_carry, step=cell.step)
  model, learned = jaxrnn.stack([mine]), jaxrnn.learned_initial_carry(mine)
  xs = _xs()
  with pytest.raises(ValueError, match="return_carries= was given, but the model's apply"):
    model.apply(model.init(jax.random.key(0), I), xs, return_carries=True)
  with pytest.raises(ValueError, match="reset_carry= was given, but the model's apply"):
    learned.apply(learned.init(jax.random.key(0), I), xs, resets=RESETS)
  with pytest.raises(ValueError, match="expected a jaxrnn.SequenceModel"):
    jaxrnn.learned_initial_carry(cell)  # a cell: wrap jaxrnn.recurrent(cell)


def _numpy_elman(params, init, xs, resets):
  """The two-layer tanh RNN, ``h' = tanh(x W_ih + h W_hh + b)``, in NumPy: every reset
  re-initialises both layers' ``h`` to ``init`` before x_t is read."""
  p = [jax.tree.map(np.asarray, layer) for layer in params]
  h0 = [np.asarray(c.h, np.float64) for c in init]
  h = [np.broadcast_to(c, (xs.shape[0], c.shape[-1])).copy() for c in h0]
  ys = np.zeros(xs.shape[:2] + (h[-1].shape[-1],))
  for t in range(xs.shape[1]):
    x = np.asarray(xs[:, t], np.float64)
    for i, layer in enumerate(p):
      h[i][resets[:, t]] = h0[i]
      h[i] = np.tanh(x @ layer.w_ih + h[i] @ layer.w_hh + layer.b)
      x = h[i]
    ys[:, t] = x
  return ys


@pytest.mark.parametrize("learned", [False, True])
def test_one_reset_convention_for_stream_apply_and_export(learned, tmp_path):
  """A reset at t restarts the carry before x_t is read (purejaxrl, haiku's ResetCore)."""
  model = jaxrnn.rnn_layers("elman", H, num_layers=2)
  params = model.init(jax.random.key(0), I)
  init = model.initial_carry(params, ())
  if learned:
    model = jaxrnn.learned_initial_carry(model)
    init = jax.tree.map(lambda a: jax.random.normal(jax.random.key(2), a.shape), init)
    params = jaxrnn.LearnedCarryParams(params, init)
  xs = np.asarray(_xs())
  ref = _numpy_elman(params.model if learned else params, init, xs, RESETS)
  _, ys = model.apply(params, xs, resets=RESETS)
  s = jaxrnn.stream(model)
  step, state, streamed = jax.jit(s.step), s.init_state(params, (B,)), []
  jaxrnn.export.save(tmp_path / "art", model, params)
  art = jaxrnn.export.load(tmp_path / "art")
  a_state, exported = art.init_state(B), []
  for t in range(T):
    state, y = step(params, state, xs[:, t], RESETS[:, t])
    a_state, a_y = art.step(a_state, xs[:, t], RESETS[:, t])
    streamed.append(y)
    exported.append(a_y)
  _, art_ys = art.apply(xs, resets=RESETS)
  for got in (ys, jnp.stack(streamed, 1), jnp.stack(exported, 1), art_ys):
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-5)


def test_learned_carry_check_grads_float64():
  with jax.enable_x64(True):
    model = jaxrnn.learned_initial_carry(jaxrnn.recurrent(jaxrnn.gru(2)))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), model.init(jax.random.key(0), 2))
    params = params._replace(carry=jax.tree.map(lambda a: a + 0.3, params.carry))
    xs = jax.random.normal(jax.random.key(1), (2, 3, 2), jnp.float64)
    resets = jnp.array([[False, True, False], [False, False, True]])

    @jax.jit  # compiled once: check_grads evaluates it many times
    def loss(params, xs):
      c, ys = model.apply(params, xs, resets=resets, seq_lengths=jnp.array([3, 2]))
      return jnp.sum(jnp.sin(ys)) + jnp.sum(c.h**2)

    check_grads(loss, (params, xs), order=1, modes=("rev",), eps=1e-4)


def test_a_reset_sends_gradient_into_the_learned_carry():
  """Started from another carry, the learned one gets gradient from the resets alone (its
  value, against finite differences: `test_learned_carry_check_grads_float64`)."""
  model = jaxrnn.learned_initial_carry(jaxrnn.recurrent(jaxrnn.gru(H)))
  params, xs = model.init(jax.random.key(0), I), _xs()
  start = jax.tree.map(lambda a: jnp.ones((B,) + a.shape), params.carry)  # not the learned one

  @jax.jit
  @jax.grad
  def grad_of(params, resets):  # through the gru kernel's hand-written VJP
    return jnp.sum(model.apply(params, xs, start, resets=resets)[1] ** 2)

  assert not np.any(grad_of(params, np.zeros((B, T), bool)).carry.h)  # never reset: none
  assert np.all(np.abs(np.asarray(grad_of(params, RESETS).carry.h)) > 0)


def test_learned_carry_checkpoint_round_trip(tmp_path):
  model = jaxrnn.learned_initial_carry(jaxrnn.rnn_layers("gru", H, num_layers=2))
  params = model.init(jax.random.key(0), I)
  params = params._replace(carry=jax.tree.map(lambda a: a + 0.25, params.carry))
  jaxrnn.checkpoint.save(tmp_path, 0, params, model=model)
  target = model.init(jax.random.key(1), I)
  restored, info = jaxrnn.checkpoint.restore(tmp_path, target, model=model)
  _close(restored, params)
  assert info["model"]["name"] == "learned_initial_carry"
  with pytest.raises(ValueError, match="learned_initial_carry"):
    jaxrnn.checkpoint.restore(
      tmp_path, target.model, model=jaxrnn.rnn_layers("gru", H, num_layers=2)
    )
