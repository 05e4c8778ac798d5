"""Resets inside a sequence: a packed row equals its segments run alone, values and gradients.

The reference runs each segment on its own with `jaxrnn.scan` (no resets; itself tested
against PyTorch and a loop of ``step``) and adds the segments' losses.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn

I, T = 3, 7
# Row 0: segments [0, 3), [3, 5), [5, 7), and a reset at t = 0 that overrides the carry passed
# in. Row 1: length 6, one reset at 2; the reset at 6 lies past its length and is ignored.
RESETS = np.zeros((2, T), bool)
RESETS[0, [0, 3, 5]] = True
RESETS[1, [2, 6]] = True
LENGTHS = np.array([7, 6])
SEGMENTS = {0: [(0, 3), (3, 5), (5, 7)], 1: [(0, 2), (2, 6)]}
CELLS = {
  "lstm-proj": jaxrnn.lstm(4, proj_size=2),
  "gru": jaxrnn.gru(4),
  "elman-readout": jaxrnn.elman(4, output_size=2),
}


def _packed_loss(cell, impl, reverse, remat=None):
  def loss(params, xs, carry, w):
    c, ys = jaxrnn.scan(
      cell,
      params,
      xs,
      carry,
      seq_lengths=LENGTHS,
      resets=RESETS,
      reverse=reverse,
      impl=impl,
      remat=remat,
    )
    return jnp.sum(ys * w) + sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(c)), ys

  return loss


def _segments_loss(cell, reverse):
  """Each segment alone from zeros, but the first one read gets the carry passed in: forward
  row 1's first (row 0 resets at t = 0), in reverse each row's last; the final carry is
  that of the last segment read."""

  def loss(params, xs, carry, w):
    total, ys = 0.0, jnp.zeros(xs.shape[:2] + (w.shape[-1],))
    for b, segments in SEGMENTS.items():
      first, last = (segments[-1], segments[0]) if reverse else (segments[0], segments[-1])
      for s, e in segments:
        takes_carry = (s, e) == first and (reverse or b == 1)
        c0 = jax.tree.map(lambda a, b=b: a[b : b + 1], carry) if takes_carry else None
        c, y = jaxrnn.scan(cell, params, xs[b : b + 1, s:e], c0, reverse=reverse)
        ys = ys.at[b, s:e].set(y[0])
        total = total + jnp.sum(y[0] * w[b, s:e])
        if (s, e) == last:
          total = total + sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(c))
    return total, ys

  return loss


def _check(cell, impl, reverse, remat=None):
  params = cell.init(jax.random.key(0), I)
  rng = np.random.default_rng(1)
  xs = jnp.asarray(rng.standard_normal((2, T, I)), jnp.float32)
  carry = jax.tree.map(
    lambda a: jnp.asarray(rng.standard_normal(a.shape), jnp.float32),
    cell.initial_carry(params, (2,)),
  )
  w = jnp.asarray(rng.standard_normal((2, T, 2 if cell.name != "gru" else 4)), jnp.float32)
  grad = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))  # noqa: E731
  (v, ys), g = grad(_packed_loss(cell, impl, reverse, remat))(params, xs, carry, w)
  (v_ref, ys_ref), g_ref = grad(_segments_loss(cell, reverse))(params, xs, carry, w)
  np.testing.assert_allclose(ys, ys_ref, atol=1e-6)
  np.testing.assert_allclose(v, v_ref, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  # forward, row 0's reset at t = 0 overrides the carry passed in: no gradient reaches it
  top = [float(jnp.abs(leaf[0]).max()) for leaf in jax.tree.leaves(g[2])]
  assert all(v > 0.0 for v in top) if reverse else all(v == 0.0 for v in top)


# Every kernel, forward and reverse each covered (lean: every case compiles two gradients).
@pytest.mark.parametrize(
  "name,reverse", [("lstm-proj", True), ("gru", False), ("elman-readout", True)]
)
def test_packed_rows_equal_their_segments_on_the_kernels(name, reverse):
  _check(CELLS[name], "auto", reverse)


def test_packed_rows_equal_their_segments_on_the_step_loop_and_with_remat():
  _check(CELLS["lstm-proj"], "step", reverse=False)
  _check(CELLS["gru"], "auto", reverse=True, remat=2)


def test_bidirectional_stack_over_a_packed_row_equals_each_segment_alone():
  model = jaxrnn.rnn_layers("gru", 3, num_layers=2, bidirectional=True)
  params = model.init(jax.random.key(2), I)
  xs = jnp.asarray(np.random.default_rng(3).standard_normal((2, T, I)), jnp.float32)
  _, ys = model.apply(params, xs, seq_lengths=LENGTHS, resets=RESETS)
  for b, segments in SEGMENTS.items():
    for s, e in segments:
      _, y = model.apply(params, xs[b : b + 1, s:e])
      np.testing.assert_allclose(ys[b, s:e], y[0], atol=1e-6)
  np.testing.assert_array_equal(ys[1, 6:], 0.0)


def test_bad_resets_raise():
  cell = jaxrnn.gru(3)
  params = cell.init(jax.random.key(0), I)
  xs = jnp.ones((2, T, I))
  with pytest.raises(ValueError, match=r"resets has dtype int32; expected bool"):
    jaxrnn.scan(cell, params, xs, resets=np.zeros((2, T), np.int32))
  with pytest.raises(ValueError, match=r"resets has shape \(7, 2\); expected \(\*batch, T\)"):
    jaxrnn.scan(cell, params, xs, resets=np.zeros((T, 2), bool))


def test_resets_reach_truncated_bptt_windows():
  """With a zero learning rate, each window's loss is that window of one scan of the stream."""
  import optax

  from jaxrnn.train import TrainState, make_tbptt_step

  cell = jaxrnn.gru(4)
  params = cell.init(jax.random.key(0), 2)
  xs = jax.random.normal(jax.random.key(1), (2, 12, 2))
  resets = np.zeros((2, 12), bool)
  resets[0, [4, 7]] = True  # one reset at a window's first step, one inside a window
  resets[1, 0] = True

  def loss_fn(p, carry, batch):
    carry, ys = jaxrnn.scan(cell, p, batch["x"], carry, resets=batch["resets"])
    return jnp.mean(ys**2), carry

  step = make_tbptt_step(loss_fn, optax.sgd(0.0), window=4, max_grad_norm=None)
  carry0 = jax.tree.map(jnp.ones_like, cell.initial_carry(params, (2,)))
  state = TrainState.create(params, optax.sgd(0.0))
  _, carry, metrics = step(state, carry0, {"x": xs, "resets": jnp.asarray(resets)})
  want_carry, ys = jaxrnn.scan(cell, params, xs, carry0, resets=resets)
  want = jnp.mean(ys.reshape(2, 3, 4, 4) ** 2, axis=(0, 2, 3))
  np.testing.assert_allclose(metrics["loss"], want, rtol=1e-6)
  np.testing.assert_allclose(carry.h, want_carry.h, atol=1e-6)
