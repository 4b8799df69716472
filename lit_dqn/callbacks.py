"""Callbacks that show DQN's episode statistics."""

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class EpisodeProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar plus the episode count, last duration, 100-episode mean and ε.

    The numbers come from ``DQN.progress`` and are read only when the bar refreshes; logging them
    with ``self.log(prog_bar=True)`` would cost more than a training step every time an episode ends.
    """

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return {**getattr(pl_module, "progress", {}), **metrics}
