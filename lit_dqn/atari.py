"""The Atari games as Nature DQN played them: Gymnasium's preprocessing, a lost life ending the
learner's episode, and the emulator's state for exact resume."""

from typing import Any

import gymnasium as gym
from gymnasium.wrappers import AtariPreprocessing, ClipReward, FrameStackObservation

ATARI_FRAME_SKIP = 4  # env steps are 4 emulator frames, the max of the last two kept (Nature DQN)
ATARI_FRAME_STACK = 4  # an observation is the last 4 of those 84x84 grayscale frames


def is_atari(env_id: str) -> bool:
    return env_id.startswith("ALE/")


class EpisodicLife(gym.Wrapper):
    """Ends the learner's episode when a life is lost, but not the game: the next reset plays on.

    This is Nature DQN's training rule (Stable-Baselines3's ``EpisodicLifeEnv``). Gymnasium's
    ``AtariPreprocessing(terminal_on_life_loss=True)`` restarts the whole game at each life lost, so
    an agent would only ever see its first life; Gymnasium has no wrapper that continues the game.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.lives = 0
        self.game_over = True

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_over = terminated or truncated
        lives = self.env.unwrapped.ale.lives()
        if 0 < lives < self.lives:
            terminated = True
        self.lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        if self.game_over:
            obs, info = self.env.reset(**kwargs)
        else:  # a life was lost: one no-op step and the game goes on with the next
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        self.lives = self.env.unwrapped.ale.lives()
        return obs, info


class EmulatorState(gym.Wrapper):
    """An Atari env's state between episodes, for exact resume (``EnvRunner.state_dict``).

    ``emulator_state`` is the emulator's whole state as bytes, its random generator included (sticky
    actions draw from it, and ``np_random`` does not cover it), with the life bookkeeping of the
    wrappers inside this one: after a lost life, ``EpisodicLife`` continues the same game.
    """

    FLAGS = ("game_over", "lives")

    @property
    def emulator_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"ale": self.env.unwrapped.clone_state(include_rng=True).__getstate__()}
        for name in self.FLAGS:
            if self.env.has_wrapper_attr(name):
                state[name] = int(self.env.get_wrapper_attr(name))
        return state

    @emulator_state.setter
    def emulator_state(self, state: dict[str, Any]) -> None:
        import ale_py

        restored = ale_py.ALEState.__new__(ale_py.ALEState)
        restored.__setstate__(state["ale"])
        self.env.unwrapped.restore_state(restored)
        for name in self.FLAGS:
            if name in state:
                self.env.set_wrapper_attr(name, type(self.env.get_wrapper_attr(name))(state[name]))


def atari_pipeline(env: gym.Env, *, training: bool) -> gym.Env:
    """Wrap an Atari game made with ``frameskip=1`` in the Nature DQN pipeline of Gymnasium's wrappers:
    ``AtariPreprocessing`` (4 frames per step with max-pooling, 84x84 grayscale, up to 30 no-op
    starts) and ``FrameStackObservation(4)``. For ``training`` only, a lost life ends the episode
    (``EpisodicLife``) and rewards are clipped to [-1, 1]; evaluation plays whole games and reports
    the raw score. v5's sticky actions (repeat probability 0.25) stay on."""
    env = AtariPreprocessing(env, noop_max=30, frame_skip=ATARI_FRAME_SKIP, screen_size=84, grayscale_obs=True)
    if training:
        env = ClipReward(EpisodicLife(env), -1.0, 1.0)
    env = FrameStackObservation(EmulatorState(env), ATARI_FRAME_STACK)
    # A video shows one frame per env step; the console draws 60 frames/s, so real time is 60 / 4.
    env.metadata = {**env.metadata, "render_fps": 60 / ATARI_FRAME_SKIP}
    return env
