"""Envs a user might bring, registered when this module is imported: the honest test of the
``module:id`` form (``--data.env_id tests.own_envs:Shifted-v0``), which lit_dqn never imports itself."""

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from lit_dqn.envs import EVAL_STEP_CAP


class Shifted(gym.Env):
    """Actions ``Discrete(3, start=1)``: 1, 2 or 3. Any other action raises, as a strict env would.

    Rewarded for action 2; ``seen`` counts the actions it received (class-wide, so a test can read
    what the training envs got)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
    action_space = gym.spaces.Discrete(3, start=1)
    seen: ClassVar[set[int]] = set()

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if int(action) not in (1, 2, 3):
            raise ValueError(f"Shifted takes actions 1, 2 or 3, not {action!r}")
        Shifted.seen.add(int(action))
        obs = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return obs, float(int(action) == 2), False, False, {}


class Bytes(gym.Env):
    """A flat uint8 observation, as an emulator's RAM is: reward for the action that matches the
    first byte's top bit."""

    observation_space = gym.spaces.Box(0, 255, shape=(8,), dtype=np.uint8)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._obs = self.np_random.integers(0, 256, 8, dtype=np.uint8)
        return self._obs, {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        reward = float(int(action) == int(self._obs[0] >= 128))
        self._obs = self.np_random.integers(0, 256, 8, dtype=np.uint8)
        return self._obs, reward, False, False, {}


class Parts(gym.Env):
    """A Dict observation, which the Q-network cannot take until ``FlattenObservation`` flattens it."""

    observation_space = gym.spaces.Dict(
        {"position": gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32), "phase": gym.spaces.Discrete(3)}
    )
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        return self.observation_space.sample(), 0.0, False, False, {}


class Grid(gym.Env):
    """Boolean images ``(10, 10, 10)``, channels last, as MinAtar's Seaquest gives them: a shape from
    which no rule can tell the channel axis."""

    observation_space = gym.spaces.Box(0, 1, shape=(10, 10, 10), dtype=np.bool_)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return self.np_random.random((10, 10, 10)) < 0.1, {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        return self.np_random.random((10, 10, 10)) < 0.1, 0.0, False, False, {}


class Pixels(gym.Env):
    """uint8 images ``shape`` (``(10, 10, 3)``; ``(H, W)`` for grayscale frames) whose pixels run from
    0 to ``high``: 1 for a binary grid that an env author stores as bytes, 255 for a camera's."""

    action_space = gym.spaces.Discrete(2)

    def __init__(self, high: int = 1, shape: tuple[int, ...] = (10, 10, 3)) -> None:
        self.observation_space = gym.spaces.Box(0, high, shape=tuple(shape), dtype=np.uint8)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        return self.observation_space.sample(), 0.0, False, False, {}


class Counting(gym.Wrapper):
    """A user's own wrapper with an init arg: adds ``bonus`` to every reward."""

    def __init__(self, env: gym.Env, bonus: float) -> None:
        super().__init__(env)
        self.bonus = bonus

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, float(reward) + self.bonus, terminated, truncated, info


class Strict(gym.Env):
    """Four actions, a random non-empty half of them valid at each step, in ``info["action_mask"]``;
    an invalid action raises, so any path that ignores the mask (exploring, acting greedily,
    evaluating, recording) ends the test. The observation shows the mask; the reward is 1 for the
    highest valid action."""

    observation_space = gym.spaces.Box(0.0, 1.0, shape=(4,), dtype=np.float32)
    action_space = gym.spaces.Discrete(4)
    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, render_mode: str | None = None) -> None:
        self.render_mode = render_mode

    def render(self) -> np.ndarray:
        """The mask as four cells, lit where valid: ``[4, 16, 3]`` uint8."""
        cells = self._mask.astype(np.uint8)[None, :, None] * np.uint8(255)  # [1, 4, 1]
        return cells.repeat(4, axis=0).repeat(4, axis=1).repeat(3, axis=2)

    def _next(self) -> tuple[np.ndarray, dict]:
        self._mask = np.zeros(4, dtype=np.int8)
        self._mask[self.np_random.choice(4, size=2, replace=False)] = 1
        return self._mask.astype(np.float32), self._info(self._mask)

    def _info(self, mask: np.ndarray) -> dict:
        return {"action_mask": mask}

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return self._next()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if not self._mask[int(action)]:
            raise ValueError(f"action {action} is not valid here (mask {self._mask})")
        reward = float(int(action) == int(np.flatnonzero(self._mask)[-1]))
        obs, info = self._next()
        return obs, reward, False, False, info


class StrictMethod(Strict):
    """``Strict`` with sb3-contrib's convention: an ``action_masks()`` method, nothing in the info."""

    def _info(self, mask: np.ndarray) -> dict:
        return {}

    def action_masks(self) -> np.ndarray:
        return self._mask.astype(bool)


class ResetOnlyMask(Strict):
    """``Strict`` whose steps leave the mask out of their info: only a reset's info has one."""

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        obs, reward, terminated, truncated, _ = super().step(action)
        return obs, reward, terminated, truncated, {}


class ResetOnlyMaskMethod(ResetOnlyMask):
    """``ResetOnlyMask`` with an ``action_masks()`` method too, which gives every step's mask."""

    def action_masks(self) -> np.ndarray:
        return self._mask.astype(bool)


class Tiny(gym.Env):
    """uint8 images of 2x2 pixels, 3 channels last: smaller than any convolution here."""

    observation_space = gym.spaces.Box(0, 255, shape=(2, 2, 3), dtype=np.uint8)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return self.np_random.integers(0, 256, (2, 2, 3), dtype=np.uint8), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        return self.np_random.integers(0, 256, (2, 2, 3), dtype=np.uint8), 0.0, False, False, {}


class Endless(gym.Env):
    """An episode that never ends, and no time limit: reward 1 per step, whatever the action. Past
    twice ``EVAL_STEP_CAP`` steps it raises, so an evaluation that is not cut fails instead of hanging."""

    observation_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._steps = 0
        return np.zeros(2, dtype=np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        self._steps += 1
        if self._steps > 2 * EVAL_STEP_CAP:
            raise RuntimeError(f"Endless played {self._steps} steps of one episode: nothing cut it")
        return np.zeros(2, dtype=np.float32), 1.0, False, False, {}


def same_step_vector_env(num_envs: int, **kwargs: Any) -> gym.vector.VectorEnv:
    """A batched implementation that resets finished sub-envs in the same step (``SAME_STEP``)."""
    return gym.vector.SyncVectorEnv(
        [lambda: gym.make("CartPole-v1")] * num_envs, autoreset_mode=AutoresetMode.SAME_STEP
    )


gym.register("Shifted-v0", entry_point=Shifted, max_episode_steps=20)
gym.register("Bytes-v0", entry_point=Bytes, max_episode_steps=20)
gym.register("Parts-v0", entry_point=Parts, max_episode_steps=20)
gym.register("Strict-v0", entry_point=Strict, max_episode_steps=20)
gym.register("StrictMethod-v0", entry_point=StrictMethod, max_episode_steps=20)
gym.register("ResetOnlyMask-v0", entry_point=ResetOnlyMask, max_episode_steps=20)
gym.register("ResetOnlyMaskMethod-v0", entry_point=ResetOnlyMaskMethod, max_episode_steps=20)
gym.register("Tiny-v0", entry_point=Tiny, max_episode_steps=20)
gym.register("Endless-v0", entry_point=Endless)  # no max_episode_steps
gym.register("Grid-v0", entry_point=Grid, max_episode_steps=20)
gym.register("Pixels-v0", entry_point=Pixels, max_episode_steps=20)
gym.register(
    "SameStep-v0",
    entry_point="gymnasium.envs.classic_control.cartpole:CartPoleEnv",
    vector_entry_point=same_step_vector_env,
    max_episode_steps=500,
)
