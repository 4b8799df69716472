"""The tutorial's ``plot_durations``, grown into a picture of the whole run: training episodes,
greedy validation against the env's solve threshold, and the checkpoint that was kept."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import lightning as L
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure

from lit_dqn.episodes import EpisodeStatistics
from lit_dqn.scalars import run_dir


class Validation(NamedTuple):
    """One greedy validation run during training."""

    episodes: int  # training episodes ended when it ran: its place on the plot's x axis
    step: int  # updates done
    mean: float  # mean greedy return over data.eval_episodes
    std: float


def running_mean(values: Sequence[float], window: int = 100) -> np.ndarray:
    """Trailing mean over the last ``window`` values (fewer at the start), one per value."""
    values = np.asarray(values, dtype=np.float64)
    cumsum = np.cumsum(np.insert(values, 0, 0.0))
    ends = np.arange(1, len(values) + 1)
    counts = np.minimum(ends, window)
    return (cumsum[ends] - cumsum[ends - counts]) / counts


def plot_episodes(
    returns: Sequence[float],
    durations: Sequence[int],
    path: Path | str,
    validations: Sequence[Validation] = (),
    threshold: float | None = None,
    kept: Validation | None = None,
    window: int = 100,
) -> Figure:
    """Plot each training episode's return and duration with their trailing ``window``-episode means,
    side by side, and save to ``path``.

    The return panel also shows the greedy validation return (mean ± std over its episodes) at the
    training episode it ran after, the env's solve ``threshold`` and the ``kept`` checkpoint's
    validation: ε-greedy training episodes stay short of what the greedy policy scores, so without
    them a solved run can look like a failure.
    """
    # A bare Figure, not pyplot: no GUI backend or global figure state, so it works headless.
    figure = Figure(figsize=(12, 4.5))
    episodes = np.arange(1, len(durations) + 1)
    return_ax, duration_ax = figure.subplots(1, 2)
    panels = ((return_ax, "return", "Return", returns), (duration_ax, "duration", "Duration (steps)", durations))
    for ax, name, unit, values in panels:
        ax.plot(episodes, values, label=f"training {name} (ε-greedy)", alpha=0.5)
        ax.plot(episodes, running_mean(values, window), label=f"{window}-episode mean", linewidth=2)
        ax.set_xlabel("Training episode")
        ax.set_ylabel(unit)
        ax.set_title(f"Episode {name}s")
    if validations:
        x, mean, std = (np.array([getattr(v, field) for v in validations]) for field in ("episodes", "mean", "std"))
        return_ax.fill_between(x, mean - std, mean + std, color="tab:green", alpha=0.2)
        return_ax.plot(x, mean, "o-", color="tab:green", markersize=3, label="greedy validation (mean ± std)")
    if kept is not None:
        return_ax.plot(
            kept.episodes, kept.mean, "*", color="black", markersize=14, label=f"kept checkpoint (step {kept.step})"
        )
    if threshold is not None:
        return_ax.axhline(threshold, color="tab:red", linestyle="--", label=f"solved at {threshold:g}")
    for ax in (return_ax, duration_ax):
        ax.legend(loc="best", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return figure


class TrainingPlot(L.Callback):
    """At the end of ``fit``, plot the run (``plot_episodes``) into the run directory and TensorBoard.

    It keeps each validation's result as training goes, in the checkpoint too, so a resumed run
    plots its whole history.

    Args:
        filename: the PNG's name in the run directory (``lightning_logs/version_N``).
    """

    def __init__(self, filename: str = "episode_durations.png") -> None:
        self.filename = filename
        self.validations: list[Validation] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        if trainer.sanity_checking or trainer.state.fn != "fit" or "val/return_mean" not in metrics:
            return
        statistics = EpisodeStatistics.of(trainer)
        episodes = len(statistics.durations) if statistics is not None else 0
        mean, std = float(metrics["val/return_mean"]), float(metrics.get("val/return_std", 0.0))
        self.validations.append(Validation(episodes, trainer.global_step, mean, std))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = trainer.logger
        statistics = EpisodeStatistics.of(trainer)
        if statistics is None or not statistics.durations:
            return
        log_dir = run_dir(trainer)
        if not trainer.is_global_zero or log_dir is None:
            return
        figure = plot_episodes(
            statistics.returns,
            statistics.durations,
            log_dir / self.filename,
            self.validations,
            self._threshold(trainer),
            self._kept(trainer),
        )
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure("train/episode_durations", figure, trainer.global_step)
            logger.experiment.flush()

    @staticmethod
    def _threshold(trainer: L.Trainer) -> float | None:
        """The env's own ``reward_threshold`` (Gymnasium's registration): what "solved" means for it."""
        env_id = getattr(getattr(trainer.datamodule, "hparams", {}), "env_id", None)
        spec = gym.registry.get(env_id) if env_id else None
        return spec.reward_threshold if spec is not None else None

    def _kept(self, trainer: L.Trainer) -> Validation | None:
        """The validation whose score the best checkpoint holds (the first to reach it: only a strictly
        better score replaces a kept checkpoint)."""
        checkpoint = trainer.checkpoint_callback
        score = getattr(checkpoint, "best_model_score", None)
        if score is None or getattr(checkpoint, "monitor", None) != "val/return_mean":
            return None
        return next((v for v in self.validations if v.mean == float(score)), None)

    def state_dict(self) -> dict[str, Any]:
        return {"validations": [list(v) for v in self.validations]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validations = [Validation(*v) for v in state_dict.get("validations", [])]
