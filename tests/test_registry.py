"""Every registered cell kind through the cell contract (`jaxrnn.testing.check_cell`).

The kinds are read from the registry (`jaxrnn.cells.KINDS`) when the tests are collected,
each at the small configuration its module declares (`CellKind.example`): a cell added to
the registry is checked here with no list to update. Each check compares against an
independent reference (a Python loop of ``step``, the step loop's autodiff, finite
differences, the composition of scans); the per-cell test files hold only each cell's own
reference equations (PyTorch, flax, xlstm, NumPy loops of the papers).
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import user_cell

import jaxrnn
from jaxrnn import train
from jaxrnn.testing import CHECKS, CellCheckError, check_cell

HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_generate_tests(metafunc):
  if "kind" in metafunc.fixturenames:  # read at collection: every registered kind
    metafunc.parametrize("kind", list(jaxrnn.cells.KINDS))


@pytest.mark.parametrize("check", list(CHECKS))
def test_every_kind_passes_the_contract(kind, check):
  cell, input_size = jaxrnn.cells.KINDS[kind].example_cell()
  result = check_cell(cell, input_size, checks=[check])[check]
  if check == "kernel" and cell.sequence is None and cell.coefficients is None:
    assert result.startswith("skipped: the cell has no whole-sequence kernel")
  else:
    assert result.startswith("passed"), result


def test_a_kind_added_to_the_registry_is_collected(tmp_path):
  plugin = tmp_path / "dummy_kind.py"
  plugin.write_text(
    "import jaxrnn\n"
    "def pytest_configure(config):\n"
    "  kinds = jaxrnn.cells.KINDS\n"
    "  kinds['dummy_gru'] = kinds['gru']._replace(name='dummy_gru')\n"
  )
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), HERE]))
  command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "dummy_kind"]
  out = subprocess.run(
    command + ["-p", "no:cacheprovider", os.path.join(HERE, "test_registry.py")],
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
    cwd=os.path.dirname(HERE),
  ).stdout
  ids = [line for line in out.splitlines() if "test_every_kind_passes_the_contract" in line]
  assert len(ids) == len(CHECKS) * (len(jaxrnn.cells.KINDS) + 1), out[-2000:]
  assert sum("[dummy_gru-" in line for line in ids) == len(CHECKS)


# ------------------------------------------------------------------ a user's cell


@pytest.mark.parametrize("check", list(CHECKS))
def test_a_user_cell_with_a_kernel_passes_the_contract(check):
  result = check_cell(user_cell.leaky_with_kernel(5), 3, checks=[check])[check]
  assert result == "passed"


def test_a_kernel_off_by_1e_3_at_one_step_fails_naming_the_step_and_the_leaf():
  broken = user_cell.leaky_with_kernel(5, error_at=2)
  with pytest.raises(CellCheckError) as info:
    check_cell(broken, 3, checks=["kernel"])
  e = info.value
  assert (e.check, e.step, e.leaf) == ("kernel", 2, "ys")
  assert e.got - e.want == pytest.approx(1e-3, rel=1e-3)
  assert "ys differs at index (0, 2, 0) (time step 2)" in str(e)
  # The scan check sees it too (its reference is a Python loop of the cell's step).
  with pytest.raises(CellCheckError, match=r"check_cell\[scan\]: ys differs .* \(time step 2\)"):
    check_cell(broken, 3, checks=["scan"])


def test_a_cell_that_breaks_the_dtype_policy_or_its_carry_is_named():
  def init(key, input_size):
    return {"w": jax.random.normal(key, (input_size, 2))}

  def initial_carry(params, batch_shape=()):
    return jnp.zeros(tuple(batch_shape) + (2,))

  def step(params, h, x):  # promotes: float16 inputs would need the params' dtype
    h = jnp.tanh(x @ params["w"] + h).astype(x.dtype)
    return h, h

  cell = jaxrnn.Cell(init, initial_carry, step, name="promoting")
  with pytest.raises(CellCheckError, match=r"check_cell\[dtype\]"):
    check_cell(cell, 3, checks=["dtype"])
  with pytest.raises(ValueError, match=r"unknown \['sharding'\]"):
    check_cell(cell, 3, checks=["sharding"])


def test_rnn_layers_trains_a_user_cell_stacked_and_bidirectional():
  cell = user_cell.leaky_with_kernel(5)
  model = jaxrnn.rnn_layers(cell, num_layers=2, bidirectional=True, dropout_rate=0.1)
  params = model.init(jax.random.key(0), 3)
  rng = np.random.default_rng(0)
  xs = jnp.asarray(rng.standard_normal((8, 6, 3)), jnp.float32)
  target = jnp.asarray(np.sign(rng.standard_normal((8, 6, 10))), jnp.float32) * 0.5
  opt = optax.adam(3e-2)
  lengths = jnp.array([6, 5, 4, 3, 6, 6, 2, 1])
  target = jnp.where(jnp.arange(6)[None, :, None] < lengths[:, None, None], target, 0.0)

  def loss(p, batch):
    _, ys = model.apply(p, xs, seq_lengths=lengths, key=batch["key"])
    return jnp.mean((ys - target) ** 2)

  step = jax.jit(train.make_train_step(loss, opt))
  state, first = train.TrainState.create(params, opt), None
  with jax.numpy_dtype_promotion("standard"):  # optax.adam's decay ** count (float ** int32)
    for i in range(60):
      state, metrics = step(state, {"key": jax.random.key(i)})
      first = metrics["loss"] if first is None else first
  value = metrics["loss"]
  assert float(value) < 0.5 * float(first), (float(first), float(value))
  assert dict(model.config)["kind"] == "leaky_kernel" and model.step is None


def test_rnn_layers_takes_a_factory_and_refuses_what_a_cell_cannot_take():
  built = jaxrnn.rnn_layers(jaxrnn.gru, 4, num_layers=2, use_bias=False)
  named = jaxrnn.rnn_layers("gru", 4, num_layers=2, use_bias=False)
  params = named.init(jax.random.key(0), 3)
  xs = jnp.ones((2, 5, 3))
  np.testing.assert_array_equal(built.apply(params, xs)[1], named.apply(params, xs)[1])
  assert built.config == named.config
  calls = []
  factory = lambda h, **kw: calls.append((h, kw)) or user_cell.leaky(h, **kw)  # noqa: E731
  jaxrnn.rnn_layers(factory, 6, num_layers=3, leak=0.25)
  assert calls == [(6, {"leak": 0.25})] * 3
  with pytest.raises(ValueError, match=r"hidden_size=7 with a Cell whose config records none"):
    jaxrnn.rnn_layers(user_cell.CELL, 7)
  with pytest.raises(ValueError, match=r"hidden_size=7 with a Cell whose config records hidden_s"):
    jaxrnn.rnn_layers(jaxrnn.gru(4), 7)
  with pytest.raises(ValueError, match=r"cell keyword arguments \['use_bias'\] with a Cell"):
    jaxrnn.rnn_layers(jaxrnn.gru(4), use_bias=False)
  with pytest.raises(ValueError, match=r"recurrent_dropout=0.1: the 'leaky' cell has no recur"):
    jaxrnn.rnn_layers(user_cell.CELL, recurrent_dropout=0.1)
  with pytest.raises(ValueError, match=r"kind is a int; expected a cell name"):
    jaxrnn.rnn_layers(3, 4)
  with pytest.raises(ValueError, match=r"returned a str; expected a jaxrnn.Cell"):
    jaxrnn.rnn_layers(lambda h: "gru", 4)
