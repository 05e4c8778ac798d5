"""jaxrnn.train and jaxrnn.loop: step, clipping, TBPTT, determinism, resuming after a SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import train_worker

import jaxrnn
from jaxrnn import checkpoint, loop, train

HERE = os.path.dirname(os.path.abspath(__file__))
# Subprocesses import the jaxrnn of this checkout, whatever is installed.
SUBPROCESS_ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.path.dirname(HERE)}


@pytest.fixture
def optax_promotion():
  """optax.adam's bias correction computes ``decay ** count`` (float ** int32), which strict
  promotion rejects; tests that run Adam allow standard dtype promotion (rank stays strict)."""
  with jax.numpy_dtype_promotion("standard"):
    yield


def _regression(cell=None):
  cell = cell or jaxrnn.lstm(8)

  def loss_fn(params, batch):
    _, ys = jaxrnn.scan(cell, params, batch["x"])
    return jnp.mean((ys[:, -1, 0] - batch["y"]) ** 2)

  x = jax.random.normal(jax.random.key(1), (16, 6, 3))
  batch = {"x": x, "y": 0.5 * jnp.tanh(x[:, 0, 0] + x[:, 2, 1])}
  return cell, loss_fn, batch


def test_train_step_decreases_loss_on_a_fixed_batch(optax_promotion):
  cell, loss_fn, batch = _regression()
  opt = optax.adam(1e-2)
  state = train.TrainState.create(cell.init(jax.random.key(0), 3), opt)
  step = train.make_train_step(loss_fn, opt, max_grad_norm=1.0)
  first = float(loss_fn(state.params, batch))
  losses = []
  for _ in range(60):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[0] == pytest.approx(first, rel=1e-6)  # metrics report the loss before the update
  assert int(state.step) == 60
  assert float(loss_fn(state.params, batch)) < 0.3 * first


def test_clipping_bounds_the_update_norm():
  cell, loss_fn, batch = _regression(jaxrnn.elman(8))
  big_loss = lambda p, b: 1e4 * loss_fn(p, b)  # noqa: E731
  params = cell.init(jax.random.key(0), 3)
  grads = jax.grad(big_loss)(params, batch)
  grad_norm = float(optax.tree.norm(grads))
  assert grad_norm > 10.0

  sgd = optax.sgd(1.0)
  state, metrics = train.make_train_step(big_loss, sgd, max_grad_norm=0.25)(
    train.TrainState.create(params, sgd), batch
  )
  delta = jax.tree.map(lambda a, b: a - b, state.params, params)
  assert float(optax.tree.norm(delta)) == pytest.approx(0.25, rel=1e-4)
  assert float(metrics["update_norm"]) == pytest.approx(0.25, rel=1e-4)
  assert float(metrics["grad_norm"]) == pytest.approx(grad_norm, rel=1e-4)
  # the direction is the gradient's
  cos = sum(
    float(jnp.vdot(d, -g))
    for d, g in zip(jax.tree.leaves(delta), jax.tree.leaves(grads), strict=True)
  ) / (0.25 * grad_norm)
  assert cos == pytest.approx(1.0, abs=1e-4)

  # below the threshold the gradient passes unchanged: SGD(1) moves by exactly -grad
  state, _ = train.make_train_step(big_loss, sgd, max_grad_norm=1e9)(
    train.TrainState.create(params, sgd), batch
  )
  for new, old, g in zip(
    jax.tree.leaves(state.params), jax.tree.leaves(params), jax.tree.leaves(grads), strict=True
  ):
    scale = float(jnp.max(jnp.abs(g)))  # gradients of 1e4 x loss: compare relative to them
    np.testing.assert_allclose(new - old, -g, rtol=1e-4, atol=1e-5 * scale)


def _tbptt_problem():
  cell = jaxrnn.elman(6)

  def loss_fn(params, carry, batch):
    carry, ys = jaxrnn.scan(cell, params, batch["x"], carry)
    return jnp.mean((ys[..., 0] - batch["y"]) ** 2), carry

  xs = jax.random.normal(jax.random.key(2), (3, 24, 2))
  stream = {"x": xs, "y": jnp.sin(jnp.cumsum(xs[..., 0], axis=1))}
  params = cell.init(jax.random.key(3), 2)
  return cell, loss_fn, stream, params


def test_tbptt_equals_manual_windows_with_constant_carries():
  cell, loss_fn, stream, params = _tbptt_problem()
  sgd = optax.sgd(0.5)
  step = train.make_tbptt_step(loss_fn, sgd, window=8, max_grad_norm=None)
  carry0 = cell.initial_carry(params, (3,))
  state, carry, metrics = step(train.TrainState.create(params, sgd), carry0, stream)
  assert int(state.step) == 3 and metrics["loss"].shape == (3,)

  # by hand: each window's carry enters as a numpy constant (no path for a gradient)
  p, c = params, carry0
  losses = []
  for w in range(3):
    batch = jax.tree.map(lambda a, w=w: a[:, 8 * w : 8 * (w + 1)], stream)
    c_const = jax.tree.map(np.asarray, c)
    (loss, c), g = jax.value_and_grad(loss_fn, has_aux=True)(p, c_const, batch)
    p = jax.tree.map(lambda a, b: a - 0.5 * b, p, g)
    losses.append(float(loss))
  np.testing.assert_allclose(metrics["loss"], losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(p), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(carry.h, c.h, rtol=1e-5, atol=1e-6)


def test_tbptt_stops_the_gradient_at_window_edges():
  cell, loss_fn, stream, params = _tbptt_problem()
  carry0 = cell.initial_carry(params, (3,))
  first = jax.tree.map(lambda a: a[:, :8], stream)
  second = jax.tree.map(lambda a: a[:, 8:16], stream)

  def through_edge(p):  # the full-BPTT gradient of the second window's loss
    _, c = loss_fn(p, carry0, first)
    return loss_fn(p, c, second)[0]

  _, c1 = loss_fn(params, carry0, first)
  truncated = jax.grad(lambda p: loss_fn(p, c1, second)[0])(params)
  full = jax.grad(through_edge)(params)
  # the two differ, so the check below can tell them apart
  assert float(jnp.max(jnp.abs(full.w_hh - truncated.w_hh))) > 1e-4

  # SGD(1) over the stream [first, second] with the first window's loss weighted by 0:
  # the first update is zero, the second is -truncated (not -full)
  def weighted(p, c, b):
    loss, c = loss_fn(p, c, b)
    return b["weight"][0, 0] * loss, c

  both = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=1), first, second)
  both["weight"] = jnp.concatenate([jnp.zeros((3, 8)), jnp.ones((3, 8))], axis=1)
  sgd = optax.sgd(1.0)
  step = train.make_tbptt_step(weighted, sgd, window=8, max_grad_norm=None)
  state, _, _ = step(train.TrainState.create(params, sgd), carry0, both)
  np.testing.assert_allclose(state.params.w_hh, params.w_hh - truncated.w_hh, rtol=1e-5, atol=1e-6)

  # and no gradient reaches the initial carry through the step
  def final_param_sum(c0):
    s, _, _ = train.make_tbptt_step(loss_fn, sgd, window=8, jit=False)(
      train.TrainState.create(params, sgd), c0, stream
    )
    return jnp.sum(s.params.w_hh)

  g0 = jax.grad(final_param_sum)(carry0)
  assert float(jnp.max(jnp.abs(g0.h))) == 0.0


def test_split_windows_and_bad_arguments():
  xs = jnp.arange(2 * 12 * 1, dtype=jnp.float32).reshape(2, 12, 1)
  w = train.split_windows(xs, 4)
  assert w.shape == (3, 2, 4, 1)
  np.testing.assert_array_equal(w[1], xs[:, 4:8])
  with pytest.raises(ValueError, match="window=5 does not divide the stream length 12"):
    train.split_windows(xs, 5)
  with pytest.raises(ValueError, match="window=0"):
    train.make_tbptt_step(lambda p, c, b: (0.0, c), optax.sgd(1.0), window=0)
  with pytest.raises(ValueError, match="max_grad_norm=-1"):
    train.make_train_step(lambda p, b: 0.0, optax.sgd(1.0), max_grad_norm=-1)
  with pytest.raises(ValueError, match="optax.GradientTransformation"):
    train.make_train_step(lambda p, b: 0.0, "adam")
  with pytest.raises(ValueError, match="num_steps=-3"):
    loop.fit(lambda s, b: (s, {}), 0, lambda i: i, num_steps=-3)
  with pytest.raises(ValueError, match="checkpoint_every=0: expected a positive int"):
    loop.fit(lambda s, b: (s, {}), 0, lambda i: i, num_steps=3, checkpoint_every=0)


def _same_bits(a, b):
  return all(np.array_equal(x, y) for x, y in zip(_state_bits(a), _state_bits(b), strict=True))


def test_nonfinite_steps_are_skipped_in_graph_and_counted():
  cell, loss_fn, batch = _regression(jaxrnn.elman(4))
  bad = {**batch, "y": batch["y"].at[3].set(jnp.nan)}
  opt = optax.sgd(0.1, momentum=0.9)
  plain = train.make_train_step(loss_fn, opt)
  donating = train.make_train_step(loss_fn, opt, donate=True)
  # a fresh state's counters are separate buffers, so all of it can be donated
  one, _ = donating(train.TrainState.create(cell.init(jax.random.key(0), 3), opt), batch)
  kept = jax.tree.map(np.array, one)  # a host copy: `one` is donated below
  skipped, m = donating(one, bad)
  assert bool(m["nonfinite"]) and int(m["skipped"]) == 1 and int(m["first_nonfinite"]) == 1
  assert (int(skipped.step), int(skipped.skipped), int(skipped.first_nonfinite)) == (2, 1, 1)
  assert _same_bits((skipped.params, skipped.opt_state), (kept.params, kept.opt_state))
  after, m = donating(skipped, batch)  # training goes on from the kept state
  expected, _ = plain(jax.tree.map(jnp.asarray, kept), batch)
  assert not bool(m["nonfinite"]) and (int(after.step), int(after.skipped)) == (3, 1)
  for a, b in zip(_state_bits(after.params), _state_bits(expected.params), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)

  # TBPTT: the bad window is skipped and passes its incoming carry on, so the run equals
  # window 0, then window 2 from window 0's carry
  cell, tb_loss, stream, params = _tbptt_problem()
  stream = {**stream, "y": stream["y"].at[:, 9].set(jnp.inf)}
  sgd = optax.sgd(0.5)
  step = train.make_tbptt_step(tb_loss, sgd, window=8, max_grad_norm=None)
  carry0 = cell.initial_carry(params, (3,))
  state, carry, m = step(train.TrainState.create(params, sgd), carry0, stream)
  assert m["nonfinite"].tolist() == [False, True, False] and m["skipped"].tolist() == [0, 1, 1]
  windows = [jax.tree.map(lambda a, w=w: a[:, 8 * w : 8 * (w + 1)], stream) for w in (0, 2)]
  ref, c, _ = step(train.TrainState.create(params, sgd), carry0, windows[0])
  ref, c, _ = step(ref, c, windows[1])
  np.testing.assert_allclose(state.params.w_hh, ref.params.w_hh, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(carry.h, c.h, rtol=1e-6, atol=1e-7)
  assert (int(state.step), int(state.first_nonfinite)) == (3, 1)


def test_fit_on_nonfinite_raises_or_skips_and_keeps_the_last_checkpoint(
  tmp_path, capsys, optax_promotion
):
  good = train_worker.batch_fn
  bad = lambda i: {**good(i), "y": jnp.full(8, jnp.nan)} if i == 5 else good(i)  # noqa: E731
  args = dict(num_steps=8, checkpoint_every=4, log_every=2, progress=True, keep=2)
  with pytest.raises(FloatingPointError, match=r"step 5: the loss, a gradient or the update"):
    loop.fit(
      train_worker.STEP, train_worker.initial_state(), bad, checkpoint_dir=tmp_path / "r",
      metrics_path=tmp_path / "r.jsonl", **args,
    )  # fmt: skip
  assert checkpoint.all_steps(tmp_path / "r") == [4]  # nothing written after the bad step
  lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
  assert [r["step"] for r in lines] == [2, 4]
  four = loop.fit(train_worker.STEP, train_worker.initial_state(), good, num_steps=4)
  restored, _ = checkpoint.restore(tmp_path / "r", train_worker.initial_state())
  assert _same_bits(restored, four)  # the last good checkpoint, intact

  state = loop.fit(
    train_worker.STEP, train_worker.initial_state(), bad, on_nonfinite="skip",
    metrics_path=tmp_path / "s.jsonl", **args,
  )  # fmt: skip
  lines = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
  assert [(r["step"], r["skipped"], r["first_nonfinite"]) for r in lines] == [
    (2, 0, -1), (4, 0, -1), (6, 1, 5), (8, 1, 5),
  ]  # fmt: skip
  assert (int(state.step), int(state.skipped)) == (8, 1)
  assert all(np.isfinite(x).all() for x in _state_bits(state.params))
  # tqdm with disable=None: silent when stderr is not a terminal (here, pytest's capture),
  # while the JSONL file above holds every line
  assert capsys.readouterr().err == ""
  with pytest.raises(ValueError, match="on_nonfinite='ignore': expected 'raise' or 'skip'"):
    loop.fit(train_worker.STEP, four, good, num_steps=1, on_nonfinite="ignore")


def _state_bits(state):
  return [np.asarray(x) for x in jax.tree.leaves(state)]


def test_fit_is_deterministic_and_logs_jsonl(tmp_path, optax_promotion):
  step = train_worker.STEP  # max_grad_norm=1.0, compiled once
  runs = []
  for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
    path = tmp_path / f"{name}.jsonl"
    state = loop.fit(
      step,
      train_worker.initial_state(),
      lambda i, seed=seed: train_worker.batch_fn(i, seed=seed),
      num_steps=12,
      metrics_path=path,
      log_every=4,
      eval_fn=lambda s: {"mse": train_worker.loss_fn(s.params, train_worker.batch_fn(10**6))},
      progress=False,
    )
    records = [json.loads(line) for line in path.read_text().splitlines()]
    runs.append((_state_bits(state), records))
  (a, rec_a), (b, rec_b), (c, _) = runs
  assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
  assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
  train_a = [r for r in rec_a if r["split"] == "train"]
  assert [r["step"] for r in train_a] == [4, 8, 12]
  assert [r["loss"] for r in train_a] == [r["loss"] for r in rec_b if r["split"] == "train"]
  assert all(r["examples_per_second"] > 0 for r in train_a)
  (ev,) = [r for r in rec_a if r["split"] == "eval"]
  assert ev["step"] == 12 and ev["mse"] > 0


def test_fit_throughput_against_the_tests_own_clock(tmp_path, optax_promotion):
  """examples_per_second, bounded by numbers fit does not compute: the examples counted here
  (8 per batch, 4 steps per line) and the time spent (at least the batch_fn sleeps, at most the
  test's wall clock)."""
  step = train_worker.STEP  # max_grad_norm=1.0, compiled once
  sleep, counted = 0.02, []

  def batch_fn(i):
    time.sleep(sleep)
    batch = train_worker.batch_fn(i)
    counted.append(int(batch["x"].shape[0]))
    return batch

  path = tmp_path / "m.jsonl"
  started = time.perf_counter()
  loop.fit(
    step,
    train_worker.initial_state(),
    batch_fn,
    num_steps=8,
    metrics_path=path,
    log_every=4,
    progress=False,
  )
  wall = time.perf_counter() - started
  records = [json.loads(line) for line in path.read_text().splitlines()]
  assert counted == [8] * 8
  examples = [sum(counted[:4]), sum(counted[4:])]  # per line, counted here
  rates = [r["examples_per_second"] for r in records]
  assert len(rates) == 2
  for n, rate in zip(examples, rates, strict=True):
    assert rate <= n / (4 * sleep)  # each line spans at least 4 sleeps
  assert sum(n / rate for n, rate in zip(examples, rates, strict=True)) <= wall


def test_fit_resumes_in_process(tmp_path, optax_promotion):
  straight = train_worker.run(str(tmp_path / "straight"), 20)
  train_worker.run(str(tmp_path / "split"), 10)  # stops at 10 (a checkpoint)
  resumed = train_worker.run(str(tmp_path / "split"), 20)
  assert straight.keys() == resumed.keys()
  for k in straight:
    assert np.array_equal(straight[k], resumed[k]), k
  lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(x)["step"] for x in lines] == list(range(1, 21))


def test_sigterm_saves_and_a_sigkill_resumes_bit_identically(tmp_path, optax_promotion):
  """Faults at deterministic points (the worker's hooks, not timings): a SIGTERM while loading
  batch 13 checkpoints step 14 and raises Preempted (exit status 143); a SIGKILL of a fresh
  process while it loads batch 25 leaves the step 20 checkpoint; the run started again ends
  bit-identical to one never interrupted."""
  num_steps = 30
  reference = train_worker.run(str(tmp_path / "reference"), num_steps)
  run_dir = tmp_path / "faults"
  run_dir.mkdir()
  ckpt = run_dir / "ckpt"
  with pytest.raises(loop.Preempted) as preempted:
    train_worker.run(str(run_dir), num_steps, train_worker.signal_at(13, signal.SIGTERM))
  assert (preempted.value.step, preempted.value.code) == (14, 128 + signal.SIGTERM)
  assert checkpoint.all_steps(ckpt) == [10, 14]
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # fit put the handler back

  cmd = [sys.executable, os.path.join(HERE, "train_worker.py"), str(run_dir), str(num_steps)]
  killed = subprocess.run(
    cmd + ["--kill-at", "25"], env=SUBPROCESS_ENV, capture_output=True, timeout=300
  )
  assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
  assert checkpoint.all_steps(ckpt) == [14, 20]
  lines = (run_dir / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(x)["step"] for x in lines] == list(range(1, 26))  # 21..25 get redone

  resumed = train_worker.run(str(run_dir), num_steps)
  assert resumed.keys() == reference.keys()
  for k in reference:
    assert np.array_equal(reference[k], resumed[k]), k  # bit for bit
  lines = (run_dir / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(x)["step"] for x in lines] == list(range(1, num_steps + 1))


def test_fit_refuses_a_record_whose_step_disagrees_with_its_directory(tmp_path, optax_promotion):
  """Why 6: a record edited from step 10 to 12 made fit resume at the wrong step, with params
  that differ from an uninterrupted run's; now fit raises before any step (the true record
  resumes exactly: test_fit_resumes_in_process)."""
  train_worker.run(str(tmp_path / "split"), 10)  # stops at 10 (a checkpoint)
  record = tmp_path / "split" / "ckpt" / "10" / "meta" / "metadata"
  text = record.read_text()
  record.write_text(text.replace('"step": 10', '"step": 12'))
  with pytest.raises(ValueError, match=r"step 10: its record says step 12; expected 10"):
    train_worker.run(str(tmp_path / "split"), 20)
  assert json.loads(record.read_text())["step"] == 12  # nothing was saved over it
  lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(x)["step"] for x in lines] == list(range(1, 11))
