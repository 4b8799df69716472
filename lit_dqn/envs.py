"""Which Gymnasium envs lit_dqn can train on, and the one-line errors for those it cannot make."""

import difflib

import gymnasium as gym
import numpy as np

from lit_dqn.checks import ConfigError

# The optional extra (``pip install "lit-dqn[EXTRA]"``) that brings the simulator of an env family,
# keyed by a piece of the env's entry point (or its namespace) that names the family.
EXTRAS = {"box2d": "box2d", "ale_py": "atari", "ALE": "atari", "minatar": "minatar", "MinAtar": "minatar"}


def register_family(env_id: str) -> None:
    """Register the env families Gymnasium does not register on import: MinAtar (``MinAtar/...``),
    whose package registers its envs when asked. Every process that makes the env calls this."""
    if env_id.startswith("MinAtar/") and env_id not in gym.registry:
        try:
            import minatar.gym
        except ImportError:
            return  # env_spaces then names the extra
        minatar.gym.register_envs()


def missing_extra(env_id: str) -> str | None:
    """The extra an env's family needs, from its registration, or ``None`` if no extra provides it."""
    spec = gym.registry.get(env_id)
    entry_point = str(spec.entry_point) if spec is not None else ""
    namespace = env_id.split("/")[0] if "/" in env_id else ""
    return next((extra for key, extra in EXTRAS.items() if key in entry_point or key == namespace), None)


def env_spaces(env_id: str) -> tuple[gym.spaces.Box, gym.spaces.Discrete]:
    """Read an env's spaces and check DQN can use them, failing early with a clear message."""
    register_family(env_id)
    try:
        env = gym.make(env_id)
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
