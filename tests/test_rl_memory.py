"""The recurrent PPO experiment: its quick run, its GAE and its tasks against plain loops."""

import json
import math

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import user_cell

from experiments import harness, rl_envs, rl_memory


@pytest.fixture(autouse=True)
def _standard_promotion():
  # optax.adam computes decay ** count (float ** int32), which strict promotion rejects.
  with jax.numpy_dtype_promotion("standard"):
    yield


def _numbers(x, path=""):
  """Every number in a JSON record, with where it is (NaN and inf arrive as strings)."""
  if isinstance(x, dict):
    return [n for k, v in x.items() for n in _numbers(v, f"{path}.{k}")]
  if isinstance(x, list):
    return [n for i, v in enumerate(x) for n in _numbers(v, f"{path}[{i}]")]
  if isinstance(x, str) and x in ("nan", "inf", "-inf"):
    return [(path, float(x))]
  return [(path, float(x))] if isinstance(x, int | float) and not isinstance(x, bool) else []


def test_quick_run_recomputes_exactly_and_beats_a_random_policy(tmp_path):
  rec = rl_memory.main(["--quick", "--out", str(tmp_path), "--no-progress", "--no-checkpoints"])
  on_disk = json.loads((tmp_path / "rl_memory" / "rl_memory.json").read_text())
  assert on_disk == json.loads(json.dumps(rec)) and on_disk["quick"] is True
  rows = on_disk["results"]["tasks"]["CueRecall-2"]
  assert set(rows) == {"random", "gru"}
  gru, updates = rows["gru"], on_disk["flags"]["updates"]
  # the recomputation rule at every update: max |recomputed - collected| <= max(1e-5, 1e-5 scale)
  diff, tol = (
    np.asarray(gru["logit_diff_per_update"]),
    np.asarray(gru["logit_tolerance_per_update"]),
  )
  assert diff.shape == tol.shape == (updates,) and np.all(tol >= 1e-5)
  assert np.all(diff <= tol) and gru["max_logit_diff"] == diff.max()
  # PPO learned the cue, where a uniform random policy scores (2 - 4) / 4 on average
  assert abs(rows["random"]["final_mean"] - (-0.5)) < 0.1
  assert gru["final_mean"] > rows["random"]["final_mean"] + 0.5
  for key in ("final_mean", "final_std", "final_per_seed", "curves", "params", "env_steps_per_s"):
    assert key in gru
  assert np.asarray(gru["curves"]).shape == (1, updates) and gru["params"] > 0
  bad = [(p, v) for p, v in _numbers(on_disk) if not math.isfinite(v)]
  assert not bad, bad
  assert [c["pass"] for c in on_disk["checks"]] == [True] and on_disk["passed"]
  assert (tmp_path / "rl_memory" / "rl_memory.md").read_text().count("\n") == 4


@pytest.mark.parametrize("row", ["user's cell", "ff"])  # a kind: the quick run's GRU
def test_the_policys_apply_is_its_step_loop_with_resets(row):
  # what PPO's training pass relies on, for a user's Cell, a kind and the feed-forward policy
  pol = rl_memory.policy(user_cell.leaky(6) if row == "user's cell" else row, 6)
  params = pol.init(jax.random.key(0), obs_size=3, num_actions=4)
  T, E = 9, 3
  obs = jax.random.normal(jax.random.key(1), (T, E, 3))
  resets = np.zeros((T, E), bool)
  resets[[0, 4], 0] = resets[7, 2] = True
  start = jax.tree.map(lambda a: a + 0.1, pol.init_state(params, E))  # a carried-over state
  state, logits, values, step = start, [], [], jax.jit(pol.step)
  for t in range(T):
    state, (lg, v) = step(params, state, obs[t], jnp.asarray(resets[t]))
    logits.append(lg)
    values.append(v)
  got_logits, got_values = jax.jit(pol.apply)(params, start, obs, jnp.asarray(resets))
  assert got_logits.shape == (T, E, 4) and got_values.shape == (T, E)
  np.testing.assert_allclose(got_logits, jnp.stack(logits), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got_values, jnp.stack(values), rtol=1e-5, atol=1e-6)


def test_spec_flags_and_bad_sizes():
  spec = rl_memory.SPEC
  full, quick = harness.parse(spec, []), harness.parse(spec, ["--quick"])
  assert full.cells == list(rl_memory.ROWS) and full.tasks == list(rl_memory.TASKS)
  for dest, value in spec.quick.items():
    assert getattr(quick, dest) == value
  with pytest.raises(ValueError, match="--minibatches 3: expected a divisor of --envs 32"):
    rl_memory.config(harness.parse(spec, ["--minibatches", "3"]))
  with pytest.raises(ValueError, match="task 'Pong'"):
    rl_envs.make_task("Pong")


def _gae_loop(rewards, values, last_value, final_values, terminated, truncated, gamma, lam):
  """GAE as a plain Python loop: bootstrap from the final observation where truncated only."""
  T, E = rewards.shape
  adv = np.zeros((T, E))
  for e in range(E):
    running = 0.0
    for t in reversed(range(T)):
      if terminated[t, e]:
        next_value = 0.0
      elif truncated[t, e]:
        next_value = final_values[t, e]
      else:
        next_value = last_value[e] if t == T - 1 else values[t + 1, e]
      delta = rewards[t, e] + gamma * next_value - values[t, e]
      ended = terminated[t, e] or truncated[t, e]
      running = delta + gamma * lam * (0.0 if ended else running)
      adv[t, e] = running
  return adv


def test_gae_against_a_python_loop(rng):
  T, E = 7, 3
  rewards, values, finals = (rng.normal(size=(T, E)).astype(np.float32) for _ in range(3))
  last = rng.normal(size=E).astype(np.float32)
  terminated, truncated = np.zeros((T, E), bool), np.zeros((T, E), bool)
  terminated[2, 0] = truncated[4, 0] = True  # env 0: a termination, then a truncation
  truncated[6, 1] = True  # env 1: truncated at the last step (bootstraps from its final value)
  terminated[0, 2] = truncated[0, 2] = True  # both flags: terminated wins, no bootstrap
  args = (rewards, values, last, finals, terminated, truncated, 0.9, 0.8)
  adv, targets = jax.jit(rl_memory.gae, static_argnums=(6, 7))(
    *map(jnp.asarray, args[:6]), 0.9, 0.8
  )
  expected = _gae_loop(*args)
  np.testing.assert_allclose(adv, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(targets, expected + values, rtol=1e-5, atol=1e-6)
  # a truncation is not a termination: the final value enters the advantage
  assert abs(expected[4, 0] - (rewards[4, 0] + 0.9 * finals[4, 0] - values[4, 0])) < 1e-6


def test_position_only_cartpole_is_gymnax_cartpole_without_velocities():
  env, params = gymnax.make("CartPole-v1")
  po = rl_envs.make_task("PositionOnlyCartPole")
  assert po.obs_size == 2 and po.return_range == (0.0, 500.0) and po.truncates
  key = jax.random.key(0)
  obs, state = po.env.reset(key, params)
  full, full_state = env.reset(key, params)
  np.testing.assert_array_equal(obs, [state.x, state.theta])
  np.testing.assert_array_equal(obs, full[jnp.array([0, 2])])
  step, full_step = po.env.step, env.step  # one compiled gymnax step serves both
  ended = False
  for t in range(15):  # a constant push: the pole falls, the episode ends and auto-resets
    k = jax.random.fold_in(key, t)
    obs, state, reward, term, trunc, info = step(k, state, 1, params)
    full, full_state, full_reward, full_term, full_trunc, full_info = full_step(
      k, full_state, 1, params
    )
    assert obs.shape == (2,) and info["final_observation"].shape == (2,)
    np.testing.assert_array_equal(obs, [state.x, state.theta])
    np.testing.assert_array_equal(obs, full[jnp.array([0, 2])])
    np.testing.assert_array_equal(info["final_observation"], full_info["final_observation"][::2])
    assert (reward, term, trunc) == (full_reward, full_term, full_trunc)
    ended |= bool(term)
  assert ended
  assert po.normalise(jnp.array([0.0, 250.0, 500.0])).tolist() == [-1.0, 0.0, 1.0]


def test_cue_recall_rewards_the_cue_at_the_recall_step_only():
  task = rl_envs.make_task("CueRecall-3")
  env, params = task.env, task.env_params
  obs, state = env.reset(jax.random.key(1), params)
  cue = int(state.cue)
  assert obs[:4].tolist() == jax.nn.one_hot(cue, 4).tolist() and float(obs[4]) == 0.0
  for t in range(3):  # wrong actions before the recall step cost nothing
    obs, state, reward, term, trunc, _ = env.step(jax.random.key(t), state, (cue + 1) % 4, params)
    assert float(reward) == 0.0 and not term and float(obs[:4].sum()) == 0.0
    assert float(obs[4]) == (1.0 if t == 2 else 0.0)
  _, state, reward, term, trunc, _ = env.step(jax.random.key(9), state, cue, params)
  assert float(reward) == 1.0 and bool(term) and not bool(trunc) and int(state.time) == 0
  with pytest.raises(ValueError, match="CueRecall-33"):
    rl_envs.make_task("CueRecall-33")
