"""Stepping Gymnasium vector environments: ε-greedy experience collection and greedy evaluation."""

import contextlib
import copy
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from lit_dqn.buffer import Replay
from lit_dqn.envs import ActionMasks

# ε-greedy policy: (observations [N, obs_dim], env steps so far, exploration RNG, valid actions
# [N, n_actions] or None) -> (actions [N], ε used)
ExplorationPolicy = Callable[[np.ndarray, int, np.random.Generator, np.ndarray | None], tuple[np.ndarray, float]]
# Greedy policy: (observations [N, obs_dim], valid actions [N, n_actions] or None) -> actions [N]
GreedyPolicy = Callable[[np.ndarray, np.ndarray | None], np.ndarray]


class StopRequested(Exception):
    """A stop was asked for (Ctrl-C, SIGTERM: ``request_stop``) while envs were being stepped: raised
    between two env steps, so the runner, its buffer and the envs are never left half-way through one.
    A warm-up of 100k env steps, an evaluation or a video then ends within one env step."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _StopRequest:
    """This process's stop request: set from a signal handler (the main thread), read by every
    env-stepping loop. Signals are the process's, so the request is too."""

    signum: int | None = None


_STOP = _StopRequest()


def request_stop(signum: int) -> None:
    """Make every env-stepping loop of this process raise ``StopRequested(signum)`` before its next
    env step (``EnvRunner.step``, ``evaluate``, ``lit_dqn.video.record_episodes``)."""
    _STOP.signum = signum


def clear_stop() -> None:
    _STOP.signum = None


def check_stop() -> None:
    """Raise ``StopRequested`` if a stop was requested: the one check each loop makes per env step."""
    if _STOP.signum is not None:
        raise StopRequested(_STOP.signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, Ctrl-C and SIGTERM request a stop (``request_stop``) instead of their usual
    effect, so env stepping ends at the next step with ``StopRequested``; the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, lambda n, frame: request_stop(n)) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        clear_stop()


class EnvRunner:
    """Steps a vector env with an ε-greedy policy and pushes every real transition into a buffer.

    Gymnasium's vector envs reset a finished sub-env on its *next* step (``AutoresetMode.NEXT_STEP``):
    that step ignores the action and returns the first observation of a new episode, so it is not a
    transition and is never stored. ``env_steps`` counts stored transitions only.

    With ``masks``, the policy is told which actions are valid in each observation, and every
    stored transition keeps the valid actions of its ``next_obs``. ``emulators``: the sub-envs are
    Atari games wrapped in ``atari.EmulatorState``, whose emulator state checkpoints carry. It is
    said, not probed: asking an ``AsyncVectorEnv``'s workers for an attribute they lack shuts them down.
    """

    def __init__(
        self,
        envs: gym.vector.VectorEnv,
        buffer: Replay,
        seed: int,
        masks: ActionMasks | None = None,
        emulators: bool = False,
    ) -> None:
        self.envs = envs
        self.buffer = buffer
        self.masks = masks
        self.emulators = emulators
        env_seed, action_seed = np.random.SeedSequence(seed).generate_state(2)
        self.rng = np.random.default_rng(int(action_seed))
        self.obs, infos = envs.reset(seed=int(env_seed))
        self.mask = masks.of_vector(envs, infos) if masks is not None else None  # [N, n_actions] valid now
        n = envs.num_envs
        self.autoreset = np.zeros(n, dtype=bool)  # sub-envs whose next step is a reset
        self.episode_return = np.zeros(n, dtype=np.float64)
        self.episode_length = np.zeros(n, dtype=np.int64)
        self.env_steps = 0
        self.episodes = 0
        self.epsilon = float("nan")

    @property
    def num_envs(self) -> int:
        return self.envs.num_envs

    def step(self, policy: ExplorationPolicy) -> list[tuple[float, int]]:
        """Take one step in every sub-env; return ``(return, length)`` of the episodes that ended.
        A requested stop (``request_stop``) raises ``StopRequested`` instead, before stepping."""
        check_stop()
        if self.autoreset.all():  # every action would be ignored: no need to ask the policy
            actions = np.zeros(self.num_envs, dtype=np.int64)
        else:
            actions, self.epsilon = policy(self.obs, self.env_steps, self.rng, self.mask)
        next_obs, rewards, terminated, truncated, infos = self.envs.step(actions)
        real = ~self.autoreset
        ended = terminated | truncated
        masked = {}
        if self.masks is not None:
            self.mask = self.masks.of_vector(self.envs, infos)  # of next_obs (a reset's first, after an autoreset)
            masked["next_masks"] = self.mask[real]
        self.buffer.push(
            self.obs[real],
            actions[real],
            rewards[real],
            next_obs[real],
            terminated[real],
            env_ids=np.flatnonzero(real),
            continues=~ended[real],
            **masked,
        )
        self.env_steps += int(real.sum())
        self.episode_return += np.where(real, rewards, 0.0)
        self.episode_length += real
        done = real & ended
        finished = [(float(self.episode_return[i]), int(self.episode_length[i])) for i in np.flatnonzero(done)]
        self.episode_return[done] = 0.0
        self.episode_length[done] = 0
        self.episodes += len(finished)
        self.autoreset = done
        self.obs = next_obs
        return finished

    def state_dict(self) -> dict[str, Any]:
        """Counters, the exploration RNG and the sub-envs' own RNGs (for their next resets).

        The envs' physical state is not saved (Atari's emulator is, for its generator and the game a
        lost life continues): on resume every sub-env starts a fresh episode, drawn from its saved RNG
        exactly as its next autoreset would have been. A run checkpointed between
        episodes therefore continues exactly; an episode in progress is dropped (its transitions stay
        in the buffer, it is not counted as an episode).
        """
        return {
            "env_steps": self.env_steps,
            "episodes": self.episodes,
            "epsilon": self.epsilon,
            "rng": self.rng.bit_generator.state,
            "env_rngs": _env_rngs(self.envs),
            "emulators": _emulator_states(self.envs) if self.emulators else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.env_steps, self.episodes, self.epsilon = state["env_steps"], state["episodes"], state["epsilon"]
        self.rng.bit_generator.state = state["rng"]
        if state.get("emulators") is not None:
            emulators = [{**s, "ale": s["ale"].numpy().tobytes()} for s in state["emulators"]]
            self.envs.set_attr("emulator_state", emulators)
        if state["env_rngs"] is not None and _env_rngs(self.envs) is not None:
            self.envs.set_attr("np_random", [_generator(s) for s in state["env_rngs"]])
            self.obs, infos = self.envs.reset()
            if self.masks is not None:
                self.mask = self.masks.of_vector(self.envs, infos)
        self.autoreset[:] = False
        self.episode_return[:] = 0.0
        self.episode_length[:] = 0


def _env_rngs(envs: gym.vector.VectorEnv) -> list[dict[str, Any]] | None:
    """Each sub-env's RNG state, for vector envs made of single envs (sync/async); ``None`` otherwise.

    Plain dicts, not ``Generator`` objects, so checkpoints load with ``torch.load(weights_only=True)``.
    """
    if not isinstance(envs, gym.vector.SyncVectorEnv | gym.vector.AsyncVectorEnv):
        return None
    return [copy.deepcopy(rng.bit_generator.state) for rng in envs.get_attr("np_random")]


def _emulator_states(envs: gym.vector.VectorEnv) -> list[dict[str, Any]]:
    """Each Atari sub-env's emulator state (``atari.EmulatorState``), bytes as a uint8 tensor so that
    checkpoints load with ``weights_only=True``."""
    states = envs.get_attr("emulator_state")
    return [{**state, "ale": torch.frombuffer(bytearray(state["ale"]), dtype=torch.uint8)} for state in states]


def _generator(state: dict[str, Any]) -> np.random.Generator:
    bit_generator = getattr(np.random, state["bit_generator"])()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


def evaluate(
    envs: gym.vector.VectorEnv,
    policy: GreedyPolicy,
    seed: int,
    masks: ActionMasks | None = None,
    max_steps: int | None = None,
) -> np.ndarray:
    """Run one episode in each sub-env with ``policy``; return the episode returns ``[num_envs]``.

    All episodes run side by side, so evaluating N episodes costs the longest episode's length in
    batched policy calls rather than the sum of all lengths. Steps after a sub-env's first episode
    ended are ignored. With ``masks`` the policy picks among each observation's valid actions. An
    episode still going after ``max_steps`` steps is cut there (truncated): its return so far counts.
    A requested stop raises ``StopRequested`` before the next step (no partial score is returned).
    """
    obs, infos = envs.reset(seed=seed)
    returns = np.zeros(envs.num_envs, dtype=np.float64)
    done = np.zeros(envs.num_envs, dtype=bool)
    steps = 0
    while not done.all() and (max_steps is None or steps < max_steps):
        check_stop()
        steps += 1
        mask = masks.of_vector(envs, infos) if masks is not None else None
        obs, rewards, terminated, truncated, infos = envs.step(policy(obs, mask))
        returns += np.where(done, 0.0, rewards)
        done |= terminated | truncated
    return returns
