"""`jaxrnn.scan` against a Python loop of `step`, one sequence at a time."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxrnn

# Every registered cell runs through scan's semantics (lengths, resets, reverse) in
# tests/test_registry.py; here, the layouts and transformations scan adds, on one cell.
CELLS = {"lstm": jaxrnn.lstm(5, proj_size=3)}
I = 4


def loop_reference(cell, params, xs, lengths, reverse, carry0=None):
  """One row at a time: run `step` over the valid part only, in the given direction."""
  B, T, _ = xs.shape
  ys_all, carries = [], []
  for b in range(B):
    c = cell.initial_carry(params) if carry0 is None else jax.tree.map(lambda a, b=b: a[b], carry0)
    n = int(lengths[b])
    order = range(n - 1, -1, -1) if reverse else range(n)
    ys = [None] * T
    for t in order:
      c, ys[t] = cell.step(params, c, xs[b, t])
    width = cell.step(params, c, xs[b, 0])[1].shape[-1]
    ys = [jnp.zeros(width) if y is None else y for y in ys]
    ys_all.append(jnp.stack(ys))
    carries.append(c)
  return jax.tree.map(lambda *a: jnp.stack(a), *carries), jnp.stack(ys_all)


def _data(cell, B=4, T=7, seed=0):
  params = cell.init(jax.random.key(seed), I)
  xs = jax.random.normal(jax.random.key(seed + 1), (B, T, I))
  return params, xs


def assert_tree_close(a, b, atol=1e-6):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=atol, rtol=1e-6), a, b)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_scan_equals_python_loop(name, reverse, masked):
  cell = CELLS[name]
  params, xs = _data(cell)
  lengths = np.array([7, 3, 0, 5]) if masked else np.full(4, 7)
  carry0 = jax.tree.map(
    lambda a: jax.random.normal(jax.random.key(9), a.shape), cell.initial_carry(params, (4,))
  )
  ref_c, ref_y = loop_reference(cell, params, xs, lengths, reverse, carry0)
  kw = dict(seq_lengths=jnp.asarray(lengths)) if masked else {}
  c, ys = jaxrnn.scan(cell, params, xs, carry0, reverse=reverse, **kw)
  assert_tree_close(c, ref_c)
  assert_tree_close(ys, ref_y)
  # Length 0 returns the initial carry, and padding gives exact zeros.
  if masked:
    assert_tree_close(jax.tree.map(lambda a: a[2], c), jax.tree.map(lambda a: a[2], carry0), 0)
    assert float(jnp.abs(ys[1, 3:]).max()) == 0.0
  # The same under jit, time-major and unrolled.
  jc, jys = jax.jit(lambda p, x, c0: jaxrnn.scan(cell, p, x, c0, reverse=reverse, unroll=3, **kw))(
    params, xs, carry0
  )
  assert_tree_close(jc, ref_c)
  assert_tree_close(jys, ref_y)
  tc, tys = jaxrnn.scan(
    cell, params, jnp.swapaxes(xs, 0, 1), carry0, reverse=reverse, time_major=True, **kw
  )
  assert_tree_close(tc, ref_c)
  assert_tree_close(jnp.swapaxes(tys, 0, 1), ref_y)


def test_reverse_with_padding_reverses_the_valid_part_only():
  # An "accumulate" cell makes the order visible: y_t = sum of inputs read so far.
  def init(key, input_size):
    return ()

  def initial_carry(params, batch_shape=()):
    return jaxrnn.HiddenCarry(jnp.zeros(tuple(batch_shape) + (1,)))

  def step(params, carry, x):
    h = carry.h + x
    return jaxrnn.HiddenCarry(h), h

  acc = jaxrnn.Cell(init, initial_carry, step)
  xs = jnp.array([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 99.0]])[..., None]
  c, ys = jaxrnn.scan(acc, (), xs, seq_lengths=jnp.array([4, 3]), reverse=True)
  np.testing.assert_array_equal(ys[..., 0], [[10, 9, 7, 4], [6, 5, 3, 0]])
  np.testing.assert_array_equal(c.h[:, 0], [10, 6])


def test_lengths_beyond_T_are_clamped_under_jit():
  cell = jaxrnn.gru(5)
  params, xs = _data(cell)
  f = jax.jit(lambda L: jaxrnn.scan(cell, params, xs, seq_lengths=L))
  c_big, y_big = f(jnp.array([100, 7, -3, 7]))
  c_ref, y_ref = f(jnp.array([7, 7, 0, 7]))
  assert_tree_close(c_big, c_ref, 0)
  np.testing.assert_array_equal(y_big, y_ref)


@pytest.mark.parametrize("name", CELLS)
def test_vmap_over_parameter_sets(name):
  cell = CELLS[name]
  keys = jax.random.split(jax.random.key(0), 3)
  params = jax.vmap(lambda k: cell.init(k, I))(keys)
  xs = jax.random.normal(jax.random.key(1), (4, 6, I))
  lengths = jnp.array([6, 2, 0, 4])
  run = lambda p: jaxrnn.scan(cell, p, xs, seq_lengths=lengths)  # noqa: E731
  c, ys = jax.jit(jax.vmap(run))(params)
  for i in range(3):
    p_i = jax.tree.map(lambda a, i=i: a[i], params)
    ref_c, ref_y = loop_reference(cell, p_i, xs, np.asarray(lengths), False)
    assert_tree_close(jax.tree.map(lambda a, i=i: a[i], c), ref_c)
    assert_tree_close(ys[i], ref_y)


def test_gradients_through_masked_scan():
  with jax.enable_x64(True):
    cell = jaxrnn.lstm(3)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), cell.init(jax.random.key(0), 2))
    xs = jax.random.normal(jax.random.key(1), (3, 5, 2), jnp.float64)
    lengths = jnp.array([5, 2, 0])

    @jax.jit  # compiled once: check_grads evaluates it many times
    def loss(params, xs):
      c, ys = jaxrnn.scan(cell, params, xs, seq_lengths=lengths, reverse=True)
      return jnp.sum(ys**2) + jnp.sum(c.c)

    check_grads(loss, (params, xs), order=1, modes=("rev",), eps=1e-4)
    # Padded inputs have exactly zero gradient.
    gx = jax.grad(loss, argnums=1)(params, xs)
    assert float(jnp.abs(gx[1, 2:]).max()) == 0.0 and float(jnp.abs(gx[2]).max()) == 0.0


def test_batchless_and_multidim_batch():
  cell = CELLS["lstm"]
  params, xs = _data(cell, B=6)
  c, ys = jaxrnn.scan(cell, params, xs[0])
  c_ref, ys_ref = jaxrnn.scan(cell, params, xs[:1])
  np.testing.assert_allclose(ys, ys_ref[0], atol=1e-6)
  lengths = jnp.array([[7, 1, 3], [0, 7, 2]])
  c2, ys2 = jaxrnn.scan(cell, params, xs.reshape(2, 3, 7, I), seq_lengths=lengths)
  c1, ys1 = jaxrnn.scan(cell, params, xs, seq_lengths=lengths.reshape(6))
  np.testing.assert_allclose(ys2.reshape(ys1.shape), ys1, atol=1e-6)
  np.testing.assert_allclose(c2.c.reshape(c1.c.shape), c1.c, atol=1e-6)


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (dict(xs=jnp.ones((4,))), r"xs has shape \(4,\) \(rank 1\); expected rank >= 2"),
    (dict(xs=jnp.ones((2, 7, 5))), r"xs has 5 features .* expect input_size=4"),
    (
      dict(carry="wrong-batch"),
      r"carry.* has shape \(3, 5\); expected .* batch shape of xs, \(2,\)",
    ),
    (
      dict(seq_lengths=jnp.array([1.0, 2.0])),
      r"seq_lengths has dtype float32; expected an integer",
    ),
    (dict(seq_lengths=jnp.array([1, 2, 3])), r"seq_lengths has shape \(3,\); expected .* \(2,\)"),
    (dict(seq_lengths=jnp.array([1, 8])), r"seq_lengths must lie in \[0, T=7\]; got .* to 8"),
    (
      dict(seq_lengths=np.array([-1, 2])),
      r"seq_lengths must lie in \[0, T=7\]; got values from -1",
    ),
    (dict(unroll=0), r"unroll=0: expected a positive int"),
  ],
)
def test_bad_input_raises_before_tracing(kwargs, match):
  cell = jaxrnn.gru(5)
  params = cell.init(jax.random.key(0), I)
  xs = kwargs.pop("xs", jnp.ones((2, 7, I)))
  if kwargs.get("carry") == "wrong-batch":
    kwargs["carry"] = cell.initial_carry(params, (3,))
  with pytest.raises(ValueError, match=match):
    jaxrnn.scan(cell, params, xs, **kwargs)


def test_not_a_cell_raises():
  with pytest.raises(ValueError, match=r"cell must be a jaxrnn.Cell, got function"):
    jaxrnn.scan(lambda p, c, x: (c, x), (), jnp.ones((2, 3)))


@pytest.mark.parametrize(
  "name,remat,masked,reverse",
  [
    ("lstm", True, False, False),
    ("lstm", 3, True, True),
    ("gru", 7, True, False),
    ("gru", 50, False, True),
    ("elman", True, True, True),
  ],
)
def test_remat_gives_the_same_values_and_gradients(name, remat, masked, reverse):
  cell = {"lstm": CELLS["lstm"], "gru": jaxrnn.gru(5), "elman": jaxrnn.elman(5, output_size=3)}[
    name
  ]
  params, xs = _data(cell, B=3, T=20)
  kw = dict(reverse=reverse, seq_lengths=jnp.array([20, 9, 0]) if masked else None)

  def loss(params, xs, remat):
    c, ys = jaxrnn.scan(cell, params, xs, remat=remat, **kw)
    return jnp.sum(ys * jnp.cos(ys)) + sum(jnp.sum(leaf) for leaf in jax.tree.leaves(c))

  (v0, g0) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)(params, xs, None)
  (v1, g1) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)(params, xs, remat)
  np.testing.assert_allclose(v1, v0, rtol=1e-6)
  assert_tree_close(g1, g0, atol=2e-5)
  c0, y0 = jaxrnn.scan(cell, params, xs, **kw)
  c1, y1 = jaxrnn.scan(cell, params, xs, remat=remat, **kw)
  assert_tree_close(c1, c0, atol=1e-6)
  np.testing.assert_allclose(y1, y0, atol=1e-6)


def test_remat_stores_sqrt_T_carries():
  """The compiled gradient's scratch memory shrinks like sqrt(T) (XLA's own accounting)."""
  cell = jaxrnn.gru(32)
  params = cell.init(jax.random.key(0), 4)

  def temp_bytes(T, remat):
    xs = jnp.ones((2, T, 4))
    f = jax.jit(jax.grad(lambda p, x: jnp.sum(jaxrnn.scan(cell, p, x, remat=remat)[0].h)))
    return f.lower(params, xs).compile().memory_analysis().temp_size_in_bytes

  plain = {T: temp_bytes(T, None) for T in (256, 1024)}
  remat = {T: temp_bytes(T, True) for T in (256, 1024)}
  assert plain[1024] / plain[256] > 3.5  # O(T)
  assert remat[1024] / remat[256] < 2.5  # O(sqrt T): 4x the length, about 2x the memory
  assert remat[1024] * 8 < plain[1024]


def test_bad_remat_raises():
  cell = jaxrnn.gru(5)
  params = cell.init(jax.random.key(0), I)
  with pytest.raises(ValueError, match=r"remat=0: expected None, a bool or a positive int"):
    jaxrnn.scan(cell, params, jnp.ones((2, 7, I)), remat=0)


# The registry's examples (lstm with a projection, gru, elman with a readout) are checked in
# tests/test_registry.py; here, the variants their kernels branch on, over two batch axes.
FUSED_CASES = {
  "lstm": jaxrnn.lstm(5),
  "lstm-nobias": jaxrnn.lstm(5, use_bias=False),
  "gru-nobias": jaxrnn.gru(5, use_bias=False),
  "elman-relu": jaxrnn.elman(5, activation="relu", recurrent_init="identity"),
}


@pytest.mark.parametrize("name", FUSED_CASES)
@pytest.mark.parametrize("masked,reverse", [(True, True)])
def test_fused_kernel_equals_step_loop_values_and_gradients(name, masked, reverse):
  """The hand-written VJPs against JAX's autodiff of the plain loop of `step`."""
  cell = FUSED_CASES[name]
  params = cell.init(jax.random.key(0), I)
  xs = jax.random.normal(jax.random.key(1), (2, 3, 6, I))  # two batch axes
  carry0 = jax.tree.map(
    lambda a: jax.random.normal(jax.random.key(2), a.shape), cell.initial_carry(params, (2, 3))
  )
  lengths = jnp.array([[6, 0, 3], [1, 6, 5]]) if masked else None
  w = jax.random.normal(jax.random.key(3), (2, 3, 6, 1))

  def loss(params, carry0, xs, impl):
    c, ys = jaxrnn.scan(cell, params, xs, carry0, seq_lengths=lengths, reverse=reverse, impl=impl)
    return jnp.sum(jnp.tanh(ys) * w) + sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(c))

  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)), static_argnums=3)
  v_step, g_step = grad(params, carry0, xs, "step")
  v_fused, g_fused = grad(params, carry0, xs, "fused")
  np.testing.assert_allclose(v_fused, v_step, rtol=1e-6)
  assert_tree_close(g_fused, g_step, atol=1e-5)
  for f, s in zip(jax.tree.leaves(g_fused), jax.tree.leaves(g_step), strict=True):
    assert np.linalg.norm(f - s) <= 1e-5 * np.linalg.norm(s)  # 1e-5 relative, leaf by leaf


# Order 1 for every registered kernel is in tests/test_registry.py; order 2 here.
@pytest.mark.parametrize("cell,order", [(jaxrnn.lstm(3, proj_size=2), 2)])
def test_fused_kernel_check_grads(cell, order):
  with jax.enable_x64(True):
    params = jax.tree.map(lambda a: a.astype(jnp.float64), cell.init(jax.random.key(0), 2))
    xs = jax.random.normal(jax.random.key(1), (2, 4, 2), jnp.float64)
    lengths = jnp.array([4, 2])

    @jax.jit  # compiled once: check_grads evaluates it (and its VJPs) many times
    def loss(params, xs):
      c, ys = jaxrnn.scan(cell, params, xs, seq_lengths=lengths, impl="fused")
      return jnp.sum(jnp.sin(ys)) + jnp.sum(c.h**2)

    check_grads(loss, (params, xs), order=order, modes=("rev",), eps=1e-4)


def test_forward_mode_needs_impl_step():
  cell = jaxrnn.gru(3)
  params = cell.init(jax.random.key(0), 2)
  xs = jax.random.normal(jax.random.key(1), (2, 4, 2))
  f = lambda xs, impl: jaxrnn.scan(cell, params, xs, impl=impl)[1]  # noqa: E731
  _, tangent = jax.jvp(lambda x: f(x, "step"), (xs,), (jnp.ones_like(xs),))
  _, vjp = jax.vjp(lambda x: f(x, "auto"), xs)
  # <J 1, 1> computed forward (step) equals <1, J^T 1> computed backward (fused).
  np.testing.assert_allclose(jnp.sum(tangent), jnp.sum(vjp(jnp.ones((2, 4, 3)))[0]), rtol=1e-5)
  with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
    jax.jvp(lambda x: f(x, "auto"), (xs,), (jnp.ones_like(xs),))
  with pytest.raises(ValueError, match=r"impl='fast' is not one of"):
    jaxrnn.scan(cell, params, xs, impl="fast")
