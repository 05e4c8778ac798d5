"""Memory in reinforcement learning: a recurrent PPO in pure JAX and a table of cells on POMDPs.

PPO (clipped objective, GAE, Adam with global-norm clipping) in purejaxrl's structure:
``--envs`` vmapped gymnax environments, a `jax.lax.scan` rollout of ``--rollout`` steps
that carries the policy's recurrent state (collected with ``jaxrnn.stream(model)``'s
step, the previous step's ``done`` as its ``reset``), then ``--epochs`` epochs over
``--minibatches`` minibatches of whole sequences (the environments split, each row
re-run from the state its rollout started in with ``model.apply(params, obs,
carry=start, resets=dones)``), the next rollout going on from the carry. The actor-critic
is a dense embedding (relu), the memory (``--hidden`` units: any ``jaxrnn.rnn_layers``
kind, or a user's `jaxrnn.Cell` through `policy`) and two heads (one dense relu layer
each); ``ff`` puts a dense relu layer where the memory was: the memoryless reference.
A whole training run, ``--updates`` updates, is one jitted function, vmapped over
``--seeds`` seeds (one compiled call a row and task).

Exactness, at every update: the training pass's re-run of the first minibatch of the first
epoch (before any gradient step; the logits the loss itself computes) is compared with the
logits the policy acted on; the largest
``max |recomputed - collected|`` is recorded, and ``--quick`` raises if one update's
exceeds ``max(1e-5, 1e-5 * max |collected|)``. GAE bootstraps through ``truncated``
(from the value of ``info["final_observation"]``, one more step of the memory) and
not through ``terminated``; an episode ends on either.

Tasks (`experiments.rl_envs`): MemoryChain (gymnax's bsuite port) at two memory lengths,
Position Only CartPole, and a cue-recall task, each return normalised to [-1, 1]. Per
row and task: the final mean normalised return (the episodes that ended in the last
tenth of the updates) over the seeds with its spread, environment steps per second of
the compiled run (compile time apart), parameters; a uniform random policy is measured
in the same run. Checks: every recurrent cell beats the feed-forward reference on every
task (all four are partially observed), and the best recurrent cell reaches 0.9 on the
shorter MemoryChain. Writes ``OUT/rl_memory/rl_memory.json``, ``.png`` (a learning-curve
panel per task) and ``.md`` (the table).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrnn
from experiments import cells, harness, rl_envs

NAME = "rl_memory"
ROWS = ("gru", "lstm", "min_gru", "lru", "s5", "rg_lru", "mamba", "mlstm", "ff")
TASKS = ("MemoryChain-5", "MemoryChain-15", "PositionOnlyCartPole", "CueRecall-8")
FINAL = 0.1  # the final return: episodes ending in the last tenth of the updates


class Config(NamedTuple):
  """PPO's hyperparameters (purejaxrl's names); static inside the compiled run."""

  envs: int = 32
  rollout: int = 128
  updates: int = 40
  epochs: int = 4
  minibatches: int = 4
  lr: float = 1e-3
  gamma: float = 0.99
  gae_lambda: float = 0.95
  clip: float = 0.2
  ent_coef: float = 0.01
  vf_coef: float = 0.5
  max_grad_norm: float = 0.5


class Policy(NamedTuple):
  """A recurrent actor-critic as pure functions (time-major rollouts ``(T, E, ...)``).

  Attributes:
    init: ``init(key, obs_size, num_actions) -> params``.
    init_state: ``init_state(params, envs) -> state`` (the memory's carry; ``()``
      for the feed-forward policy).
    step: ``step(params, state, obs, reset) -> (state, (logits, value))`` on
      ``obs (E, obs_size)``, ``reset (E,)`` or None.
    apply: ``apply(params, state, obs, resets) -> (logits, value)`` on ``obs
      (T, E, obs_size)``, ``resets (T, E)``: the rollout re-run from ``state``.
  """

  init: Callable[..., Any]
  init_state: Callable[..., Any]
  step: Callable[..., Any]
  apply: Callable[..., Any]


def memory_model(row: str | jaxrnn.Cell, hidden: int) -> jaxrnn.SequenceModel | None:
  """The memory of row ``row``: a one-layer ``rnn_layers`` model, or None for ``"ff"``.

  A kind gets its library defaults and what `experiments.cells` gives it (the mLSTM's
  heads); the S5 a state as wide as ``hidden``. A `jaxrnn.Cell` is used as it is.
  """
  if isinstance(row, str) and row == "ff":
    return None
  if not isinstance(row, str):
    return jaxrnn.rnn_layers(row)
  kwargs = cells.ARGUMENTS.get(row, lambda h, t: {})(hidden, 0)
  return jaxrnn.rnn_layers(row, hidden, **kwargs, **({"state_size": hidden} if row == "s5" else {}))


def dense_init(key, n_in: int, n_out: int, scale: float) -> dict[str, jax.Array]:
  """A dense layer: normal weights of standard deviation ``scale / sqrt(n_in)``, zero bias.

  purejaxrl's gains (sqrt 2 inside, 0.01 for the actor's logits, 1 for the value) on
  a normal draw rather than its orthogonal one: the same scale, and the QR
  decomposition an orthogonal draw compiles costs ~2 s a run here.
  """
  w = jax.random.normal(key, (n_in, n_out), jnp.float32) * (scale / n_in**0.5)
  return {"w": w, "b": jnp.zeros(n_out, jnp.float32)}


def dense(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
  """``x @ w + b`` on ``x (..., n_in)``, the bias broadcast explicitly (no rank promotion)."""
  return x @ p["w"] + jnp.expand_dims(p["b"], tuple(range(x.ndim - 1)))


def policy(row: str | jaxrnn.Cell, hidden: int) -> Policy:
  """The actor-critic with the memory of ``row`` (see `memory_model`): a `Policy`.

  Example:
    >>> pol = policy("gru", 8)
    >>> params = pol.init(jax.random.key(0), obs_size=3, num_actions=2)
    >>> state = pol.init_state(params, 4)
    >>> state, (logits, value) = pol.step(params, state, jnp.ones((4, 3)), None)
    >>> logits.shape, value.shape
    ((4, 2), (4,))
    >>> pol.apply(params, state, jnp.ones((5, 4, 3)), jnp.zeros((5, 4), bool))[0].shape
    (5, 4, 2)
  """
  model = memory_model(row, hidden)
  stream = None if model is None else jaxrnn.stream(model)
  swap = lambda a: jnp.swapaxes(a, 0, 1)  # noqa: E731  (T, E, ...) <-> (E, T, ...)

  def init(key, obs_size: int, num_actions: int):
    k = jax.random.split(key, 6)
    core = dense_init(k[1], hidden, hidden, 2**0.5) if model is None else model.init(k[1], hidden)
    out = hidden if model is None else jax.eval_shape(
      lambda p: model.apply(p, jnp.zeros((1, 1, hidden)))[1], core
    ).shape[-1]  # fmt: skip
    return {
      "embed": dense_init(k[0], obs_size, hidden, 2**0.5),
      "core": core,
      "actor": [dense_init(k[2], out, hidden, 2**0.5), dense_init(k[3], hidden, num_actions, 0.01)],
      "critic": [dense_init(k[4], out, hidden, 2**0.5), dense_init(k[5], hidden, 1, 1.0)],
    }

  def heads(params, y):
    actor, critic = params["actor"], params["critic"]
    logits = dense(actor[1], jax.nn.relu(dense(actor[0], y)))
    return logits, dense(critic[1], jax.nn.relu(dense(critic[0], y)))[..., 0]

  def init_state(params, envs: int):
    return () if model is None else stream.init_state(params["core"], batch_shape=(envs,))

  def step(params, state, obs, reset):
    x = jax.nn.relu(dense(params["embed"], obs))
    if model is None:
      return state, heads(params, jax.nn.relu(dense(params["core"], x)))
    state, y = stream.step(params["core"], state, x, reset)
    return state, heads(params, y)

  def apply(params, state, obs, resets):
    x = jax.nn.relu(dense(params["embed"], obs))
    if model is None:
      return heads(params, jax.nn.relu(dense(params["core"], x)))
    _, ys = model.apply(params["core"], swap(x), state, resets=swap(resets))
    return heads(params, swap(ys))

  return Policy(init, init_state, step, apply)


class Transition(NamedTuple):
  """One rollout step of every environment, time-major once stacked by the scan."""

  obs: jax.Array
  reset: jax.Array  # the previous step's done: the reset passed with ``obs``
  action: jax.Array
  logits: jax.Array
  value: jax.Array
  reward: jax.Array  # scaled for training (Task.reward_scale)
  terminated: jax.Array
  truncated: jax.Array
  final_value: jax.Array  # the value of info["final_observation"] (used where truncated)
  episode_return: jax.Array  # the unscaled return of an episode ending here, else 0


def gae(rewards, values, last_value, final_values, terminated, truncated, gamma, lam):
  """Generalised advantage estimation over a time-major rollout; ``(advantages, targets)``.

  The next state's value is ``values[t + 1]`` (``last_value`` after the last step),
  the final observation's ``final_values[t]`` where the episode was truncated at t,
  and 0 where it terminated; the GAE sum stops at the end of every episode.

  Args:
    rewards, values, final_values: ``(T, E)`` float.
    last_value: ``(E,)``, the value of the observation after the last step.
    terminated, truncated: ``(T, E)`` bool.
    gamma, lam: the discount and GAE's lambda.

  Returns:
    ``(advantages, targets)``, both ``(T, E)``; ``targets = advantages + values``.

  Example:
    >>> r, v = jnp.ones((3, 1)), jnp.zeros((3, 1))
    >>> no = jnp.zeros((3, 1), bool)
    >>> adv, _ = gae(r, v, jnp.zeros(1), v, no.at[1].set(True), no, 0.5, 1.0)
    >>> adv[:, 0].tolist()  # the episode ends at t = 1
    [1.5, 1.0, 1.0]
  """
  next_values = jnp.concatenate([values[1:], last_value[None]])
  next_values = jnp.where(truncated, final_values, next_values)
  deltas = rewards + gamma * next_values * (1.0 - terminated) - values
  done = (terminated | truncated).astype(values.dtype)

  def back(adv, x):
    delta, d = x
    adv = delta + gamma * lam * (1.0 - d) * adv
    return adv, adv

  _, advantages = jax.lax.scan(back, jnp.zeros_like(last_value), (deltas, done), reverse=True)
  return advantages, advantages + values


def env_step(task: rl_envs.Task, pol: Policy, params, runner, key):
  """One step of every environment under the policy; ``(runner, Transition)``."""
  env_state, obs, last_done, state, running = runner
  k_act, k_env = jax.random.split(key)
  state, (logits, value) = pol.step(params, state, obs, last_done)
  action = jax.random.categorical(k_act, logits)
  keys = jax.random.split(k_env, obs.shape[0])
  out = jax.vmap(task.env.step, (0, 0, 0, None))(keys, env_state, action, task.env_params)
  next_obs, env_state, reward, terminated, truncated, info = out
  final_value = jnp.zeros_like(value)
  if task.truncates:  # the value of the observation the episode was cut at
    final_value = pol.step(params, state, info["final_observation"], None)[1][1]
  done = terminated | truncated
  running = running + reward
  ended = jnp.where(done, running, 0.0)
  step = Transition(obs, last_done, action, logits, value, reward * task.reward_scale,
                    terminated, truncated, final_value, ended)  # fmt: skip
  return (env_state, next_obs, done, state, jnp.where(done, 0.0, running)), step


def start_runner(task: rl_envs.Task, pol: Policy, cfg: Config, params, key):
  """The rollout's carry at the start: ``(env_state, obs, last_done, policy state, returns)``."""
  keys = jax.random.split(key, cfg.envs)
  obs, env_state = jax.vmap(task.env.reset, (0, None))(keys, task.env_params)
  zeros = jnp.zeros(cfg.envs)
  return (env_state, obs, zeros.astype(bool), pol.init_state(params, cfg.envs), zeros)


def collect(task: rl_envs.Task, pol: Policy, cfg: Config, params, runner, key):
  """A rollout of ``cfg.rollout`` steps: ``(runner, Transition of (T, E) leaves)``."""
  roll = lambda r, k: env_step(task, pol, params, r, k)  # noqa: E731
  return jax.lax.scan(roll, runner, jax.random.split(key, cfg.rollout))


def episode_metrics(task: rl_envs.Task, traj: Transition) -> dict[str, jax.Array]:
  """The normalised returns of the episodes that ended in ``traj`` (summed) and their count."""
  ended = traj.terminated | traj.truncated
  returns = jnp.where(ended, task.normalise(traj.episode_return), 0.0)
  return {"return_sum": jnp.sum(returns), "episodes": jnp.sum(ended)}


def uniform_policy(num_actions: int) -> Policy:
  """The random policy: uniform logits, no parameters, no state."""

  def out(obs):
    return jnp.zeros((*obs.shape[:-1], num_actions)), jnp.zeros(obs.shape[:-1])

  def step(params, state, obs, reset):
    return state, out(obs)

  return Policy(lambda *a: {}, lambda params, envs: (), step, lambda p, s, obs, r: out(obs))


def make_random(task: rl_envs.Task, cfg: Config) -> Callable:
  """``random(key) -> metrics``: the uniform random policy for as many steps as `make_train`."""
  pol = uniform_policy(task.num_actions)

  def random(key):
    k_env, k_run = jax.random.split(key)

    def update(runner, key):
      runner, traj = collect(task, pol, cfg, {}, runner, key)
      return runner, episode_metrics(task, traj)

    runner = start_runner(task, pol, cfg, {}, k_env)
    return jax.lax.scan(update, runner, jax.random.split(k_run, cfg.updates))[1]

  return random


def ppo_loss(pol: Policy, cfg: Config, params, start, traj: Transition, adv, targets):
  """PPO's clipped loss on whole sequences re-run from ``start``; ``(loss, recomputed logits)``."""
  logits, values = pol.apply(params, start, traj.obs, traj.reset)
  pick = lambda lg: jnp.take_along_axis(  # noqa: E731
    jax.nn.log_softmax(lg), traj.action[..., None], axis=-1
  )[..., 0]
  ratio = jnp.exp(pick(logits) - pick(traj.logits))
  adv = (adv - adv.mean()) / (adv.std() + 1e-8)
  clipped = jnp.clip(ratio, 1.0 - cfg.clip, 1.0 + cfg.clip)
  actor = -jnp.minimum(ratio * adv, clipped * adv).mean()
  v_clip = traj.value + jnp.clip(values - traj.value, -cfg.clip, cfg.clip)
  critic = 0.5 * jnp.maximum((values - targets) ** 2, (v_clip - targets) ** 2).mean()
  entropy = -jnp.sum(jax.nn.softmax(logits) * jax.nn.log_softmax(logits), axis=-1).mean()
  return actor + cfg.vf_coef * critic - cfg.ent_coef * entropy, logits


def learn(pol, cfg, opt, params, opt_state, start, traj, adv, targets, key):
  """``cfg.epochs`` epochs of minibatches of whole sequences (environments permuted).

  Returns ``(params, opt_state, (diff, scale))``: ``diff`` is ``max |recomputed -
  collected|`` over the logits of the first minibatch of the first epoch (the
  training pass's own re-run, before any gradient step), ``scale`` ``max |collected|``.
  """
  grad_fn = jax.grad(lambda p, *a: ppo_loss(pol, cfg, p, *a), has_aux=True)
  rows = cfg.envs // cfg.minibatches

  def minibatch(carry, idx):
    params, opt_state = carry
    take = lambda a: a[:, idx]  # noqa: E731  time-major: environments on axis 1
    mb_traj, mb_start = jax.tree.map(take, traj), jax.tree.map(lambda a: a[idx], start)
    grads, logits = grad_fn(params, mb_start, mb_traj, take(adv), take(targets))
    updates, opt_state = opt.update(grads, opt_state, params)
    check = (jnp.max(jnp.abs(logits - mb_traj.logits)), jnp.max(jnp.abs(mb_traj.logits)))
    return (optax.apply_updates(params, updates), opt_state), check

  def epoch(carry, key):
    order = jax.random.permutation(key, cfg.envs).reshape(cfg.minibatches, rows)
    return jax.lax.scan(minibatch, carry, order)

  keys = jax.random.split(key, cfg.epochs)
  (params, opt_state), (diff, scale) = jax.lax.scan(epoch, (params, opt_state), keys)
  return params, opt_state, (diff[0, 0], scale[0, 0])


def make_train(task: rl_envs.Task, pol: Policy, cfg: Config) -> Callable:
  """``train(key) -> metrics``: one whole PPO run, pure and jittable (vmap it over keys).

  ``metrics`` holds per-update arrays: ``return_sum`` and ``episodes`` (normalised
  returns of the episodes ending in the rollout, and their count), ``logit_diff``
  and ``logit_scale`` (see `learn`).
  """
  opt = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.adam(cfg.lr, eps=1e-5))

  def update(carry, key):
    params, opt_state, runner = carry
    k_roll, k_learn = jax.random.split(key)
    start = runner[3]
    runner, traj = collect(task, pol, cfg, params, runner, k_roll)
    _, (_, last_value) = pol.step(params, runner[3], runner[1], runner[2])
    adv, targets = gae(traj.reward, traj.value, last_value, traj.final_value, traj.terminated,
                       traj.truncated, cfg.gamma, cfg.gae_lambda)  # fmt: skip
    params, opt_state, (diff, scale) = learn(
      pol, cfg, opt, params, opt_state, start, traj, adv, targets, k_learn
    )
    metrics = episode_metrics(task, traj) | {"logit_diff": diff, "logit_scale": scale}
    return (params, opt_state, runner), metrics

  def train(key):
    k_init, k_env, k_run = jax.random.split(key, 3)
    params = pol.init(k_init, task.obs_size, task.num_actions)
    carry = (params, opt.init(params), start_runner(task, pol, cfg, params, k_env))
    _, metrics = jax.lax.scan(update, carry, jax.random.split(k_run, cfg.updates))
    return metrics

  return train


def summarise(metrics: dict[str, np.ndarray], updates: int) -> dict[str, Any]:
  """Curves and the final return from per-seed, per-update ``return_sum`` and ``episodes``."""
  sums, counts = np.asarray(metrics["return_sum"]), np.asarray(metrics["episodes"])
  with np.errstate(invalid="ignore", divide="ignore"):
    curves = sums / counts  # (seeds, updates); NaN where no episode ended
  last = max(1, round(FINAL * updates))
  final = sums[:, -last:].sum(1) / np.maximum(counts[:, -last:].sum(1), 1)
  return {
    "final_mean": float(final.mean()),
    "final_std": float(final.std()),
    "final_per_seed": final.tolist(),
    "curves": curves.tolist(),
  }


def timed_run(fn: Callable, keys: jax.Array) -> tuple[dict[str, np.ndarray], float, float]:
  """``jit(vmap(fn))`` over the seeds' keys: ``(metrics, compile seconds, run seconds)``."""
  t0 = time.perf_counter()
  compiled = jax.jit(jax.vmap(fn)).lower(keys).compile()
  t1 = time.perf_counter()
  metrics = jax.tree.map(np.asarray, jax.block_until_ready(compiled(keys)))
  return metrics, t1 - t0, time.perf_counter() - t1


def run_random(task: rl_envs.Task, cfg: Config, keys: jax.Array) -> dict[str, Any]:
  """The uniform random policy's returns on ``task`` over the seeds (as `summarise`)."""
  return summarise(timed_run(make_random(task, cfg), keys)[0], cfg.updates)


def run_row(task: rl_envs.Task, row: str, cfg: Config, keys: jax.Array, args) -> dict[str, Any]:
  """Trains ``row`` on ``task`` over the seeds; its numbers (and the recomputation rule's)."""
  pol = policy(row, args.hidden)
  metrics, compile_s, run_s = timed_run(make_train(task, pol, cfg), keys)
  params = jax.eval_shape(lambda k: pol.init(k, task.obs_size, task.num_actions), keys[0])
  diff, scale = metrics["logit_diff"].max(0), metrics["logit_scale"].max(0).astype(np.float64)
  tolerance = np.maximum(1e-5, 1e-5 * scale)
  steps = len(keys) * cfg.updates * cfg.envs * cfg.rollout
  out = summarise(metrics, cfg.updates) | {
    "params": sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)),
    "env_steps_per_s": steps / run_s,
    "compile_s": compile_s,
    "run_s": run_s,
    "max_logit_diff": float(diff.max()),
    "logit_diff_per_update": diff.tolist(),
    "logit_tolerance_per_update": tolerance.tolist(),
    "recomputation_ok": bool(np.all(diff <= tolerance)),
  }
  print(f"  {row:8} return {out['final_mean']:+.3f} +- {out['final_std']:.3f}  "
        f"{out['env_steps_per_s']:,.0f} steps/s (compile {compile_s:.0f} s)  "
        f"max logit diff {out['max_logit_diff']:.2g}", flush=True)  # fmt: skip
  if args.quick and not out["recomputation_ok"]:
    bad = int(np.argmax(diff > tolerance))
    raise AssertionError(
      f"{row} on {task.name}, update {bad}: recomputed logits differ from the collected ones "
      f"by {diff[bad]:.3g} > {tolerance[bad]:.3g} = max(1e-5, 1e-5 * {scale[bad]:.3g})"
    )
  return out


def cached(args, task: str, row: str, cfg: Config, compute: Callable[[], dict]) -> dict:
  """``compute()``, or the row a killed run finished with the same settings (re-read).

  Each finished row is written under ``OUT/NAME/checkpoints/`` (git-ignored, named by
  every setting, `harness.run_paths`), so a re-run resumes; not with ``--no-checkpoints``.
  """
  settings = {"config": cfg._asdict(), "hidden": args.hidden, "seeds": args.seeds}
  folder, _ = harness.run_paths(args, NAME, f"{task}-{row}", settings)
  path = None if folder is None else folder + ".json"
  if path is not None and os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  out = compute()
  if path is not None:
    harness.write_json(path, harness.clean(out))
  return out


def config(args) -> Config:
  """The run's `Config` from the flags.

  Raises:
    ValueError: if ``--minibatches`` does not divide ``--envs``.
  """
  if args.envs % args.minibatches:
    raise ValueError(f"--minibatches {args.minibatches}: expected a divisor of --envs {args.envs}")
  names = ("envs", "rollout", "updates", "epochs", "minibatches", "lr")
  return Config(**{n: getattr(args, n) for n in names})


def table(results: dict[str, Any], rows: list[str]) -> list[str]:
  """The markdown table: final normalised return (mean +- std over seeds) per task, speed, size."""
  tasks = list(results["tasks"])
  head = ("policy", *tasks, "env steps/s (median over tasks)", f"params ({tasks[0]})")
  body = []
  for row in ["random", *rows]:
    cells_ = [results["tasks"][t][row] for t in tasks]
    body.append(
      (row, *(f"{c['final_mean']:+.2f} ± {c['final_std']:.2f}" for c in cells_))
      + (
        (round(float(np.median([c["env_steps_per_s"] for c in cells_]))), cells_[0]["params"])
        if row != "random"
        else ("-", "-")
      )  # fmt: skip
    )
  return harness.md_table(head, body, "l" + "r" * (len(head) - 1))


def run(args) -> dict:
  cfg = config(args)
  keys = jax.random.split(jax.random.key(args.seed), args.seeds)
  print(
    f"Recurrent PPO: {args.seeds} seeds, {cfg.envs} envs x {cfg.rollout} steps x {cfg.updates} "
    f"updates, {cfg.epochs} epochs x {cfg.minibatches} minibatches, H={args.hidden}, lr {cfg.lr}."
  )
  results: dict[str, Any] = {"config": cfg._asdict(), "hidden": args.hidden, "tasks": {}}
  for name in args.tasks:
    task = rl_envs.make_task(name)
    print(f"{name}: final normalised return (last {FINAL:.0%} of updates)", flush=True)
    rows = {"random": cached(args, name, "random", cfg, partial(run_random, task, cfg, keys))}
    print(f"  {'random':8} return {rows['random']['final_mean']:+.3f}", flush=True)
    for row in args.cells:
      rows[row] = cached(args, name, row, cfg, partial(run_row, task, row, cfg, keys, args))
    results["tasks"][name] = rows
  results["table"] = table(results, list(args.cells))
  print("\n".join(results["table"]))
  folder = os.path.join(args.out, NAME)
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, f"{NAME}.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(results["table"]) + "\n")
  return results


def closest_to_tolerance(results: dict[str, Any]) -> tuple[float, str, str, int]:
  """``(diff / tolerance, task, row, update)`` of the update closest to (or past) its tolerance."""
  found = (-1.0, "", "", 0)
  for task, rows in results["tasks"].items():
    for row, v in rows.items():
      if "logit_diff_per_update" in v:  # not the random policy
        ratios = np.asarray(v["logit_diff_per_update"]) / v["logit_tolerance_per_update"]
        found = max(found, (float(ratios.max()), task, row, int(ratios.argmax())))
  return found


def checks(results, args) -> list[dict]:
  """The recomputation rule; every recurrent row above ``ff`` per task; MemoryChain's best."""
  ratio, task, row, at = closest_to_tolerance(results)
  v = results["tasks"][task][row]
  largest = max(r["max_logit_diff"] for rows in results["tasks"].values() for r in rows.values()
                if "max_logit_diff" in r)  # fmt: skip
  out = [
    harness.check(
      "recomputed logits = collected, every update: the one closest to its tolerance",
      v["logit_diff_per_update"][at], v["logit_tolerance_per_update"][at],
      "issue 27; docs/rl.md", ratio <= 1.0,
      "each update: max |diff| <= max(1e-5, 1e-5 * max |logits|)",
      f"{row} on {task}, update {at}; the largest |diff| of all runs: {harness.fmt(largest)}",
    )
  ]  # fmt: skip
  recurrent = [r for r in args.cells if r != "ff"]
  for task, rows in results["tasks"].items():
    if "ff" not in rows or not recurrent:
      continue
    low = min(recurrent, key=lambda r: rows[r]["final_mean"])
    out.append(harness.check(
      f"{task}: every recurrent cell beats feed-forward (the lowest, {low})",
      rows[low]["final_mean"], rows["ff"]["final_mean"], "POPGym (Morad et al. 2023)",
      rows[low]["final_mean"] > rows["ff"]["final_mean"], "lowest recurrent mean > ff mean",
      ", ".join(f"{r} {rows[r]['final_mean']:+.2f}" for r in recurrent),
    ))  # fmt: skip
  chains = sorted(
    (int(t.split("-")[1]), t) for t in results["tasks"] if t.startswith("MemoryChain")
  )
  if chains and recurrent:
    task = chains[0][1]
    rows = results["tasks"][task]
    best = max(recurrent, key=lambda r: rows[r]["final_mean"])
    out.append(harness.check(
      f"{task} (the shorter memory length): the best recurrent cell ({best})",
      rows[best]["final_mean"], 0.9, "issue 27", rows[best]["final_mean"] >= 0.9,
      "best recurrent mean normalised return >= 0.9", f"over {args.seeds} seeds",
    ))  # fmt: skip
  return out


def figure(plt, results, args):
  tasks = list(results["tasks"])
  cols = min(2, len(tasks))
  fig, axs = plt.subplots(
    (len(tasks) + cols - 1) // cols,
    cols,
    figsize=(6 * cols, 4 * ((len(tasks) + cols - 1) // cols)),
    squeeze=False,
  )
  cfg = results["config"]
  x = (np.arange(cfg["updates"]) + 1) * cfg["envs"] * cfg["rollout"]
  for ax, task in zip(axs.flat, tasks, strict=False):
    for row, r in results["tasks"][task].items():
      curves = np.asarray(r["curves"], float)
      if row == "random":
        ax.axhline(r["final_mean"], color="gray", ls=":", label="random")
        continue
      with np.errstate(all="ignore"):
        line = ax.plot(x, np.nanmean(curves, 0), label=row, ls="--" if row == "ff" else "-")
        ax.fill_between(
          x, np.nanmin(curves, 0), np.nanmax(curves, 0), alpha=0.1, color=line[0].get_color()
        )
    ax.set(
      title=task,
      xlabel="environment steps (per seed)",
      ylabel="normalised return",
      ylim=(-1.05, 1.05),
    )
  axs.flat[0].legend(fontsize=7, ncol=2)
  fig.tight_layout()
  return fig


FLAGS = {
  "cells": harness.flag(list(ROWS), "memories ('ff': the feed-forward reference)"),
  "tasks": harness.flag(list(TASKS), "MemoryChain-L, PositionOnlyCartPole, CueRecall-K"),
  "seeds": harness.flag(3, "seeds, vmapped in one compiled run"),
  "hidden": harness.flag(32, "H: the embedding, memory and head width"),
  "envs": harness.flag(32, "parallel environments"),
  "rollout": harness.flag(128, "steps per rollout (the sequences trained on)"),
  "updates": harness.flag(40, "PPO updates (rollouts) per run"),
  "epochs": harness.flag(4, "epochs per update"),
  "minibatches": harness.flag(4, "minibatches per epoch (the environments split)"),
  "lr": harness.flag(1e-3, "Adam learning rate"),
}
QUICK = dict(cells=["gru"], tasks=["CueRecall-2"], seeds=1, hidden=16, envs=16, rollout=16,
             updates=60, epochs=4, minibatches=2, lr=3e-3)  # fmt: skip
SPEC = harness.Spec(NAME, __doc__, run, checks, FLAGS, QUICK, figure)


main = SPEC.main


if __name__ == "__main__":
  main()
