"""`jaxrnn.mlstm` against the xlstm package's mLSTM backends and cell, and mlstm_kernels.

The references (pinned in the ``dev`` extra): xlstm's PyTorch backends
``recurrent_step_stabilized_simple`` (chained over time), ``parallel_stabilized_simple``
and ``chunkwise_simple`` (with an initial state), run in float64 on ``q, k, v, i~, f~``
computed in PyTorch from the same weights, then its ``MultiHeadLayerNorm``; its
``mLSTMCell`` itself, with jaxrnn's input ``x = [q, k, v]`` and identity blocks in
``w_qkv`` (its gates read ``[q, k, v]``); mlstm_kernels' JAX parallel kernel
(``parallel--native_autograd``, values and gradients) and its native JAX chunkwise forward
from a random carry (values and last states), loaded by path because the package's
``chunkwise/__init__`` imports its Triton kernels (``jax_triton``, a GPU package).

The mapping: head ``k`` of ``q``, ``k``, ``v`` is columns ``[k D:(k+1) D]`` of each
``H``-block of ``x @ w_qkv``; the backends' ``c_state`` ``(B, NH, DH, DH)``,
``n_state`` ``(B, NH, DH, 1)``, ``m_state`` ``(B, NH, 1, 1)`` are the carry's ``C``,
``n``, ``m`` reshaped; ``chunkwise_simple`` scales the query instead of the key, so its
``C`` and ``n`` are ``sqrt(D)`` times jaxrnn's.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.test_util import check_grads
from xlstm.blocks.mlstm import backends
from xlstm.blocks.mlstm.cell import mLSTMCell, mLSTMCellConfig
from xlstm.components.ln import MultiHeadLayerNorm

import jaxrnn
from jaxrnn.cells.mlstm import MLSTMParams, _memory, chunkwise_h, project

H, K, I, B, T = 8, 2, 3, 3, 8
D = H // K
VALUES = dict(rtol=1e-5, atol=1e-5)


def _params(seed=0, input_size=I):
  """A cell and params with every weight random (init's gate weights are zeros); chunks of 3
  steps, so that T = 8 has a padded last chunk."""
  cell = jaxrnn.mlstm(H, num_heads=K, chunk_size=3, use_bias=True)
  p = cell.init(jax.random.key(seed), input_size)
  keys = jax.random.split(jax.random.key(seed + 1), 4)
  p = p._replace(
    w_if=jax.random.normal(keys[0], p.w_if.shape) * 0.5,
    b_if=jax.random.normal(keys[1], p.b_if.shape),
    norm=1.0 + 0.3 * jax.random.normal(keys[2], p.norm.shape),
  )
  if p.b_qkv is not None:
    p = p._replace(b_qkv=0.1 * jax.random.normal(keys[3], p.b_qkv.shape))
  return cell, p


def _torch_heads(p, xs):
  """``(q, k, v, i~, f~)`` in float64 PyTorch from ``xs`` ``(B, S, I)``: ``(B, NH, S, DH)``
  and ``(B, NH, S, 1)``, k unscaled (the backends scale it)."""
  t = lambda a: a if torch.is_tensor(a) else torch.tensor(np.asarray(a, np.float64))  # noqa: E731
  x = t(xs)
  qkv = x @ t(p.w_qkv) + (0.0 if p.b_qkv is None else t(p.b_qkv))
  gates = x @ t(p.w_if) + t(p.b_if)
  heads = lambda a: a.reshape(a.shape[0], a.shape[1], K, D).transpose(1, 2)  # noqa: E731
  q, k, v = (heads(a) for a in qkv.split(H, dim=-1))
  i, f = (g.transpose(1, 2)[..., None] for g in gates.split(K, dim=-1))
  return q, k, v, i, f


def _torch_norm(norm, h):
  """xlstm's ``MultiHeadLayerNorm`` of ``h`` ``(B, NH, S, DH)`` with jaxrnn's scale ``norm``
  (its ``weight`` is ``norm - 1``): ``(output (B, S, H), the module)``."""
  module = MultiHeadLayerNorm(ndim=H, weight=True, bias=False).double()
  module.load_state_dict({"weight": torch.tensor(np.asarray(norm, np.float64) - 1.0)})
  out = module(h)
  return out.transpose(1, 2).reshape(h.shape[0], h.shape[2], H), module


def _normed(p, h):
  """`_torch_norm`'s output as NumPy."""
  return _torch_norm(p.norm, h)[0].detach().numpy()


def _state(carry):
  """jaxrnn's carry as the backends' ``(c_state, n_state, m_state)``, float64."""
  c = lambda a: torch.tensor(np.asarray(a, np.float64))  # noqa: E731
  return (
    c(carry.C).reshape(-1, K, D, D),
    c(carry.n).reshape(-1, K, D, 1),
    c(carry.m).reshape(-1, K, 1, 1),
  )


@jax.jit
def _scan(cell, p, xs, carry):
  """`jaxrnn.scan`'s default path, compiled once per cell, params and shapes."""
  return jaxrnn.scan(cell, p, xs, carry, unroll=1)


def _random_carry(cell, p, seed=5):
  zeros = cell.initial_carry(p, (B,))
  keys = jax.random.split(jax.random.key(seed), 3)
  return jax.tree.map(lambda a, k: jax.random.normal(k, a.shape), zeros, type(zeros)(*keys))


def test_the_step_chained_is_xlstms_recurrent_step_then_its_norm():
  cell, p = _params()
  xs = jax.random.normal(jax.random.key(2), (B, T, I))
  carry = _random_carry(cell, p)
  q, k, v, i, f = _torch_heads(p, xs)
  state, want = _state(carry), []
  for t in range(T):
    s = slice(t, t + 1)
    h, state = backends.recurrent_step_stabilized_simple(
      *state, q[:, :, s], k[:, :, s], v[:, :, s], i[:, :, s], f[:, :, s]
    )
    want.append(_normed(p, h))
  step = jax.jit(cell.step)
  for t in range(T):
    carry, y = step(p, carry, xs[:, t])
    np.testing.assert_allclose(y, want[t][:, 0], **VALUES)
  for got, ref in zip(carry, state, strict=True):
    np.testing.assert_allclose(got, ref.reshape(B, -1).numpy(), **VALUES)


def test_the_sequence_is_xlstms_parallel_and_chunkwise_backends():
  cell, p = _params()
  xs = jax.random.normal(jax.random.key(3), (B, T, I))
  q, k, v, i, f = _torch_heads(p, xs)
  parallel = backends.parallel_stabilized_simple(q, k, v, i, f)
  _, ys = _scan(cell, p, xs, cell.initial_carry(p, (B,)))
  np.testing.assert_allclose(ys, _normed(p, parallel), **VALUES)
  # from a random carry, against chunkwise_simple (its C and n are sqrt(D) times jaxrnn's)
  carry = _random_carry(cell, p)
  C, n, m = _state(carry)
  out, last = backends.chunkwise_simple(
    q, k, v, i[..., 0], f[..., 0], C * math.sqrt(D), n[..., 0] * math.sqrt(D), m[..., 0, 0],
    chunk_size=4, return_last_state=True,
  )  # fmt: skip
  final, ys = _scan(cell, p, xs, carry)
  np.testing.assert_allclose(ys, _normed(p, out), **VALUES)
  want = (last[0] / math.sqrt(D), last[1] / math.sqrt(D), last[2])
  for got, ref in zip(final, want, strict=True):
    np.testing.assert_allclose(got, ref.reshape(B, -1).numpy(), **VALUES)


def test_gradients_equal_xlstms_parallel_backend_in_float64():
  cell, p = _params()
  xs = jax.random.normal(jax.random.key(4), (B, T, I))
  w = np.asarray(jax.random.normal(jax.random.key(6), (B, T, H)))
  tp = {
    name: torch.tensor(np.asarray(a, np.float64), requires_grad=True)
    for name, a in p._asdict().items()
  }
  tx = torch.tensor(np.asarray(xs, np.float64), requires_grad=True)
  heads = _torch_heads(MLSTMParams(**tp), tx)
  out, norm = _torch_norm(p.norm, backends.parallel_stabilized_simple(*heads))
  (out * torch.tensor(np.asarray(w, np.float64))).sum().backward()
  tp["norm"].grad = norm.weight.grad  # d/d norm = d/d (norm - 1)
  loss = lambda p, xs: jnp.sum(jaxrnn.scan(cell, p, xs, unroll=1)[1] * w)  # noqa: E731
  grads = jax.jit(jax.grad(loss, (0, 1)))(p, xs)
  for name, g in grads[0]._asdict().items():
    _close_relative(g, tp[name].grad.numpy(), name)
  _close_relative(grads[1], tx.grad.numpy(), "xs")


def _close_relative(got, want, name, rtol=1e-4):
  scale = np.max(np.abs(want))
  assert np.max(np.abs(np.asarray(got) - want)) <= rtol * scale, name


def test_xlstms_mlstm_cell_is_this_cell_on_qkv_with_identity_projections():
  torch.manual_seed(0)
  ref = mLSTMCell(mLSTMCellConfig(context_length=T, embedding_dim=H, num_heads=K)).double()
  with torch.no_grad():
    for param in ref.parameters():
      param.normal_(0.0, 0.5)
  g = lambda a: jnp.asarray(a.detach().numpy(), jnp.float32)  # noqa: E731
  p = MLSTMParams(
    w_qkv=jnp.eye(3 * H, dtype=jnp.float32),
    w_if=jnp.concatenate([g(ref.igate.weight.T), g(ref.fgate.weight.T)], axis=1),
    b_if=jnp.concatenate([g(ref.igate.bias), g(ref.fgate.bias)]),
    norm=1.0 + g(ref.outnorm.weight),
  )
  cell = jaxrnn.mlstm(H, num_heads=K, chunk_size=3)
  qkv = np.asarray(jax.random.normal(jax.random.key(7), (B, T, 3 * H)), np.float64)
  q, k, v = (torch.tensor(a) for a in np.split(qkv, 3, axis=-1))
  carry = cell.initial_carry(p, (B,))
  _, ys = _scan(cell, p, jnp.asarray(qkv, jnp.float32), carry)
  np.testing.assert_allclose(ys, ref(q, k, v).detach().numpy(), **VALUES)
  step, state = jax.jit(cell.step), None
  for t in range(T):
    s = slice(t, t + 1)
    want, state = ref.step(q[:, s], k[:, s], v[:, s], mlstm_state=state)
    carry, y = step(p, carry, jnp.asarray(qkv[:, t], jnp.float32))
    np.testing.assert_allclose(y, want[:, 0].detach().numpy(), **VALUES)


def test_the_memory_equals_mlstm_kernels_jax_parallel_kernel():
  from mlstm_kernels.jax.parallel.native import mlstm_parallel__native_autograd as parallel

  cell, p = _params()
  xs = jax.random.normal(jax.random.key(8), (B, T, I))

  def ours(p, xs):
    memory = _memory(cell.initial_carry(p, (B,)), K)
    _, h = chunkwise_h(p, memory, jnp.moveaxis(xs, 1, 0), None, None, None, 3)
    return jnp.moveaxis(h, 0, 2)  # (B, NH, S, DH)

  def theirs(p, xs):
    q, k, v, i, f = project(p, xs)
    q, k, v = (jnp.moveaxis(a, 1, 2) for a in (q, k * math.sqrt(D), v))  # it scales k
    return parallel(q, k, v, jnp.moveaxis(i, 1, 2), jnp.moveaxis(f, 1, 2))

  w = jax.random.normal(jax.random.key(9), (B, K, T, D))

  @jax.jit
  def run(p, xs):
    grad = lambda fn: jax.value_and_grad(lambda p, xs: jnp.sum(fn(p, xs) * w), (0, 1))  # noqa: E731
    return (ours(p, xs), theirs(p, xs)), grad(ours)(p, xs), grad(theirs)(p, xs)

  (h, want), (_, got_g), (_, want_g) = run(p, xs)
  np.testing.assert_allclose(h, want, **VALUES)
  for got, want in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g), strict=True):
    _close_relative(got, np.asarray(want), "grad")


def _mlstm_kernels_chunkwise_fw():
  """mlstm_kernels' native JAX chunkwise forward, loaded by path: its package's
  ``__init__`` imports the Triton kernels (``jax_triton``, a GPU package); this file imports
  only jax and einops."""
  import importlib.util

  import mlstm_kernels

  path = mlstm_kernels.__path__[0] + "/jax/chunkwise/native/fw.py"
  spec = importlib.util.spec_from_file_location("mlstm_kernels_chunkwise_native_fw", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.mlstm_chunkwise_fw


def test_from_a_carry_the_memory_equals_mlstm_kernels_jax_chunkwise_kernel():
  cell, p = _params()
  xs = jax.random.normal(jax.random.key(13), (B, T, I))
  memory = _memory(_random_carry(cell, p), K)
  final, h = jax.jit(chunkwise_h, static_argnums=6)(
    p, memory, jnp.moveaxis(xs, 1, 0), None, None, None, 3
  )
  q, k, v, i, f = (jnp.moveaxis(a, 1, 2) for a in project(p, xs))
  scale = math.sqrt(D)  # it scales the query, not the key: its C and n are sqrt(D) times ours
  out = _mlstm_kernels_chunkwise_fw()(
    q, k * scale, v, i, f, memory.C * scale, memory.n * scale, memory.m,
    chunk_size=4, return_last_states=True,
  )  # fmt: skip
  np.testing.assert_allclose(jnp.moveaxis(h, 0, 2), out[0], **VALUES)
  for got, want in zip((final.C * scale, final.n * scale, final.m), out[3], strict=True):
    np.testing.assert_allclose(got, want, **VALUES)


def test_the_chunkwise_form_equals_the_step_loop_with_lengths_resets_reverse():
  cell, p = _params()
  xs = jax.random.normal(jax.random.key(10), (B, T, I))
  carry = _random_carry(cell, p)
  lengths = jnp.array([T, 0, 5])
  resets = np.zeros((B, T), bool)
  resets[0, [0, 3, 4]] = True
  resets[2, 2] = True
  w = jax.random.normal(jax.random.key(11), (B, T, H))

  def loss(p, carry, xs, impl, reverse):
    kw = dict(seq_lengths=lengths, resets=resets, reverse=reverse, impl=impl, unroll=1)
    final, ys = jaxrnn.scan(cell, p, xs, carry, **kw)
    return jnp.sum(ys * w) + sum(jnp.sum(jnp.sin(c)) for c in final), (final, ys)

  @jax.jit
  def both(p, carry, xs):
    grad = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)
    return {(i, r): grad(p, carry, xs, i, r) for i in ("auto", "step") for r in (False, True)}

  out = both(p, carry, xs)
  for r in (False, True):
    (_, got), g_got = out[("auto", r)]
    (_, want), g_want = out[("step", r)]
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
      np.testing.assert_allclose(a, b, **VALUES)
    for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_want), strict=True):
      _close_relative(a, np.asarray(b), "grad")


def test_gradients_by_finite_differences_in_float64():
  with jax.enable_x64(True):
    cell, p = _params()
    p = jax.tree.map(lambda a: a.astype(jnp.float64), p)
    xs = jax.random.normal(jax.random.key(12), (2, 4, I), jnp.float64)
    carry = jax.tree.map(lambda a: a[:2].astype(jnp.float64), _random_carry(cell, p))
    resets = np.array([[False, False, True, False], [False] * 4])

    def loss(p, carry, xs):  # lengths: the registry's check_cell runs check_grads with them
      final, ys = jaxrnn.scan(cell, p, xs, carry, resets=resets, unroll=1)
      return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(c * c) for c in final)

    check_grads(jax.jit(loss), (p, carry, xs), order=1, modes=("rev",), eps=1e-5)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(hidden_size=6, num_heads=4), "not divisible by num_heads=4"),
    (dict(hidden_size=8, num_heads=2, chunk_size=0), "chunk_size=0"),
  ],
)
def test_bad_arguments_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    jaxrnn.mlstm(**kwargs)
