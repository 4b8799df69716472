"""Which Gymnasium envs lit_dqn can train on, how it makes them, and the one-line errors for those it cannot make."""

import difflib
import functools
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import AtariPreprocessing, ClipReward, FrameStackObservation

from lit_dqn.checks import ConfigError

ATARI_FRAME_SKIP = 4  # env steps are 4 emulator frames, the max of the last two kept (Nature DQN)
ATARI_FRAME_STACK = 4  # an observation is the last 4 of those 84x84 grayscale frames

# The optional extra (``pip install "lit-dqn[EXTRA]"``) that brings the simulator of an env family,
# keyed by a piece of the env's entry point (or its namespace) that names the family.
EXTRAS = {"box2d": "box2d", "ale_py": "atari", "ALE": "atari", "minatar": "minatar", "MinAtar": "minatar"}


def register_family(env_id: str) -> None:
    """Register the env families Gymnasium does not register on import: MinAtar (``MinAtar/...``) and
    the Atari games (``ALE/...``), whose packages register their envs when asked. Every process that
    makes the env calls this."""
    if env_id in gym.registry:
        return
    try:
        if env_id.startswith("MinAtar/"):
            import minatar.gym

            minatar.gym.register_envs()
        elif env_id.startswith("ALE/"):
            import ale_py

            gym.register_envs(ale_py)
    except ImportError:
        return  # env_spaces then names the extra


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


def make_env(env_id: str, *, training: bool = False, **kwargs: Any) -> gym.Env:
    """One env as lit_dqn sees it; ``kwargs`` (e.g. ``render_mode``) go to ``gym.make``.

    Atari games get the Nature DQN pipeline from Gymnasium's wrappers: ``frameskip=1`` in the
    emulator, then ``AtariPreprocessing`` (4 frames per step with max-pooling, 84x84 grayscale, up
    to 30 no-op starts) and ``FrameStackObservation(4)``. For ``training`` only, a lost life ends the
    episode (``EpisodicLife``) and rewards are clipped to [-1, 1]; evaluation plays whole games and
    reports the raw score. v5's sticky actions (repeat probability 0.25) stay on.
    """
    register_family(env_id)
    if not is_atari(env_id):
        return gym.make(env_id, **kwargs)
    env = gym.make(env_id, frameskip=1, **kwargs)
    env = AtariPreprocessing(env, noop_max=30, frame_skip=ATARI_FRAME_SKIP, screen_size=84, grayscale_obs=True)
    if training:
        env = ClipReward(EpisodicLife(env), -1.0, 1.0)
    env = FrameStackObservation(EmulatorState(env), ATARI_FRAME_STACK)
    # A video shows one frame per env step; the console draws 60 frames/s, so real time is 60 / 4.
    env.metadata = {**env.metadata, "render_fps": 60 / ATARI_FRAME_SKIP}
    return env


def make_vec_env(
    env_id: str, num_envs: int, *, training: bool = False, vectorization_mode: str | None = None
) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``make_env`` in a vector env. ``vectorization_mode=None`` takes the env's
    own batched implementation where it has one (CartPole's), else steps copies in this process."""
    if not is_atari(env_id):
        return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=vectorization_mode)
    if vectorization_mode == "vector_entry_point":
        raise ConfigError(
            f"data.vectorization_mode='vector_entry_point' is not available for {env_id}: its preprocessing "
            "comes from Gymnasium's wrappers; use 'sync' or 'async'"
        )
    factory = functools.partial(make_env, env_id, training=training)
    if vectorization_mode == "async":
        return gym.vector.AsyncVectorEnv([factory] * num_envs)
    return gym.vector.SyncVectorEnv([factory] * num_envs)


def missing_extra(env_id: str) -> str | None:
    """The extra an env's family needs, from its registration, or ``None`` if no extra provides it."""
    spec = gym.registry.get(env_id)
    entry_point = str(spec.entry_point) if spec is not None else ""
    namespace = env_id.split("/")[0] if "/" in env_id else ""
    return next((extra for key, extra in EXTRAS.items() if key in entry_point or key == namespace), None)


def env_spaces(env_id: str) -> tuple[gym.spaces.Box, gym.spaces.Discrete]:
    """Read an env's spaces and check DQN can use them, failing early with a clear message."""
    try:
        env = make_env(env_id)
    except gym.error.Error as error:
        extra = missing_extra(env_id)
        if extra is not None and isinstance(error, gym.error.DependencyNotInstalled | gym.error.NamespaceNotFound):
            raise ConfigError(
                f'data.env_id={env_id!r} needs the {extra} extra: pip install "lit-dqn[{extra}]"'
            ) from None
        close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"data.env_id={env_id!r} cannot be made: {error}{hint}") from None
    observation_space, action_space = env.observation_space, env.action_space
    env.close()
    if not isinstance(action_space, gym.spaces.Discrete):
        raise ConfigError(
            f"data.env_id={env_id!r} has a {type(action_space).__name__} action space; "
            "DQN needs Discrete actions (e.g. CartPole-v1, Acrobot-v1, MountainCar-v0, LunarLander-v3)"
        )
    flat = isinstance(observation_space, gym.spaces.Box) and len(observation_space.shape) == 1
    image = (
        isinstance(observation_space, gym.spaces.Box)
        and len(observation_space.shape) == 3
        and observation_space.dtype in (np.uint8, np.bool_)
    )
    if not (flat or image):
        raise ConfigError(
            f"data.env_id={env_id!r} has observation space {observation_space}; the Q-network takes a "
            "flat Box (obs_dim,) or an image Box of uint8 or bool, (C, H, W) or (H, W, C)"
        )
    return observation_space, action_space
