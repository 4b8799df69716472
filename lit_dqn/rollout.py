"""Stepping Gymnasium vector environments: ε-greedy experience collection and greedy evaluation."""

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from lit_dqn.buffer import ReplayBuffer

# ε-greedy policy: (observations [N, obs_dim], env steps so far, exploration RNG) -> (actions [N], ε used)
ExplorationPolicy = Callable[[np.ndarray, int, np.random.Generator], tuple[np.ndarray, float]]
# Greedy policy: observations [N, obs_dim] -> actions [N]
GreedyPolicy = Callable[[np.ndarray], np.ndarray]


class EnvRunner:
    """Steps a vector env with an ε-greedy policy and pushes every real transition into a buffer.

    Gymnasium's vector envs reset a finished sub-env on its *next* step (``AutoresetMode.NEXT_STEP``):
    that step ignores the action and returns the first observation of a new episode, so it is not a
    transition and is never stored. ``env_steps`` counts stored transitions only.
    """

    def __init__(self, envs: gym.vector.VectorEnv, buffer: ReplayBuffer, seed: int) -> None:
        self.envs = envs
        self.buffer = buffer
        env_seed, action_seed = np.random.SeedSequence(seed).generate_state(2)
        self.rng = np.random.default_rng(int(action_seed))
        self.obs, _ = envs.reset(seed=int(env_seed))
        n = envs.num_envs
        self.autoreset = np.zeros(n, dtype=bool)  # sub-envs whose next step is a reset
        self.episode_return = np.zeros(n, dtype=np.float64)
        self.episode_length = np.zeros(n, dtype=np.int64)
        self.env_steps = 0
        self.episodes = 0
        self.epsilon = float("nan")

    def step(self, policy: ExplorationPolicy) -> list[tuple[float, int]]:
        """Take one step in every sub-env; return ``(return, length)`` of the episodes that ended."""
        actions, self.epsilon = policy(self.obs, self.env_steps, self.rng)
        next_obs, rewards, terminated, truncated, _ = self.envs.step(actions)
        real = ~self.autoreset
        self.buffer.push(self.obs[real], actions[real], rewards[real], next_obs[real], terminated[real])
        self.env_steps += int(real.sum())
        self.episode_return += np.where(real, rewards, 0.0)
        self.episode_length += real
        done = real & (terminated | truncated)
        finished = [(float(self.episode_return[i]), int(self.episode_length[i])) for i in np.flatnonzero(done)]
        self.episode_return[done] = 0.0
        self.episode_length[done] = 0
        self.episodes += len(finished)
        self.autoreset = done
        self.obs = next_obs
        return finished

    def state_dict(self) -> dict[str, Any]:
        """Counters and the exploration RNG; the env itself restarts from a fresh episode on resume."""
        return {"env_steps": self.env_steps, "episodes": self.episodes, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.env_steps, self.episodes = state["env_steps"], state["episodes"]
        self.rng.bit_generator.state = state["rng"]


def evaluate(envs: gym.vector.VectorEnv, policy: GreedyPolicy, seed: int) -> np.ndarray:
    """Run one episode in each sub-env with ``policy``; return the episode returns ``[num_envs]``.

    All episodes run side by side, so evaluating N episodes costs the longest episode's length in
    batched policy calls rather than the sum of all lengths. Steps after a sub-env's first episode
    ended are ignored.
    """
    obs, _ = envs.reset(seed=seed)
    returns = np.zeros(envs.num_envs, dtype=np.float64)
    done = np.zeros(envs.num_envs, dtype=bool)
    while not done.all():
        obs, rewards, terminated, truncated, _ = envs.step(policy(obs))
        returns += np.where(done, 0.0, rewards)
        done |= terminated | truncated
    return returns
