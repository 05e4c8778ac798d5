"""rg_lru against recurrentgemma's JAX ``RGLRU`` layer and a float64 NumPy loop of Griffin's
equations (De et al. 2024, section 2.4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxrnn
from jaxrnn.cells.base import HiddenCarry
from jaxrnn.cells.rg_lru import (
  RGLRUCarry,
  RGLRUParams,
  from_recurrentgemma,
  gates,
  lambda_init,
  sqrt_bound_derivative,
)

rg_common = pytest.importorskip("recurrentgemma.common")
rg_layers = pytest.importorskip("recurrentgemma.jax.layers")

B, T, H, K = 3, 10, 8, 2
# segment_pos per row: one segment; resets at 0, 4 and 7; a cache continued at 3, a reset at 6.
SEGMENT_POS = np.array(
  [list(range(10)), [0, 1, 2, 3, 0, 1, 2, 0, 1, 2], [3, 4, 5, 6, 7, 8, 0, 1, 2, 3]]
)


def segments(row):
  """``[(start, end), ...]`` of one row's segments (a new one where segment_pos is 0)."""
  starts = [0] + [t for t in range(1, T) if SEGMENT_POS[row, t] == 0]
  return list(zip(starts, starts[1:] + [T], strict=True))


def rg_setup(scan_type):
  """recurrentgemma's layer, its params, inputs, a cache and output weights, float32."""
  layer = rg_layers.RGLRU(width=H, num_heads=K, scan_type=getattr(rg_common.ScanType, scan_type))
  k_p, k_x, k_h, k_w = jax.random.split(jax.random.key(0), 4)
  xs = jax.random.normal(k_x, (B, T, H))
  with jax.numpy_rank_promotion("allow"):  # its BlockDiagonalLinear broadcasts b's rank
    variables = layer.init(k_p, xs, jnp.asarray(SEGMENT_POS))
  variables = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(k_w, a.shape), variables)
  return layer, variables, xs, jax.random.normal(k_h, (B, H)), jax.random.normal(k_w, (B, T, H))


def rg_apply(layer, variables, xs, segment_pos, h0):
  with jax.numpy_rank_promotion("allow"):
    return layer.apply(variables, xs, jnp.asarray(segment_pos), cache=h0)


def converted_grads(g_rg):
  """recurrentgemma's param gradients in jaxrnn's layout: the converter is linear."""
  return from_recurrentgemma(g_rg)


def assert_close(got, want, rtol, atol=0.0):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=atol)


def test_equals_recurrentgemma_with_resets_values_and_gradients():
  layer, variables, xs, h0, w = rg_setup("LINEAR_NATIVE")
  cell = jaxrnn.rg_lru(H, num_heads=K)
  resets = jnp.asarray(SEGMENT_POS == 0)

  def loss_rg(v, xs, h0):
    ys, last = rg_apply(layer, v, xs, SEGMENT_POS, h0)
    return jnp.sum(ys * w) + jnp.sum(jnp.sin(last)), (ys, last)

  def loss_jx(p, xs, h0):
    carry = RGLRUCarry(h0, jnp.zeros((B, 1)))  # continuing: the segment starts are resets
    final, ys = jaxrnn.scan(cell, p, xs, carry, resets=resets)
    return jnp.sum(ys * w) + jnp.sum(jnp.sin(final.h)), (ys, final)

  grad = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))  # noqa: E731
  (_, (ys_rg, last_rg)), (gv, gx_rg, gh_rg) = grad(loss_rg)(variables, xs, h0)
  params = from_recurrentgemma(variables)
  (_, (ys, final)), (gp, gx, gh) = grad(loss_jx)(params, xs, h0)
  assert_close(ys, ys_rg, 1e-5, 1e-6)
  assert_close(final.h, last_rg, 1e-5, 1e-6)
  np.testing.assert_array_equal(final.start, np.zeros((B, 1)))
  assert_close((gp, gx, gh), (converted_grads(gv), gx_rg, gh_rg), 1e-4, 1e-5)


def test_equals_recurrentgemmas_associative_scan():
  """Its other native scan (``ASSOCIATIVE_NATIVE``), values (the gradient as above)."""
  layer, variables, xs, h0, _ = rg_setup("ASSOCIATIVE_NATIVE")
  ys_rg, last_rg = jax.jit(rg_apply, static_argnums=0)(layer, variables, xs, SEGMENT_POS, h0)
  carry = RGLRUCarry(h0, jnp.zeros((B, 1)))
  final, ys = jaxrnn.scan(
    jaxrnn.rg_lru(H, num_heads=K),
    from_recurrentgemma(variables),
    xs,
    carry,
    resets=jnp.asarray(SEGMENT_POS == 0),
  )
  assert_close((ys, final.h), (ys_rg, last_rg), 1e-5, 1e-6)


def test_each_segment_equals_recurrentgemma_on_that_segment_alone():
  """The whole batch with resets against the layer run on every segment by itself (its
  ``segment_pos`` from 0; the first segment of row 2 continues the cache ``h0``), values
  and the gradients of the sum of the segments' losses. The segments run as one batch,
  each padded at its end (causal: padding changes nothing before it, its weight is 0)."""
  layer, variables, xs, h0, w = rg_setup("LINEAR_NATIVE")
  cell = jaxrnn.rg_lru(H, num_heads=K)
  parts = [(b, s, e) for b in range(B) for s, e in segments(b)]
  rows = np.array([b for b, _, _ in parts])
  times = np.array([[min(s + t, e - 1) for t in range(T)] for _, s, e in parts])
  inside = np.array([[s + t < e for t in range(T)] for _, s, e in parts])
  pos = np.array([SEGMENT_POS[b, s] + np.arange(T) for b, s, _ in parts])  # 0 or the cache's

  def loss_segments(v, xs, h0):
    y, _ = rg_apply(layer, v, xs[rows[:, None], times], pos, h0[rows])
    y = jnp.where(inside[..., None], y, 0.0)
    ys = jnp.zeros((B, T, H)).at[rows[:, None], times].add(y)  # each (b, t) in one segment
    return jnp.sum(ys * w), ys

  def loss_jx(p, xs, h0):
    carry = RGLRUCarry(h0, jnp.asarray(SEGMENT_POS[:, :1] == 0, jnp.float32))
    _, ys = jaxrnn.scan(cell, p, xs, carry, resets=jnp.asarray(SEGMENT_POS == 0))
    return jnp.sum(ys * w), ys

  grad = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))  # noqa: E731
  (_, ys_rg), (gv, gx_rg, gh_rg) = grad(loss_segments)(variables, xs, h0)
  (_, ys), (gp, gx, gh) = grad(loss_jx)(from_recurrentgemma(variables), xs, h0)
  assert len(parts) == 6 and inside.sum() == B * T
  assert_close(ys, ys_rg, 1e-5, 1e-6)
  assert_close((gp, gx, gh), (converted_grads(gv), gx_rg, gh_rg), 1e-4, 1e-5)
  assert float(jnp.abs(gh[:2]).max()) == 0.0  # rows 0 and 1 start a segment: h0 is ignored


# ------------------------------------------------------------------ the equations, float64


def sigmoid(v):
  return 1.0 / (1.0 + np.exp(-v))


def softplus(v):
  return np.log1p(np.exp(-np.abs(v))) + np.maximum(v, 0)


def np_gates(p, x, c=8.0):
  """``(a, sqrt(1 - a^2), i u)`` of the paper's equations, float64, one input ``(I,)``."""
  p = {k: None if v is None else np.asarray(v, np.float64) for k, v in p._asdict().items()}
  u = x if p["w_in"] is None else x @ p["w_in"] + p["b_in"]
  heads, D = p["w_a"].shape[0], p["w_a"].shape[-1]

  def block(w, b):
    return np.concatenate([u[k * D : (k + 1) * D] @ w[k] for k in range(heads)]) + b

  r, i = sigmoid(block(p["w_a"], p["b_a"])), sigmoid(block(p["w_x"], p["b_x"]))
  a = np.exp(-c * r * softplus(-p["lam"]))
  return a, np.sqrt(1 - a**2), i * u


def np_scan(params, xs, h0, s0, lengths, resets, reverse, form):
  """`jaxrnn.scan`'s semantics as a NumPy loop: each row's valid part, resets restarting
  from the initial carry ``(0, start=1)``; ``form`` the segment start."""
  ys = np.zeros(xs.shape[:2] + (h0.shape[-1],))
  hs, ss = [], []
  for b in range(xs.shape[0]):
    h, s, n = h0[b], s0[b], lengths[b]
    for t in reversed(range(n)) if reverse else range(n):
      if (t + 1 < n and resets[b, t + 1]) if reverse else resets[b, t]:
        h, s = np.zeros_like(h), np.ones_like(s)
      a, m, g = np_gates(params, xs[b, t])
      if form == "recurrentgemma":  # a segment start: a = 0, multiplier 1
        a, m = a * (1 - s), s + (1 - s) * m
      h, s = a * h + m * g, np.zeros_like(s)
      ys[b, t] = h
    hs.append(h)
    ss.append(s)
  return np.stack(hs), np.stack(ss), ys


FORMS = ["recurrentgemma", "restart"]


def case64(form, input_size=3, hidden=4, heads=2):
  """A float64 cell (input projected), its params, inputs, a random carry, lengths, resets."""
  cell = jaxrnn.rg_lru(hidden, num_heads=heads, segment_start=form, dtype=jnp.float64)
  k_p, k_x, k_h, k_s = jax.random.split(jax.random.key(1), 4)
  params = cell.init(k_p, input_size)
  params = jax.tree.map(lambda a: a + 0.2 * jax.random.normal(k_p, a.shape, a.dtype), params)
  n, t = 4, 7
  xs = jax.random.normal(k_x, (n, t, input_size), jnp.float64)
  h0 = jax.random.normal(k_h, (n, hidden), jnp.float64)
  s0 = jnp.asarray([[1.0], [0.0], [0.0], [0.3]])
  carry = RGLRUCarry(h0, s0) if form == "recurrentgemma" else HiddenCarry(h0)
  lengths = np.array([t, 0, t - 2, 4])
  resets = np.zeros((n, t), bool)
  resets[0, 3] = resets[2, [0, 2]] = resets[3, 1] = True
  return cell, params, xs, carry, lengths, resets


@pytest.mark.parametrize("form", FORMS)
def test_equals_the_papers_equations_in_float64(form):
  """Lengths (one 0), resets, a random carry, forward and reverse; the default path and
  ``impl="step"`` against the NumPy loop."""
  with jax.enable_x64(True):
    cell, params, xs, carry, lengths, resets = case64(form)
    kw = dict(seq_lengths=jnp.asarray(lengths), resets=jnp.asarray(resets))

    @jax.jit
    def runs(params, xs, carry):
      return {
        (impl, r): jaxrnn.scan(cell, params, xs, carry, impl=impl, reverse=r, unroll=1, **kw)
        for impl in ("auto", "step")
        for r in (False, True)
      }

    s0 = np.asarray(carry.start) if form == "recurrentgemma" else np.zeros((4, 1))
    args = (params, np.asarray(xs), np.asarray(carry.h), s0, lengths, resets)
    for (_, reverse), (final, got) in runs(params, xs, carry).items():
      h, s, ys = np_scan(*args, reverse, form)
      np.testing.assert_allclose(np.asarray(got), ys, rtol=1e-9, atol=1e-12)
      np.testing.assert_allclose(np.asarray(final.h), h, rtol=1e-9, atol=1e-12)
      if form == "recurrentgemma":
        np.testing.assert_array_equal(np.asarray(final.start), s)


def test_the_forms_differ_at_a_segment_start():
  """From the initial carry (a reset's too) recurrentgemma's step is ``i u``, the restart
  form's ``sqrt(1 - a^2) i u``."""
  cells = {f: jaxrnn.rg_lru(4, num_heads=2, segment_start=f) for f in FORMS}
  params = cells["restart"].init(jax.random.key(0), 4)
  x = jax.random.normal(jax.random.key(1), (2, 4))
  _, m, g = gates(params, x, 8.0)
  for form, want in (("recurrentgemma", g), ("restart", m * g)):
    cell = cells[form]
    carry, y = cell.step(params, cell.initial_carry(params, (2,)), x)
    np.testing.assert_allclose(y, want, rtol=1e-6)
  assert isinstance(carry, HiddenCarry) and float(jnp.min(1 - m)) > 1e-3


@pytest.mark.parametrize("form", FORMS)
def test_check_grads_float64(form):
  with jax.enable_x64(True):
    cell, params, xs, carry, lengths, resets = case64(form)

    @jax.jit
    def loss(params, xs, carry):  # forward and reverse, with lengths and resets
      total = 0.0
      for reverse, scale in ((False, 1.0), (True, 0.5)):
        kw = dict(seq_lengths=jnp.asarray(lengths), resets=jnp.asarray(resets), reverse=reverse)
        final, ys = jaxrnn.scan(cell, params, xs, carry, unroll=1, **kw)
        leaves = jax.tree.leaves(final)
        total = total + scale * (jnp.sum(jnp.sin(ys)) + sum(jnp.sum(v**2) for v in leaves))
      return total

    check_grads(loss, (params, xs, carry), order=1, modes=("rev",), eps=1e-5)


# ------------------------------------------------------------------ init, projection, converter


def test_init_is_recurrentgemmas():
  key = jax.random.key(3)
  params = jaxrnn.rg_lru(256, num_heads=4).init(key, 256)
  k_a, k_x, k_lam, _ = jax.random.split(key, 4)
  assert params.w_in is None and params.b_in is None  # sizes match: no projection
  want_lam = rg_layers.rnn_real_param_init(min_rad=0.9, max_rad=0.999)(k_lam, (256,))
  np.testing.assert_array_equal(params.lam, -want_lam)  # a_param is -Lambda
  rad = jax.nn.sigmoid(params.lam)
  assert 0.9 - 1e-6 <= float(rad.min()) and float(rad.max()) <= 0.999 + 1e-6
  gate = rg_layers.BlockDiagonalLinear(width_input=256, num_blocks=4)
  for k, w in ((k_a, params.w_a), (k_x, params.w_x)):
    np.testing.assert_array_equal(w, gate.kernel_init(k, (4, 64, 64), jnp.float32))
  assert not params.b_a.any() and not params.b_x.any()
  np.testing.assert_array_equal(lambda_init(k_lam, (256,), 0.9, 0.999, jnp.float32), params.lam)


def test_a_projection_only_when_the_sizes_differ():
  cell = jaxrnn.rg_lru(4, num_heads=2)
  params = cell.init(jax.random.key(0), 3)
  assert params.w_in.shape == (3, 4) and params.b_in.shape == (4,)
  assert (params.input_size, params.hidden_size, params.num_heads) == (3, 4, 2)
  params = params._replace(b_in=jnp.arange(4.0) / 4)
  x = jax.random.normal(jax.random.key(1), (2, 3))
  carry = cell.initial_carry(params, (2,))
  _, y = cell.step(params, carry, x)
  plain = params._replace(w_in=None, b_in=None)
  _, want = cell.step(plain, carry, x @ params.w_in + params.b_in[None])
  np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-7)


def test_the_converter_reads_recurrentgemmas_layout_and_rejects_others():
  variables = rg_setup("LINEAR_NATIVE")[1]
  p = from_recurrentgemma(variables)
  assert_close(RGLRUParams.from_recurrentgemma(variables["params"]), p, 0.0)  # either nesting
  v = variables["params"]
  np.testing.assert_array_equal(p.lam, -v["a_param"])
  np.testing.assert_array_equal(p.b_a, v["a_gate"]["b"].reshape(H))
  np.testing.assert_array_equal(p.w_x, v["input_gate"]["w"])
  with pytest.raises(ValueError, match="a_imag_param"):
    from_recurrentgemma(dict(v, a_imag_param=v["a_param"]))
  with pytest.raises(ValueError, match="missing"):
    from_recurrentgemma({"a_param": v["a_param"]})
  with pytest.raises(ValueError, match="a_gate.w has shape"):
    from_recurrentgemma(dict(v, a_gate={"w": jnp.ones((2, 4)), "b": jnp.ones((2, 4))}))


def test_sqrt_bound_derivative_has_recurrentgemmas_gradient():
  x = jnp.asarray([1e-9, 1e-7, 2.5e-7, 1e-3, 0.5])
  ours = jax.vmap(jax.grad(sqrt_bound_derivative))(x)
  theirs = jax.vmap(jax.grad(lambda v: rg_layers.sqrt_bound_derivative(v, 1000)))(x)
  np.testing.assert_array_equal(ours, theirs)
  np.testing.assert_array_equal(sqrt_bound_derivative(x), jnp.sqrt(x))
  assert float(ours[0]) == pytest.approx(1000.0)  # clipped: 1 / (2 sqrt(2.5e-7))


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(hidden_size=6, num_heads=4), "not divisible"),
    (dict(hidden_size=4, num_heads=0), "num_heads=0"),
    (dict(hidden_size=4, c=0.0), "c=0.0"),
    (dict(hidden_size=4, min_rad=0.99, max_rad=0.9), "min_rad=0.99"),
    (dict(hidden_size=4, max_rad=1.0), "max_rad=1.0"),
    (dict(hidden_size=4, segment_start="zeros"), "segment_start='zeros'"),
  ],
)
def test_bad_config_raises(kwargs, match):
  with pytest.raises(ValueError, match=match):
    jaxrnn.rg_lru(**kwargs)
