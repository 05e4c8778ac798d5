"""The tasks of `experiments.rl_memory`: two from gymnax, one wrapper and one written here.

Every task is a gymnax environment (``reset(key, params) -> (obs, state)``,
``step(key, state, action, params) -> (obs, state, reward, terminated, truncated,
info)``, auto-resetting, ``info["final_observation"]`` the observation an episode
ended on) with the range its episode return is normalised from, POPGym's way, to
[-1, 1]:

- ``MemoryChain-L``: gymnax's ``MemoryChain-bsuite`` with ``memory_length = L``.
  An episode is L + 1 steps; the context bit is shown on the first observation
  (gymnax 1.0.1 returns the pre-step observation from ``step``, so the agent
  sees it twice), the only reward, +1 or -1, comes at the last step for naming
  it: L - 1 steps of memory. Its return is already in [-1, 1].
- ``PositionOnlyCartPole``: gymnax's ``CartPole-v1`` (500 steps, then truncated)
  seen through `PositionOnly`, which keeps the cart position and the pole angle
  and drops both velocities (POPGym's Position Only CartPole). Return [0, 500].
- ``CueRecall-K``: `CueRecall`, written here: a cue among ``num_cues`` shown at
  t = 0, ``K`` steps of noise, a recall flag at t = K, where naming the cue gives
  +1 and anything else -1 (the episode's only reward, so its return is in
  [-1, 1]; a guess scores ``(2 - num_cues) / num_cues``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import gymnax
import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces

NUM_CUES = 4
CUE_NOISE = 4  # noise channels of CueRecall's observation
POSITIONS = (0, 2)  # CartPole's observation is [x, x_dot, theta, theta_dot]


class Task(NamedTuple):
  """One task: its environment, the return range it is normalised from, what it needs.

  Attributes:
    name: e.g. ``"MemoryChain-5"``.
    env: a gymnax environment (or a wrapper of one).
    env_params: its params.
    return_range: ``(low, high)``: the episode return mapped to [-1, 1].
    truncates: whether episodes can be truncated (then the critic bootstraps
      from ``info["final_observation"]``).
    reward_scale: the rewards are multiplied by it for training (not for the
      returns reported).
  """

  name: str
  env: Any
  env_params: Any
  return_range: tuple[float, float]
  truncates: bool
  reward_scale: float = 1.0

  @property
  def num_actions(self) -> int:
    return self.env.action_space(self.env_params).n

  @property
  def obs_size(self) -> int:
    return self.env.observation_space(self.env_params).shape[0]

  def normalise(self, returns: jax.Array) -> jax.Array:
    """Episode returns mapped linearly from ``return_range`` to [-1, 1]."""
    low, high = self.return_range
    return 2.0 * (returns - low) / (high - low) - 1.0


@struct.dataclass
class CueState(environment.EnvState):
  cue: jax.Array


@struct.dataclass
class CueParams(environment.EnvParams):
  delay: int = 16
  max_steps_in_episode: int = 1000


class CueRecall(environment.Environment):
  """Recall a cue after ``delay`` noisy steps; a gymnax environment in pure JAX.

  The observation ``(2 * num_cues + 1,)`` is the cue one-hot (at t = 0 only), a
  recall flag (1 at t = delay), and ``num_cues`` channels of standard normal noise
  at every step. At t = delay the action naming the cue gives +1, any other -1,
  and the episode terminates; before it, rewards are 0.

  Example:
    >>> env, params = CueRecall(), CueParams(delay=3)
    >>> obs, state = env.reset(jax.random.key(0), params)
    >>> obs.shape, float(obs[:NUM_CUES].sum()), float(obs[NUM_CUES])
    ((9,), 1.0, 0.0)
  """

  def __init__(self, num_cues: int = NUM_CUES):
    super().__init__()
    self.num_cues = num_cues

  @property
  def default_params(self) -> CueParams:
    return CueParams()

  def get_obs(self, state: CueState, params: CueParams, key=None) -> jax.Array:
    key = jax.random.key(0) if key is None else key
    cue = jax.nn.one_hot(state.cue, self.num_cues) * (state.time == 0)
    flag = (state.time == params.delay).astype(jnp.float32)[None]
    return jnp.concatenate([cue, flag, jax.random.normal(key, (self.num_cues,))])

  def reset_env(self, key: jax.Array, params: CueParams) -> tuple[jax.Array, CueState]:
    k_cue, k_obs = jax.random.split(key)
    state = CueState(time=jnp.int32(0), cue=jax.random.randint(k_cue, (), 0, self.num_cues))
    return self.get_obs(state, params, k_obs), state

  def step_env(self, key, state: CueState, action, params: CueParams):
    recall = state.time == params.delay
    reward = jnp.where(recall, jnp.where(action == state.cue, 1.0, -1.0), 0.0)
    state = state.replace(time=state.time + 1)
    return self.get_obs(state, params, key), state, reward, recall, {}

  def is_terminated(self, state: CueState, params: CueParams) -> jax.Array:
    return state.time > params.delay

  @property
  def name(self) -> str:
    return "CueRecall"

  @property
  def num_actions(self) -> int:
    return self.num_cues

  def action_space(self, params=None) -> spaces.Discrete:
    return spaces.Discrete(self.num_cues)

  def observation_space(self, params) -> spaces.Box:
    return spaces.Box(-jnp.inf, jnp.inf, (2 * self.num_cues + 1,), jnp.float32)


class PositionOnly:
  """A gymnax environment seen without its velocities: observations keep ``keep`` only.

  POPGym's Position Only CartPole is ``PositionOnly(CartPole-v1)``: ``[x, theta]``
  of gymnax's ``[x, x_dot, theta, theta_dot]``, ``info["final_observation"]``
  masked alike. The dynamics, rewards and flags are the wrapped environment's.

  Example:
    >>> env, params = gymnax.make("CartPole-v1")
    >>> po = PositionOnly(env)
    >>> obs, state = po.reset(jax.random.key(0), params)
    >>> obs.shape, bool(obs[1] == state.theta)
    ((2,), True)
  """

  def __init__(self, env: Any, keep: tuple[int, ...] = POSITIONS):
    self.env, self.keep = env, jnp.asarray(keep)

  def __getattr__(self, name: str) -> Any:
    return getattr(self.env, name)

  def reset(self, key, params=None):
    obs, state = self.env.reset(key, params)
    return obs[..., self.keep], state

  def step(self, key, state, action, params=None):
    obs, state, reward, terminated, truncated, info = self.env.step(key, state, action, params)
    info = {**info, "final_observation": info["final_observation"][..., self.keep]}
    return obs[..., self.keep], state, reward, terminated, truncated, info

  def observation_space(self, params) -> spaces.Box:
    space = self.env.observation_space(params)
    low, high = jnp.broadcast_to(space.low, space.shape), jnp.broadcast_to(space.high, space.shape)
    return spaces.Box(low[self.keep], high[self.keep], (len(self.keep),), space.dtype)


def make_task(name: str) -> Task:
  """The task named ``MemoryChain-L``, ``PositionOnlyCartPole`` or ``CueRecall-K``.

  Raises:
    ValueError: for another name, or L, K not a positive integer (K at most 32).

  Example:
    >>> task = make_task("MemoryChain-5")
    >>> task.obs_size, task.num_actions, task.env_params.memory_length, task.return_range
    (3, 2, 5, (-1.0, 1.0))
  """
  base, _, arg = name.partition("-")
  if base == "PositionOnlyCartPole" and not arg:
    env, params = gymnax.make("CartPole-v1")
    return Task(name, PositionOnly(env), params, (0.0, 500.0), True, 0.01)
  if base in ("MemoryChain", "CueRecall") and arg.isdigit() and int(arg) > 0:
    if base == "MemoryChain":
      env, params = gymnax.make("MemoryChain-bsuite")
      return Task(name, env, params.replace(memory_length=int(arg)), (-1.0, 1.0), False)
    if int(arg) <= 32:
      return Task(name, CueRecall(), CueParams(delay=int(arg)), (-1.0, 1.0), False)
  raise ValueError(
    f"task {name!r}: expected 'MemoryChain-L' (L >= 1), 'PositionOnlyCartPole' or "
    "'CueRecall-K' (1 <= K <= 32)"
  )
