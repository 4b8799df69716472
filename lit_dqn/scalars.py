"""Per-update scalars written straight to the loggers, on Lightning's logging steps only.

``self.log`` would keep a result per key that Lightning walks after every training step, logged or
not: ~50 µs per update on a CPU, about 4% of a CartPole update (``benchmarks/README.md``). So the
``train/*`` scalars (one update's loss, one episode's return, the 100-episode means) go to the
loggers at their own x axis, and are in TensorBoard but not in ``trainer.callback_metrics``;
``val/*`` and ``test/*`` go through ``self.log``.
"""

from pathlib import Path

import lightning as L


def is_logging_step(trainer: L.Trainer, update: int) -> bool:
    """Whether ``update`` (counted from 1, across epochs: finite ones restart ``batch_idx``) is a
    ``trainer.log_every_n_steps``-th one, when Lightning writes logs."""
    every = trainer.log_every_n_steps
    return every > 0 and update % every == 0


def write_scalars(trainer: L.Trainer, metrics: dict[str, float], step: int) -> None:
    """Scalars that are already what they say, to every logger at x = ``step``."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)


def run_dir(trainer: L.Trainer) -> Path | None:
    """Where a run's plots and videos go: the logger's version folder, or without a logger
    ``trainer.default_root_dir``, where Lightning then puts the checkpoints."""
    logger = trainer.logger
    if logger is None:
        return Path(trainer.default_root_dir)
    return Path(logger.log_dir) if logger.log_dir is not None else None
