"""Helpers the DDP tests load in every rank's process: an env whose episodes all last exactly 10
steps, so every rank is between episodes at the same update (where a resume is exact), and a
callback that writes what each rank saw."""

import os
import signal
from pathlib import Path

import gymnasium as gym
import lightning as L
import numpy as np
import torch

from lit_dqn.episodes import EpisodeStatistics

EPISODE_LENGTH = 10


class Corridor(gym.Env):
    """Random observations; reward 1 for the action that matches the first coordinate's sign."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(4,), dtype=np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._obs = self.np_random.standard_normal(4).astype(np.float32)
        return self._obs, {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        reward = float(int(action) == int(self._obs[0] > 0))
        self._obs = self.np_random.standard_normal(4).astype(np.float32)
        return self._obs, reward, False, False, {}


gym.register("Corridor-v0", entry_point=Corridor, max_episode_steps=EPISODE_LENGTH)


class MaskedCorridor(Corridor):
    """Corridor whose action 1 is invalid wherever the second coordinate is positive
    (``info["action_mask"]``). An invalid action raises, so one sent anywhere (exploration,
    evaluation, any rank) fails the run."""

    def _info(self) -> dict:
        return {"action_mask": np.array([True, self._obs[1] <= 0])}

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        obs, _ = super().reset(seed=seed, options=options)
        return obs, self._info()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        if not self._info()["action_mask"][int(action)]:
            raise ValueError(f"MaskedCorridor got action {action}, which its mask forbids")
        obs, reward, terminated, truncated, _ = super().step(action)
        return obs, reward, terminated, truncated, self._info()


gym.register("MaskedCorridor-v0", entry_point=MaskedCorridor, max_episode_steps=EPISODE_LENGTH)


class RankProbe(L.Callback):
    """Per rank, write ``rank{N}.pt``: the losses of the steps this process ran, the final weights,
    the rank's own counters and the start of its replay buffer, and (noisy nets) the online net's
    noise that acted for each batch."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.losses: list[float] = []
        self.acting_noise: dict[int, torch.Tensor] = {}  # update about to run -> the noise its batch acted with

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        noise = [b for name, b in pl_module.policy_net.named_buffers() if name.endswith(("noise_in", "noise_out"))]
        if noise:  # the batch was drawn (the env stepped) before this hook, the update's new noise comes after
            self.acting_noise[trainer.global_step] = torch.cat(noise).clone()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].item())

    def on_train_end(self, trainer, pl_module) -> None:
        runner = trainer.datamodule.runner
        masks = runner.buffer.next_mask
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "losses": self.losses,
            "acting_noise": self.acting_noise,
            "state_dict": {k: v.clone() for k, v in pl_module.state_dict().items()},
            "env_steps": runner.env_steps,
            "episodes": runner.episodes,
            "obs": runner.buffer.state_dict()["storage"]["obs"][:64].clone(),
            "next_mask": None if masks is None else masks[: len(runner.buffer)].clone(),
            "job": (pl_module.job_episodes, pl_module.job_env_steps),
            "history": list(EpisodeStatistics.of(trainer).durations),
        }
        torch.save(state, self.out_dir / f"rank{trainer.global_rank}.pt")


class SignalAt(L.Callback):
    """Send SIGTERM to rank 0's process (the one a user or a scheduler signals) after update ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and trainer.global_rank == 0:
            os.kill(os.getpid(), signal.SIGTERM)
