"""DQN as a LightningModule: Q-networks, ε-greedy acting, the TD update and its logging."""

import copy
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torchmetrics.aggregation import RunningMean

from lit_dqn.data import ReplayBatch
from lit_dqn.exploration import exponential_epsilon
from lit_dqn.losses import td_loss, td_targets
from lit_dqn.networks import QNetwork, soft_update
from lit_dqn.plots import plot_durations


class DQN(L.LightningModule):
    """Deep Q-learning with a soft-updated target network (the PyTorch DQN tutorial's agent).

    Args:
        obs_dim: observation length; linked from ``data.obs_dim`` by the CLI.
        n_actions: number of discrete actions; linked from ``data.n_actions`` by the CLI.
        hidden_sizes: widths of the Q-network's hidden layers.
        lr: AdamW learning rate (amsgrad, as in the tutorial).
        gamma: discount factor.
        tau: soft target update rate, θ′ ← τθ + (1−τ)θ′ after every optimizer step.
        eps_start: ε at the first env step.
        eps_end: ε as the step count goes to infinity.
        eps_decay: time constant of ε's exponential decay, in env steps.
        double_dqn: pick the next action with the online network and evaluate it with the target
            network (van Hasselt et al., 2016), which curbs Q-value over-estimation.
        max_episodes: stop training after this many episodes (``None``: stop on the Trainer's limits).
    """

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        hidden_sizes: Sequence[int] = (128, 128),
        lr: float = 1e-4,
        gamma: float = 0.99,
        tau: float = 0.005,
        eps_start: float = 0.9,
        eps_end: float = 0.05,
        eps_decay: float = 1000.0,
        double_dqn: bool = False,
        max_episodes: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.policy_net = QNetwork(obs_dim, n_actions, hidden_sizes)
        self.target_net = copy.deepcopy(self.policy_net).requires_grad_(False)
        self.duration_mean = RunningMean(window=100)
        self.episode_durations: list[int] = []

    def forward(self, obs: Tensor) -> Tensor:
        """Q-values ``[B, n_actions]`` of observations ``[B, obs_dim]``."""
        return self.policy_net(obs)

    def epsilon(self, env_step: int) -> float:
        hp = self.hparams
        return exponential_epsilon(env_step, hp.eps_start, hp.eps_end, hp.eps_decay)

    @torch.no_grad()
    def greedy_actions(self, obs: np.ndarray) -> np.ndarray:
        """argmax_a Q(s, a) for observations ``[N, obs_dim]`` from the env (on the CPU)."""
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        return self.policy_net(obs_t).argmax(dim=1).cpu().numpy()

    def act(self, obs: np.ndarray, env_step: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        """ε-greedy actions ``[N]`` for observations ``[N, obs_dim]``; also returns the ε used.

        Both random draws are taken every call, whatever they decide, so the RNG stream, and with it
        the whole run, depends only on the seed.
        """
        eps = self.epsilon(env_step)
        n = obs.shape[0]
        explore = rng.random(n) < eps
        actions = rng.integers(self.hparams.n_actions, size=n)
        if not explore.all():
            actions = np.where(explore, actions, self.greedy_actions(obs))
        return actions, eps

    def on_train_batch_start(self, batch: ReplayBatch, batch_idx: int) -> None:
        """Record the episodes that ended while this batch was collected."""
        for length in batch.episode_lengths:
            self.episode_durations.append(length)
            self.duration_mean.update(float(length))
            episode = len(self.episode_durations)
            metrics = {"train/episode_duration": length, "train/episode_duration_mean100": self.duration_mean.compute()}
            for logger in self.loggers:  # x axis: episode index, as in the tutorial's plot
                logger.log_metrics(metrics, step=episode)
        if batch.episode_lengths:
            self.log_dict(
                {
                    "episodes": float(batch.episodes),
                    "duration": float(batch.episode_lengths[-1]),
                    "mean100": self.duration_mean.compute(),
                    "eps": batch.epsilon,
                },
                prog_bar=True,
                logger=False,
                batch_size=1,
            )
        max_episodes = self.hparams.max_episodes
        if max_episodes is not None and batch.episodes >= max_episodes:
            self.trainer.should_stop = True

    def training_step(self, batch: ReplayBatch, batch_idx: int) -> Tensor:
        obs, actions, rewards, next_obs, terminated = batch.transitions
        q_values = self.policy_net(obs)  # [B, n_actions]
        with torch.no_grad():
            next_q_target = self.target_net(next_obs)  # [B, n_actions]
            next_q_online = self.policy_net(next_obs) if self.hparams.double_dqn else None
        targets = td_targets(rewards, next_q_target, terminated, self.hparams.gamma, next_q_online)
        loss = td_loss(q_values, actions, targets)
        if self._is_logging_step():
            self.log_dict(
                {
                    "train/loss": loss,
                    "train/q_mean": q_values.detach().mean(),
                    "train/epsilon": batch.epsilon,
                    "train/replay_size": float(batch.replay_size),
                    "train/env_steps": float(batch.env_steps),
                    "train/episodes": float(batch.episodes),
                },
                batch_size=obs.shape[0],
            )
        return loss

    def _is_logging_step(self) -> bool:
        """Log step scalars only every ``trainer.log_every_n_steps``: ``self.log`` costs more than the step."""
        every = self.trainer.log_every_n_steps
        return every > 0 and (self.global_step + 1) % every == 0

    def on_train_batch_end(self, outputs: Tensor, batch: ReplayBatch, batch_idx: int) -> None:
        """Soft target update after each optimizer step."""
        soft_update(self.target_net, self.policy_net, self.hparams.tau)

    def validation_step(self, returns: Tensor, batch_idx: int) -> None:
        self._log_returns("val", returns)

    def test_step(self, returns: Tensor, batch_idx: int) -> None:
        self._log_returns("test", returns)

    def _log_returns(self, stage: str, returns: Tensor) -> None:
        self.log_dict(
            {f"{stage}/return_mean": returns.mean(), f"{stage}/return_std": returns.std(unbiased=False)},
            prog_bar=True,
            batch_size=returns.numel(),
        )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.policy_net.parameters(), lr=self.hparams.lr, amsgrad=True)

    def on_fit_end(self) -> None:
        """Write the tutorial's duration plot into the run directory and to TensorBoard."""
        if not self.episode_durations or self.logger is None or self.logger.log_dir is None:
            return
        figure = plot_durations(self.episode_durations, Path(self.logger.log_dir) / "episode_durations.png")
        if isinstance(self.logger, TensorBoardLogger):
            self.logger.experiment.add_figure("train/episode_durations", figure, self.global_step)
            self.logger.experiment.flush()
