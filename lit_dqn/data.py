"""The data side of DQN: a replay buffer filled by stepping a Gymnasium env, served as batches."""

from collections.abc import Iterator
from typing import Literal, NamedTuple

import gymnasium as gym
import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from lit_dqn.buffer import ReplayBuffer, Transitions
from lit_dqn.rollout import EnvRunner, ExplorationPolicy, GreedyPolicy, evaluate


class ReplayBatch(NamedTuple):
    """What one training step receives: sampled transitions plus what the env did since the last batch."""

    transitions: Transitions
    episode_returns: tuple[float, ...]  # episodes that ended since the previous batch
    episode_lengths: tuple[int, ...]
    episodes: int  # episodes ended so far
    env_steps: int  # transitions collected so far
    epsilon: float  # ε of the latest action
    replay_size: int


class ReplayDataset(IterableDataset):
    """Endless stream of replay batches; before each batch the env takes one (vector) step.

    The first batch waits until the buffer holds ``warmup_steps`` transitions.
    """

    def __init__(self, runner: EnvRunner, policy: ExplorationPolicy, batch_size: int, warmup_steps: int) -> None:
        self.runner = runner
        self.policy = policy
        self.batch_size = batch_size
        self.warmup_steps = warmup_steps

    def __iter__(self) -> Iterator[ReplayBatch]:
        runner, buffer = self.runner, self.runner.buffer
        while True:
            finished = runner.step(self.policy)
            while len(buffer) < self.warmup_steps:
                finished += runner.step(self.policy)
            yield ReplayBatch(
                transitions=buffer.sample(self.batch_size),
                episode_returns=tuple(r for r, _ in finished),
                episode_lengths=tuple(n for _, n in finished),
                episodes=runner.episodes,
                env_steps=runner.env_steps,
                epsilon=runner.epsilon,
                replay_size=len(buffer),
            )


class EvaluationDataset(IterableDataset):
    """One item: the returns ``[n_episodes]`` of greedy episodes from fixed seeds.

    Fixed seeds make every validation run score the policy on the same start states, so scores of
    different checkpoints are comparable.
    """

    def __init__(self, envs: gym.vector.VectorEnv, policy: GreedyPolicy, seed: int) -> None:
        self.envs = envs
        self.policy = policy
        self.seed = seed

    def __iter__(self) -> Iterator[Tensor]:
        returns = evaluate(self.envs, self.policy, self.seed)
        yield torch.as_tensor(returns, dtype=torch.float32)


class GymDataModule(L.LightningDataModule):
    """Gymnasium env, replay buffer and evaluation episodes for DQN.

    Args:
        env_id: any registered Gymnasium env with ``Discrete`` actions and a flat ``Box`` observation.
        num_envs: sub-envs stepped together before each batch (each step adds ``num_envs`` transitions).
        batch_size: transitions per sampled batch.
        buffer_capacity: replay buffer size; the oldest transitions are overwritten.
        warmup_steps: transitions collected before the first batch (at least ``batch_size``).
        seed: seeds env resets, exploration and buffer sampling; ``None`` takes the run's
            ``seed_everything`` seed (``torch.initial_seed()``).
        eval_episodes: greedy episodes per validation or test run.
        val_seed: first env seed of the validation episodes.
        test_seed: first env seed of the test episodes, distinct from validation so a checkpoint
            chosen on validation is tested on start states it was not chosen for.
        vectorization_mode: how Gymnasium vectorises the training env: ``sync``, ``async`` or
            ``vector_entry_point`` (the env's own batched implementation where it has one).
    """

    def __init__(
        self,
        env_id: str = "CartPole-v1",
        num_envs: int = 1,
        batch_size: int = 128,
        buffer_capacity: int = 10_000,
        warmup_steps: int = 128,
        seed: int | None = None,
        eval_episodes: int = 100,
        val_seed: int = 1_000_000,
        test_seed: int = 2_000_000,
        vectorization_mode: Literal["sync", "async", "vector_entry_point"] = "sync",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.observation_space, self.action_space = _env_spaces(env_id)
        self.buffer: ReplayBuffer | None = None
        self.runner: EnvRunner | None = None
        self._eval_envs: dict[str, gym.vector.VectorEnv] = {}

    @property
    def obs_dim(self) -> int:
        """Length of the flat observation vector: the Q-network's input size."""
        return int(np.prod(self.observation_space.shape))

    @property
    def n_actions(self) -> int:
        """Number of discrete actions: the Q-network's output size."""
        return int(self.action_space.n)

    def _seed(self) -> int:
        return self.hparams.seed if self.hparams.seed is not None else torch.initial_seed()

    def _make_runner(self) -> EnvRunner:
        hp = self.hparams
        device = self.trainer.lightning_module.device if self.trainer is not None else torch.device("cpu")
        buffer_seed, runner_seed = np.random.SeedSequence(self._seed()).spawn(2)
        self.buffer = ReplayBuffer(
            hp.buffer_capacity,
            self.observation_space.shape,
            device=device,
            seed=int(buffer_seed.generate_state(1)[0]),
        )
        envs = gym.make_vec(hp.env_id, num_envs=hp.num_envs, vectorization_mode=hp.vectorization_mode)
        return EnvRunner(envs, self.buffer, seed=int(runner_seed.generate_state(1)[0]))

    def train_dataloader(self) -> DataLoader:
        # The env and buffer live in this process and the policy must be the one being trained right
        # now, so there are no worker processes (num_workers=0) and the dataset yields whole batches
        # (batch_size=None: no collation).
        if self.runner is None:
            self.runner = self._make_runner()
        dataset = ReplayDataset(
            self.runner, self.trainer.lightning_module.act, self.hparams.batch_size, self.hparams.warmup_steps
        )
        return DataLoader(dataset, batch_size=None, num_workers=0)

    def _eval_dataloader(self, stage: str, seed: int) -> DataLoader:
        if stage not in self._eval_envs:
            # ``vectorization_mode=None`` picks the env's batched implementation when it has one.
            self._eval_envs[stage] = gym.make_vec(self.hparams.env_id, num_envs=self.hparams.eval_episodes)
        dataset = EvaluationDataset(self._eval_envs[stage], self.trainer.lightning_module.greedy_actions, seed)
        return DataLoader(dataset, batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        return self._eval_dataloader("val", self.hparams.val_seed)

    def test_dataloader(self) -> DataLoader:
        return self._eval_dataloader("test", self.hparams.test_seed)

    def teardown(self, stage: str) -> None:
        for envs in self._eval_envs.values():
            envs.close()
        self._eval_envs.clear()
        if stage == "fit" and self.runner is not None:
            self.runner.envs.close()
            self.runner = None
            self.buffer = None


def _env_spaces(env_id: str) -> tuple[gym.spaces.Box, gym.spaces.Discrete]:
    """Read an env's spaces and check DQN can use them, failing early with a clear message."""
    env = gym.make(env_id)
    observation_space, action_space = env.observation_space, env.action_space
    env.close()
    if not isinstance(action_space, gym.spaces.Discrete):
        raise ValueError(
            f"data.env_id={env_id!r} has a {type(action_space).__name__} action space; "
            "DQN needs Discrete actions (e.g. CartPole-v1, Acrobot-v1, MountainCar-v0, LunarLander-v3)"
        )
    if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) != 1:
        raise ValueError(
            f"data.env_id={env_id!r} has observation space {observation_space}; "
            "the Q-network takes a flat Box observation of shape (obs_dim,)"
        )
    return observation_space, action_space
