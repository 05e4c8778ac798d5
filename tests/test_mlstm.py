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

Compiling is most of this file's time: the data are drawn by NumPy (nothing compiled), the
jaxrnn side of the comparisons that share params and inputs is one compiled function
(`_runs`); the suite compiles with `processes.TEST_XLA_FLAGS`.
"""

import functools
import importlib.util
import math

import jax
import jax.numpy as jnp
import mlstm_kernels
import numpy as np
import pytest
import torch
from jax.flatten_util import ravel_pytree
from jax.test_util import check_grads
from mlstm_kernels.jax.parallel.native import mlstm_parallel__native_autograd as parallel
from xlstm.blocks.mlstm import backends
from xlstm.blocks.mlstm.cell import mLSTMCell, mLSTMCellConfig
from xlstm.components.ln import MultiHeadLayerNorm

import jaxrnn
from jaxrnn.cells.mlstm import MLSTMParams, _memory, chunkwise_h, output_norm, project

H, K, I, B, T = 8, 2, 3, 3, 8
D = H // K
VALUES = dict(rtol=1e-5, atol=1e-5)


def _normal(seed, *shape, scale=1.0, dtype=np.float32):
  """N(0, scale^2) drawn by NumPy, as a JAX array (nothing compiled)."""
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, dtype)


@functools.cache
def _params():
  """A cell and params with every weight random (init's gate weights are zeros), drawn by
  NumPy; chunks of 3 steps, so that T = 8 has a padded last chunk."""
  cell = jaxrnn.mlstm(H, num_heads=K, chunk_size=3, use_bias=True)
  shapes = jax.eval_shape(lambda k: cell.init(k, I), jax.random.key(0))
  p = MLSTMParams(
    w_qkv=_normal(0, *shapes.w_qkv.shape, scale=math.sqrt(2 / (5 * I))),
    w_if=_normal(1, *shapes.w_if.shape, scale=0.5),
    b_if=_normal(2, *shapes.b_if.shape),
    norm=1.0 + _normal(3, *shapes.norm.shape, scale=0.3),
    b_qkv=_normal(4, *shapes.b_qkv.shape, scale=0.1),
  )
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


def _random_carry(cell, p, seed=5, batch=B):
  shapes = jax.eval_shape(lambda p: cell.initial_carry(p, (batch,)), p)
  return type(shapes)(*(_normal(seed + j, *a.shape) for j, a in enumerate(shapes)))


def _mlstm_kernels_chunkwise_fw():
  """mlstm_kernels' native JAX chunkwise forward, loaded by path: its package's
  ``__init__`` imports the Triton kernels (``jax_triton``, a GPU package); this file imports
  only jax and einops."""
  path = mlstm_kernels.__path__[0] + "/jax/chunkwise/native/fw.py"
  spec = importlib.util.spec_from_file_location("mlstm_kernels_chunkwise_native_fw", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.mlstm_chunkwise_fw


def _inputs():
  """``(xs (B, T, I), a random carry, the loss's weights (B, T, H))``."""
  cell, p = _params()
  return _normal(6, B, T, I), _random_carry(cell, p), _normal(7, B, T, H)


def _theirs(p, xs, w):
  """mlstm_kernels' parallel kernel (it scales k itself) then this cell's norm: ``(loss,
  (h~ (B, NH, S, DH), ys))``."""
  q, k, v, i, f = project(p, xs)
  q, k, v = (jnp.moveaxis(a, 1, 2) for a in (q, k * math.sqrt(D), v))
  h = parallel(q, k, v, jnp.moveaxis(i, 1, 2), jnp.moveaxis(f, 1, 2))
  ys = output_norm(p, jnp.moveaxis(h, 1, 2))
  return jnp.sum(ys * w), (h, ys)


@functools.cache
def _runs():
  """Everything on jaxrnn's side (and mlstm_kernels') that shares the params and inputs, in
  one compiled function: `jaxrnn.scan`'s values and gradients from the zero carry; the
  memory's ``h~`` (`chunkwise_h`) from the zero and the random carry; the step chained
  from the random carry; mlstm_kernels' parallel kernel (values and gradients) and its
  chunkwise forward from the random carry."""
  cell, p = _params()
  xs, carry, w = _inputs()

  def ours(p, xs):
    ys = jaxrnn.scan(cell, p, xs, unroll=1)[1]
    return jnp.sum(ys * w), ys

  def memory(carry):
    final, h = chunkwise_h(p, _memory(carry, K), jnp.moveaxis(xs, 1, 0), None, None, None, 3)
    return final, jnp.moveaxis(h, 0, 2)  # (B, NH, S, DH)

  def stepped(carry):
    return jax.lax.scan(lambda c, x: cell.step(p, c, x), carry, jnp.moveaxis(xs, 1, 0))

  def run(p, xs, carry):
    q, k, v, i, f = (jnp.moveaxis(a, 1, 2) for a in project(p, xs))
    scale = math.sqrt(D)  # it scales the query: its C and n are sqrt(D) times jaxrnn's
    chunkwise = _mlstm_kernels_chunkwise_fw()(
      q, k * scale, v, i, f, carry.C.reshape(B, K, D, D) * scale,
      carry.n.reshape(B, K, D) * scale, carry.m, chunk_size=4, return_last_states=True,
    )  # fmt: skip
    return dict(
      ours=jax.value_and_grad(ours, (0, 1), has_aux=True)(p, xs),
      theirs=jax.value_and_grad(_theirs, (0, 1), has_aux=True)(p, xs, w),
      zero=memory(cell.initial_carry(p, (B,))),
      random=memory(carry),
      stepped=stepped(carry),
      chunkwise=chunkwise,
    )

  return jax.jit(run)(p, xs, carry)


def test_the_step_chained_is_xlstms_recurrent_step_then_its_norm():
  cell, p = _params()
  xs, carry, _ = _inputs()
  q, k, v, i, f = _torch_heads(p, xs)
  state, want = _state(carry), []
  for t in range(T):
    s = slice(t, t + 1)
    h, state = backends.recurrent_step_stabilized_simple(
      *state, q[:, :, s], k[:, :, s], v[:, :, s], i[:, :, s], f[:, :, s]
    )
    want.append(_normed(p, h)[:, 0])
  final, ys = _runs()["stepped"]
  np.testing.assert_allclose(jnp.moveaxis(ys, 0, 1), np.stack(want, 1), **VALUES)
  for got, ref in zip(final, state, strict=True):
    np.testing.assert_allclose(got, ref.reshape(B, -1).numpy(), **VALUES)


def test_the_sequence_is_xlstms_parallel_and_chunkwise_backends():
  cell, p = _params()
  xs, carry, _ = _inputs()
  q, k, v, i, f = _torch_heads(p, xs)
  runs = _runs()
  (_, ys), _ = runs["ours"]  # jaxrnn.scan from the zero carry
  np.testing.assert_allclose(
    ys, _normed(p, backends.parallel_stabilized_simple(q, k, v, i, f)), **VALUES
  )
  # from a random carry, against chunkwise_simple (its C and n are sqrt(D) times jaxrnn's)
  C, n, m = _state(carry)
  out, last = backends.chunkwise_simple(
    q, k, v, i[..., 0], f[..., 0], C * math.sqrt(D), n[..., 0] * math.sqrt(D), m[..., 0, 0],
    chunk_size=4, return_last_state=True,
  )  # fmt: skip
  final, h = runs["random"]
  np.testing.assert_allclose(output_norm(p, jnp.moveaxis(h, 1, 2)), _normed(p, out), **VALUES)
  want = (last[0] / math.sqrt(D), last[1] / math.sqrt(D), last[2])
  for got, ref in zip(final, want, strict=True):
    np.testing.assert_allclose(got, ref.reshape(got.shape).numpy(), **VALUES)


def test_gradients_equal_xlstms_parallel_backend_in_float64():
  _, p = _params()
  xs, _, w = _inputs()
  tp = {
    name: torch.tensor(np.asarray(a, np.float64), requires_grad=True)
    for name, a in p._asdict().items()
  }
  tx = torch.tensor(np.asarray(xs, np.float64), requires_grad=True)
  heads = _torch_heads(MLSTMParams(**tp), tx)
  out, norm = _torch_norm(p.norm, backends.parallel_stabilized_simple(*heads))
  (out * torch.tensor(np.asarray(w, np.float64))).sum().backward()
  tp["norm"].grad = norm.weight.grad  # d/d norm = d/d (norm - 1)
  _, grads = _runs()["ours"]  # of sum(jaxrnn.scan(...)[1] * w)
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
  qkv = np.random.default_rng(8).normal(size=(B, T, 3 * H))
  q, k, v = (torch.tensor(a) for a in np.split(qkv, 3, axis=-1))

  @jax.jit
  def run(p, xs):  # the sequence, and the step chained
    step = lambda c, x: cell.step(p, c, x)  # noqa: E731
    carry = cell.initial_carry(p, (B,))
    return jaxrnn.scan(cell, p, xs, unroll=1)[1], jax.lax.scan(step, carry, xs.swapaxes(0, 1))[1]

  ys, stepped = run(p, jnp.asarray(qkv, jnp.float32))
  np.testing.assert_allclose(ys, ref(q, k, v).detach().numpy(), **VALUES)
  state = None
  for t in range(T):
    s = slice(t, t + 1)
    want, state = ref.step(q[:, s], k[:, s], v[:, s], mlstm_state=state)
    np.testing.assert_allclose(stepped[t], want[:, 0].detach().numpy(), **VALUES)


def test_the_memory_equals_mlstm_kernels_jax_parallel_kernel():
  """``h~`` (before the norm, which would hide a per-step scale) equals the kernel's; the
  gradients of jaxrnn.scan equal those of the kernel followed by the same norm."""
  runs = _runs()
  _, h = runs["zero"]
  (_, (want_h, want_ys)), want_g = runs["theirs"]
  np.testing.assert_allclose(h, want_h, **VALUES)
  (_, ys), got_g = runs["ours"]
  np.testing.assert_allclose(ys, want_ys, **VALUES)
  for got, want in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g), strict=True):
    _close_relative(got, np.asarray(want), "grad")


def test_from_a_carry_the_memory_equals_mlstm_kernels_jax_chunkwise_kernel():
  runs = _runs()
  final, h = runs["random"]
  out = runs["chunkwise"]
  np.testing.assert_allclose(h, out[0], **VALUES)
  scale = math.sqrt(D)  # it scales the query, not the key: its C and n are sqrt(D) times ours
  for got, want in zip((final.C * scale, final.n * scale, final.m), out[3], strict=True):
    np.testing.assert_allclose(got, want, **VALUES)


def test_the_chunkwise_form_equals_the_step_loop_with_lengths_resets_reverse():
  cell, p = _params()
  xs, carry, w = _inputs()
  lengths = jnp.array([T, 0, 5])
  resets = np.zeros((B, T), bool)
  resets[0, [0, 3, 4]] = True
  resets[2, 2] = True

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
  """`check_grads` on one flat float64 vector of (params, carry, xs): its own arithmetic is
  then a few operations, not a few per leaf."""
  with jax.enable_x64(True):
    cell, p = _params()
    xs, carry, _ = _inputs()
    carry = jax.tree.map(lambda a: a[:2], carry)
    args = jax.tree.map(lambda a: np.asarray(a, np.float64), (p, carry, xs[:2, :4]))
    flat, unravel = ravel_pytree(args)
    resets = np.array([[False, False, True, False], [False] * 4])

    def loss(flat):  # lengths: the registry's check_cell runs check_grads with them
      p, carry, xs = unravel(flat)
      final, ys = jaxrnn.scan(cell, p, xs, carry, resets=resets, unroll=1)
      return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(c * c) for c in final)

    check_grads(jax.jit(loss), (flat,), order=1, modes=("rev",), eps=1e-5)


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
