"""`jaxrnn.slstm` against xlstm's pure-PyTorch sLSTM cell and a float64 NumPy loop.

The independent reference is the ``xlstm`` package's ``sLSTMCell`` with
``backend="vanilla"``, ``dtype="float32"`` (pinned in the ``dev`` extra). The mapping
from `jaxrnn.SLSTMParams` into its state dict, exactly:

- gate order: both ``[i, f, z, o]``;
- the input: xlstm's cell takes the gate pre-activations ``Wx`` ``(B, S, 4H)`` (its
  layer computes them); we feed it ``x @ w_ih``, the columns in the same
  gate-major, then head, then unit order (its ``input_shape="BSGNH"``);
- ``_recurrent_kernel_`` ``(K, 4D, D)`` is ``w_hh`` ``(K, D, 4, D)`` permuted to
  ``(K, 4, D_out, D_in)`` and reshaped (so its external ``recurrent_kernel`` is
  ``w_hh`` itself);
- ``_bias_`` ``(4H,)`` is ``b`` as it is (one bias per gate: the cell has no second
  bias);
- the state ``(4, B, H)`` is ``[h, c, n, m]``.

xlstm chooses the first step's stabilizer for the whole batch (``m' = i~`` only when
every ``n`` is 0), jaxrnn per unit, so only ``h`` is compared with it; ``c``, ``n``,
``m`` are compared with the NumPy loop, which is the paper's equations (Beck et al.
2024, section 2.2, with the sigmoid forget gate) written here with jaxrnn's per-unit rule.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.test_util import check_grads
from xlstm.blocks.slstm.cell import sLSTMCell, sLSTMCellConfig

import jaxrnn

H, K, I, B, T = 8, 2, 3, 4, 5
D = H // K
TOL = dict(atol=2e-5, rtol=2e-5)


def _np64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _np_step(p, carry, x):
  """One sLSTM step in float64 NumPy, heads looped explicitly."""
  h, c, n, m = carry
  rec = np.zeros(h.shape[:-1] + (4 * H,))
  for k in range(K):
    for g in range(4):
      rec[..., g * H + k * D : g * H + (k + 1) * D] = h[..., k * D : (k + 1) * D] @ p.w_hh[k, :, g]
  raw = x @ p.w_ih + rec + (0.0 if p.b is None else p.b)
  i_raw, f_raw, z_raw, o_raw = np.split(raw, 4, axis=-1)
  log_f = -np.logaddexp(0.0, -f_raw) + m
  fresh = n == 0
  m_new = np.where(fresh, i_raw, np.maximum(i_raw, log_f))
  i = np.exp(i_raw - m_new)
  f = np.where(fresh, 0.0, np.exp(log_f - m_new))
  c = f * c + i * np.tanh(z_raw)
  n = f * n + i
  h = c / n / (1.0 + np.exp(-o_raw))
  return (h, c, n, m_new), h


def _np_row(p, carry, xs, reverse):
  """One row's valid steps ``xs`` ``(L, I)`` from ``carry`` (leaves ``(H,)``)."""
  ys = np.zeros((len(xs), H))
  order = range(len(xs) - 1, -1, -1) if reverse else range(len(xs))
  for t in order:
    carry, ys[t] = _np_step(p, carry, xs[t])
  return carry, ys


def _xlstm(p, carry, xs):
  """xlstm's vanilla cell on ``xs`` ``(B, S, I)`` from ``carry``: its ``h`` ``(B, S, H)``."""
  cfg = sLSTMCellConfig(
    hidden_size=H, num_heads=K, backend="vanilla", dtype="float32", output_shape="BSH"
  )
  cell = sLSTMCell(cfg)
  w_hh = np.asarray(p.w_hh, np.float32)
  cell.load_state_dict(
    {
      "_recurrent_kernel_": torch.tensor(w_hh.transpose(0, 2, 3, 1).reshape(K, 4 * D, D)),
      "_bias_": torch.tensor(np.asarray(p.b, np.float32)),
    }
  )
  assert np.array_equal(cell._recurrent_kernel_int2ext(cell._recurrent_kernel_).detach(), w_hh)
  wx = torch.tensor(np.asarray(xs, np.float32) @ np.asarray(p.w_ih, np.float32))
  state = torch.tensor(np.stack([np.asarray(leaf, np.float32) for leaf in carry]))
  with torch.no_grad():
    ys, _ = cell(wx, state)
  return ys.numpy()


def _carry(rng, batch, fresh_rows=()):
  """A nonzero carry with ``n > 0``; the rows in ``fresh_rows`` are zeros (fresh)."""
  h = rng.uniform(-0.9, 0.9, batch + (H,))
  c = rng.normal(size=batch + (H,))
  n = rng.uniform(0.5, 2.0, batch + (H,))
  m = rng.normal(size=batch + (H,))
  leaves = [h, c, n, m]
  for leaf in leaves:
    leaf[list(fresh_rows)] = 0.0
  return jaxrnn.SLSTMCarry(*(jnp.asarray(a, jnp.float32) for a in leaves))


@pytest.fixture
def setup(rng):
  cell = jaxrnn.slstm(H, num_heads=K, forget_bias=0.5)
  params = cell.init(jax.random.key(0), I)
  xs = jnp.asarray(rng.normal(size=(B, T, I)) * 2.0, jnp.float32)
  return cell, params, xs


def test_h_equals_xlstm_and_carry_equals_numpy_loop(setup, rng):
  cell, params, xs = setup
  p64 = _np64(params)
  run = jax.jit(lambda params, carry, xs: jaxrnn.scan(cell, params, xs, carry))
  zero = cell.initial_carry(params, (B,))
  for carry in (zero, _carry(rng, (B,), fresh_rows=(1,))):
    final, ys = run(params, carry, xs)
    np.testing.assert_allclose(ys, _xlstm(params, carry, xs), **TOL)
    for b in range(B):
      ref, ys_ref = _np_row(p64, tuple(_np64(leaf)[b] for leaf in carry), _np64(xs)[b], False)
      np.testing.assert_allclose(ys[b], ys_ref, **TOL)
      for name, got, want in zip(jaxrnn.SLSTMCarry._fields, final, ref, strict=True):
        np.testing.assert_allclose(got[b], want, **TOL, err_msg=name)
  # The step itself, a few steps by hand, unbatched, from a nonzero carry.
  carry = jax.tree.map(lambda a: a[0], _carry(rng, (1,)))
  ref = tuple(_np64(leaf) for leaf in carry)
  for t in range(3):
    carry, y = cell.step(params, carry, xs[0, t])
    ref, y_ref = _np_step(p64, ref, _np64(xs)[0, t])
    np.testing.assert_allclose(y, y_ref, **TOL)
  for got, want in zip(carry, ref, strict=True):
    np.testing.assert_allclose(got, want, **TOL)
  b = np.asarray(params.b)
  assert np.all(np.abs(b[H : 2 * H] - 0.5) <= 1 / np.sqrt(H))  # forget_bias lives in init


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_with_lengths_equals_numpy_loop_per_row(setup, rng, reverse):
  cell, params, xs = setup
  lengths = np.array([T, 3, 0, 1])
  carry = _carry(rng, (B,), fresh_rows=(3,))
  final, ys = jax.jit(
    lambda params, carry, xs, lengths: jaxrnn.scan(
      cell, params, xs, carry, seq_lengths=lengths, reverse=reverse
    )
  )(params, carry, xs, jnp.asarray(lengths))
  p64, x64 = _np64(params), _np64(xs)
  for b, length in enumerate(lengths):
    ref, ys_ref = _np_row(p64, tuple(_np64(leaf)[b] for leaf in carry), x64[b, :length], reverse)
    np.testing.assert_allclose(ys[b, :length], ys_ref, **TOL)
    np.testing.assert_array_equal(ys[b, length:], 0.0)
    for got, want in zip(final, ref, strict=True):
      np.testing.assert_allclose(got[b], want, **TOL)


# The kernel against its step loop (both directions, lengths, resets, recurrent dropout and
# zoneout on every carry field): tests/test_registry.py.


def test_check_grads_float64():
  with jax.enable_x64(True):
    cell = jaxrnn.slstm(4, num_heads=2, dtype=jnp.float64)
    params = cell.init(jax.random.key(0), 2)
    rng = np.random.default_rng(1)
    # n > 0 except in the fresh row f sets (the rule switches at n = 0: not perturbed there).
    carry = jaxrnn.SLSTMCarry(
      *(jnp.asarray(rng.uniform(lo, 1.5, (2, 4))) for lo in (-0.9, -1.0, 0.3, -1.0))
    )
    xs = jnp.asarray(rng.normal(size=(2, 3, 2)))

    def f(params, carry, xs):
      start = jax.tree.map(lambda a: a.at[1].set(0.0), carry)  # row 1 fresh
      kw = dict(seq_lengths=jnp.array([3, 2]), unroll=1, impl="fused")
      final, ys = jaxrnn.scan(cell, params, xs, start, **kw)
      return jnp.sum(ys**2) + sum(jnp.sum(jnp.sin(leaf)) for leaf in final)

    check_grads(jax.jit(f), (params, carry, xs), order=1, modes=("rev",), eps=1e-5)


def test_rnn_layers_config_and_bad_arguments(rng):
  model = jaxrnn.rnn_layers("slstm", 8, num_layers=2, num_heads=4)
  params = model.init(jax.random.key(0), input_size=I)
  carry, ys = jax.jit(model.apply)(params, jnp.ones((2, 3, I)))
  assert ys.shape == (2, 3, 8) and carry[1].m.shape == (2, 8)
  assert params[0].w_hh.shape == (4, 2, 4, 2)
  cell = jaxrnn.slstm(6, num_heads=3, forget_bias=2.0, use_bias=False, dtype=jnp.bfloat16)
  assert jaxrnn.slstm(**dict(cell.config)) == cell and dict(cell.config)["dtype"] == "bfloat16"
  assert cell.init(jax.random.key(0), 2).b is None
  with pytest.raises(ValueError, match="num_heads=3"):
    jaxrnn.slstm(8, num_heads=3)
  with pytest.raises(ValueError, match="num_heads=0"):
    jaxrnn.slstm(8, num_heads=0)
  with pytest.raises(ValueError, match="forget_bias='1'"):
    jaxrnn.slstm(8, num_heads=2, forget_bias="1")
  cell = jaxrnn.slstm(H, num_heads=K)
  params = cell.init(jax.random.key(0), I)
  carry = cell.initial_carry(params, (2,))._replace(n=jnp.zeros((2, H + 1)))
  with pytest.raises(ValueError, match=r"carry.n has shape \(2, 9\)"):
    cell.step(params, carry, jnp.ones((2, I)))
