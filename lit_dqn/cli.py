"""The ``python -m lit_dqn`` command line: Lightning's CLI over ``DQN`` and ``GymDataModule``."""

import sys
from pathlib import Path

from jsonargparse import ArgumentError
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lit_dqn.callbacks import GracefulStop
from lit_dqn.checkpoints import (
    AtomicCheckpointIO,
    check_checkpoint_fits,
    latest_last_checkpoint,
    read_checkpoint,
    report_changed_hyperparameters,
)
from lit_dqn.checks import ConfigError
from lit_dqn.data import GymDataModule
from lit_dqn.module import DQN, NonFiniteLossError

# Named checkpoints Lightning resolves itself from the current run's ModelCheckpoint.
_LIGHTNING_CKPT_NAMES = {"best", "hpc", "registry"}


class DQNCLI(LightningCLI):
    """LightningCLI whose model takes its input and output sizes from the datamodule's env.

    Every trainer it builds writes checkpoints atomically and stops cleanly on Ctrl-C or SIGTERM
    (see ``GracefulStop``); ``--ckpt_path last`` resumes the most recent run under the logger's
    directory, and a checkpoint path is checked before training starts.
    """

    def add_arguments_to_parser(self, parser) -> None:
        # The env decides the network's sizes, so a config never repeats them.
        parser.link_arguments("data.obs_dim", "model.obs_dim", apply_on="instantiate")
        parser.link_arguments("data.n_actions", "model.n_actions", apply_on="instantiate")

    def parse_arguments(self, parser, args) -> None:
        """Check a checkpoint file is there and readable before Lightning reads its hyperparameters."""
        super().parse_arguments(parser, args)
        self._checkpoint: tuple[str | None, dict | None] = (None, None)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path is not None and ckpt_path not in {"last", *_LIGHTNING_CKPT_NAMES}:
            self._checkpoint = (ckpt_path, read_checkpoint(ckpt_path))  # checked for fit once the model exists

    def _parse_ckpt_path(self) -> None:
        """Keep the config's model hyperparameters when resuming a fit.

        For ``fit --ckpt_path FILE`` Lightning would replace ``model.*`` with the checkpoint's
        values, silently dropping any given on the command line, and it does not for
        ``--ckpt_path last``; here both resume with the config's values (the shapes are checked
        against the checkpoint before training). ``validate`` and ``test`` still rebuild the model
        as it was trained.
        """
        if self.config.get("subcommand") != "fit":
            super()._parse_ckpt_path()

    def instantiate_trainer(self, **kwargs) -> Trainer:
        config = (self.config_init[self.subcommand] if self.subcommand else self.config_init)["trainer"]
        if config.get("enable_progress_bar") is False and isinstance(config.get("callbacks"), list):
            # The configs list a progress bar; turning the bar off means leaving it out, not an error.
            config["callbacks"] = [cb for cb in config["callbacks"] if not isinstance(cb, ProgressBar)]
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (ValueError, MisconfigurationException) as error:  # e.g. an accelerator this machine lacks
            raise ConfigError(f"trainer: {str(error).strip().splitlines()[0]}") from None
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # keep a plugin the user chose
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        trainer.callbacks.append(GracefulStop())
        return trainer

    def before_fit(self) -> None:
        self._resolve_ckpt_path("fit")

    def before_validate(self) -> None:
        self._resolve_ckpt_path("validate")

    def before_test(self) -> None:
        self._resolve_ckpt_path("test")

    def _resolve_ckpt_path(self, subcommand: str) -> None:
        """Turn ``last`` into the newest ``last.ckpt`` and check a checkpoint fits before any work starts.

        Lightning only looks for ``last`` in the *new* run's directory (a new ``version_N``), where
        there is none yet, and would silently start from scratch.
        """
        ckpt_path = self.config_init[subcommand].get("ckpt_path")
        if ckpt_path is None or ckpt_path in _LIGHTNING_CKPT_NAMES:
            return
        if ckpt_path == "last":
            logger = self.trainer.logger
            root = Path(logger.root_dir) if logger is not None else Path(self.trainer.default_root_dir)
            found = latest_last_checkpoint(root)
            if found is None:
                raise ConfigError(f"ckpt_path='last' found no {root}/version_*/checkpoints/last.ckpt to resume from")
            ckpt_path = str(found)
            self.config_init[subcommand]["ckpt_path"] = ckpt_path
            print(f"Resuming from {ckpt_path}", file=sys.stderr)
        cached_path, checkpoint = self._checkpoint
        if cached_path != ckpt_path:  # 'last', resolved just above
            checkpoint = read_checkpoint(ckpt_path)
        self._checkpoint = (None, None)  # no need to hold it while training
        check_checkpoint_fits(checkpoint, self.model, ckpt_path)
        if subcommand == "fit":
            report_changed_hyperparameters(checkpoint, self.model, ckpt_path)


def main(args: list[str] | None = None) -> int:
    """Run the CLI; a configuration or checkpoint problem ends it with one line on stderr, not a traceback."""
    try:
        cli = DQNCLI(
            DQN,
            GymDataModule,
            args=args,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"exit_on_error": False},  # raise parse errors, so they print as one line below
        )
    except ArgumentError as error:  # unknown keys, wrong types: jsonargparse names the key and the type
        message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        print(f"lit_dqn: error: {message} (see python -m lit_dqn --help)", file=sys.stderr)
        return 2
    except (ConfigError, NonFiniteLossError) as error:
        print(f"lit_dqn: error: {error}", file=sys.stderr)
        return 2 if isinstance(error, ConfigError) else 1
    stops = [cb for cb in cli.trainer.callbacks if isinstance(cb, GracefulStop) and cb.signum is not None]
    return 128 + stops[0].signum if stops else 0  # the shell's convention for "ended by signal N"
