"""PyTorch round trips into real models: a submodule's prefix, every dtype, the *Cell modules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import to_np

import jaxrnn
from jaxrnn.interop.torch import TOLERANCES

I, H, T, B, VOCAB = 3, 5, 6, 4, 11


class TokenTagger(torch.nn.Module):
  """What PyTorch users port: an LSTM inside a model, between an embedding and a readout."""

  def __init__(self):
    super().__init__()
    self.emb = torch.nn.Embedding(VOCAB, I)
    self.lstm = torch.nn.LSTM(I, H, num_layers=2, batch_first=True)
    self.head = torch.nn.Linear(H, 2)

  def forward(self, tokens):
    return self.head(self.lstm(self.emb(tokens))[0])


def _jax_tagger(model, params, arrays, tokens):
  """The same model in JAX: the LSTM through jaxrnn, the embedding and readout as arrays."""
  _, ys = model.apply(params, arrays["emb.weight"][tokens])
  return ys @ arrays["head.weight"].T + arrays["head.bias"][None, None]


def test_embedding_lstm_linear_ports_both_ways(rng):
  torch.manual_seed(0)
  net = TokenTagger()
  tokens = rng.integers(0, VOCAB, (B, T))
  with torch.no_grad():
    ref = to_np(net(torch.from_numpy(tokens)))
  arrays = {k: jnp.asarray(to_np(v)) for k, v in net.state_dict().items()}
  # torch -> jaxrnn: the LSTM converted, the rest as plain arrays.
  model, params = jaxrnn.from_torch(net.lstm)
  ys = _jax_tagger(model, params, arrays, tokens)
  np.testing.assert_allclose(ys, ref, atol=1e-5)
  # jaxrnn -> torch: new LSTM weights go into a fresh module under the submodule's prefix.
  params = model.init(jax.random.key(1), I)
  fresh = TokenTagger()
  result = fresh.load_state_dict(jaxrnn.to_torch(params, prefix="lstm."), strict=False)
  assert sorted(result.missing_keys) == ["emb.weight", "head.bias", "head.weight"]
  assert result.unexpected_keys == []
  rest = {k: v for k, v in net.state_dict().items() if not k.startswith("lstm.")}
  fresh.load_state_dict(rest, strict=False)
  with torch.no_grad():
    theirs = to_np(fresh(torch.from_numpy(tokens)))
  ys = _jax_tagger(model, params, arrays, tokens)
  np.testing.assert_allclose(ys, theirs, atol=1e-5)
  assert np.abs(theirs - ref).max() > 1e-2  # the new weights, not the old ones


@pytest.mark.parametrize("kind, dtype", [("LSTM", "float16"), ("GRU", "bfloat16")])
def test_low_precision_modules_keep_their_dtype(kind, dtype, rng):
  torch.manual_seed(0)
  m = getattr(torch.nn, kind)(I, H, num_layers=2, batch_first=True).to(getattr(torch, dtype))
  model, params = jaxrnn.from_torch(m, carry_dtype=dtype)  # PyTorch's state: the module's dtype
  assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(dtype)}
  assert dict(dict(model.config)["cell_config"])["dtype"] == dtype
  x = rng.standard_normal((B, T, I)).astype(np.float32)  # cast to the params' dtype
  with torch.no_grad():
    out, hn = m(torch.from_numpy(x).to(getattr(torch, dtype)))
  carry, ys = model.apply(params, x)
  assert ys.dtype == dtype and {c.dtype for c in jax.tree.leaves(carry)} == {jnp.dtype(dtype)}
  default, _ = jaxrnn.from_torch(m)  # jaxrnn's default: a float32 carry
  assert {c.dtype for c in jax.tree.leaves(default.apply(params, x)[0])} == {jnp.dtype("float32")}
  tol = TOLERANCES[dtype]
  np.testing.assert_allclose(np.asarray(ys, np.float32), out.float().numpy(), atol=tol)
  hn = hn if isinstance(hn, tuple) else (hn,)
  for mine, theirs in zip(jaxrnn.carry_to_torch(model, carry), hn, strict=True):
    np.testing.assert_allclose(np.asarray(mine, np.float32), theirs.float().numpy(), atol=tol)
  # Back to torch in the same dtype, and in again: the same bits.
  sd = jaxrnn.to_torch(params)
  assert {t.dtype for t in sd.values()} == {getattr(torch, dtype)}
  m.load_state_dict(sd)
  _, again = jaxrnn.from_torch(m)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again), strict=True):
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_float64_module_without_x64_raises_or_converts(rng):
  torch.manual_seed(0)
  m = torch.nn.GRU(I, H, batch_first=True).double()
  with pytest.raises(ValueError, match=r"module is float64, .*jax_enable_x64.*dtype=jnp.float32"):
    jaxrnn.from_torch(m)
  model, params = jaxrnn.from_torch(m, dtype=jnp.float32)
  assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype("float32")}
  x = rng.standard_normal((B, T, I))
  with torch.no_grad():
    ref = m(torch.from_numpy(x))[0].numpy()
  _, ys = model.apply(params, x.astype(np.float32))
  np.testing.assert_allclose(ys, ref, atol=TOLERANCES["float32"])
  with pytest.raises(ValueError, match=r"dtype=int32: expected a floating dtype"):
    jaxrnn.from_torch(m, dtype=jnp.int32)


CELLS = {  # name: (the torch module, the jaxrnn cell it maps to)
  "LSTMCell": (lambda **kw: torch.nn.LSTMCell(I, H, **kw), jaxrnn.lstm),
  "GRUCell": (lambda **kw: torch.nn.GRUCell(I, H, **kw), jaxrnn.gru),
  "RNNCell-relu": (
    lambda **kw: torch.nn.RNNCell(I, H, nonlinearity="relu", **kw),
    lambda h, **kw: jaxrnn.elman(h, activation="relu", **kw),
  ),
}


def _torch_steps(m, xs, h0):
  """The torch cell over ``xs`` ``(T, B, I)`` from ``h0``: outputs ``(T, B, H)``, last state."""
  h, ys = h0, []
  with torch.no_grad():
    for x in torch.from_numpy(xs):
      h = m(x, h)
      ys.append(to_np(h[0] if isinstance(h, tuple) else h))
  return np.stack(ys), h


@pytest.mark.parametrize(
  "name, bias", [("LSTMCell", True), ("GRUCell", False), ("RNNCell-relu", True)]
)
def test_torch_cells_map_to_jaxrnn_cells(name, bias, rng):
  torch.manual_seed(0)
  module, factory = CELLS[name]
  m = module(bias=bias)
  cell, params = jaxrnn.from_torch(m)
  assert cell == factory(H, use_bias=bias)
  xs = rng.standard_normal((T, B, I)).astype(np.float32)
  carry0 = cell.initial_carry(params, (B,))
  carry0 = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape), a.dtype), carry0)
  h0 = tuple(torch.from_numpy(np.array(a)) for a in carry0)
  ref, h_last = _torch_steps(m, xs, h0 if name == "LSTMCell" else h0[0])
  carry, ys = jaxrnn.scan(cell, params, xs, carry0, time_major=True)
  np.testing.assert_allclose(ys, ref, atol=1e-5)
  for mine, theirs in zip(carry, h_last if name == "LSTMCell" else (h_last,), strict=True):
    np.testing.assert_allclose(mine, to_np(theirs), atol=1e-5)
  # jaxrnn -> torch: the cell's own keys (biases summed into bias_ih), into a fresh cell
  # module, which then computes the same steps.
  fresh = module(bias=bias)
  assert str(fresh.load_state_dict(jaxrnn.to_torch(params))) == "<All keys matched successfully>"
  again, _ = _torch_steps(fresh, xs, h0 if name == "LSTMCell" else h0[0])
  np.testing.assert_allclose(again, ref, atol=1e-6)


def test_bad_interop_arguments():
  params = jaxrnn.rnn_layers("lstm", H).init(jax.random.key(0), I)
  with pytest.raises(ValueError, match=r"prefix='lstm': expected '' or the submodule's path"):
    jaxrnn.to_torch(params, prefix="lstm")
  proj = jaxrnn.lstm(H, proj_size=2).init(jax.random.key(0), I)
  with pytest.raises(ValueError, match=r"params has a projection \(w_proj\); torch.nn.LSTMCell"):
    jaxrnn.to_torch(proj)
  with pytest.raises(ValueError, match=r"a Linear; expected .*nn.LSTMCell or torch.nn.GRUCell"):
    jaxrnn.from_torch(torch.nn.Linear(2, 2))
