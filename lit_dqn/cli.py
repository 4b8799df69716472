"""The ``python -m lit_dqn`` command line: Lightning's CLI over ``DQN`` and ``GymDataModule``."""

import contextlib
import inspect
import signal
import sys
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentError, auto_cli
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from lit_dqn.callbacks import GracefulStop
from lit_dqn.checkpoints import (
    AtomicCheckpointIO,
    check_checkpoint_fits,
    checkpoint_in,
    latest_last_checkpoint,
    read_checkpoint,
    report_changed_hyperparameters,
)
from lit_dqn.checks import ConfigError, check_max_steps_for, check_seed, check_writable, one_line
from lit_dqn.data import GymDataModule
from lit_dqn.episodes import EpisodeStatistics
from lit_dqn.module import DQN, NonFiniteLossError
from lit_dqn.rollout import StopRequested
from lit_dqn.video import record_checkpoint

# Named checkpoints Lightning resolves itself: SLURM's requeue checkpoint in the root directory ...
_LIGHTNING_CKPT_NAMES = {"hpc"}
# ... and names that mean something only after a fit in the same process (or to Lightning's model registry).
_IN_PROCESS_CKPT_NAMES = {"best", "registry"}
# What DQN._log_returns logs at each validation, the values EarlyStopping and ModelCheckpoint can follow.
MONITORED = ("val/return_mean", "val/return_std", "step")
# ``validate`` and ``test`` score a checkpoint; this name says the untrained network is meant.
UNTRAINED = "untrained"


def _root_or_cwd(default_root_dir: str | None) -> str:
    """The logger's ``save_dir``: Lightning's ``default_root_dir``, which defaults to the current directory."""
    return default_root_dir if default_root_dir is not None else "."


class DQNCLI(LightningCLI):
    """LightningCLI whose model takes its input and output sizes from the datamodule's env.

    Every trainer it builds writes checkpoints atomically and stops cleanly on Ctrl-C or SIGTERM
    (see ``GracefulStop``); ``--ckpt_path last`` resumes the most recent run under the logger's
    directory, and a checkpoint path is checked before training starts.

    The module makes its own optimizer (AMSGrad AdamW at ``model.lr``), so Lightning's
    ``--optimizer`` and ``--lr_scheduler`` are refused: in manual optimization a scheduler would
    never be stepped, and another optimizer would silently take the module's learning rate. (They
    stay in the parser, so the ``optimizer: null`` of every saved ``config.yaml`` still loads.)
    """

    def add_arguments_to_parser(self, parser) -> None:
        # The env decides the network's sizes, so a config never repeats them; logs and checkpoints
        # go where --trainer.default_root_dir says, as Lightning documents it.
        parser.link_arguments("data.obs_dim", "model.obs_dim", apply_on="instantiate")
        parser.link_arguments("data.n_actions", "model.n_actions", apply_on="instantiate")
        parser.link_arguments("data.obs_shape", "model.obs_shape", apply_on="instantiate")
        parser.link_arguments("data.obs_layout", "model.obs_layout", apply_on="instantiate")
        parser.link_arguments("data.obs_high", "model.obs_high", apply_on="instantiate")
        parser.link_arguments("trainer.default_root_dir", "trainer.logger.init_args.save_dir", _root_or_cwd)

    def parse_arguments(self, parser, args) -> None:
        """Check a checkpoint file is there and readable before Lightning reads its hyperparameters.

        The logger's ``save_dir`` is linked to ``trainer.default_root_dir`` (above), and jsonargparse
        would silently replace a value given for it: that is refused instead, naming the option to use.
        """
        given = sys.argv[1:] if args is None else args
        self._tokens: list[str] = [str(arg) for arg in given] if isinstance(given, list) else []
        if isinstance(given, list) and any("logger.init_args.save_dir" in str(arg) for arg in given):
            raise ConfigError(
                "trainer.logger.init_args.save_dir follows trainer.default_root_dir (logs and checkpoints "
                "go to DIR/lightning_logs): give --trainer.default_root_dir DIR instead"
            )
        super().parse_arguments(parser, args)
        self._checkpoint: tuple[str | None, dict | None] = (None, None)
        subcommand = self.config.get("subcommand")
        seed = (self.config[subcommand] if subcommand else self.config).get("seed_everything")
        if type(seed) is int:  # Lightning seeds NumPy with it, which raised a ValueError outside this range
            check_seed("seed_everything", seed)
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path in _IN_PROCESS_CKPT_NAMES:
            raise ConfigError(
                f"ckpt_path={ckpt_path!r} names a checkpoint Lightning finds only after a fit in the same Python "
                "process (or in its model registry): give the file "
                "(lightning_logs/version_N/checkpoints/best-....ckpt), a run directory, or 'last'"
            )
        if ckpt_path is not None and ckpt_path not in {"last", UNTRAINED, *_LIGHTNING_CKPT_NAMES}:
            found = str(checkpoint_in(Path(ckpt_path)))
            if found != ckpt_path:
                print(f"Using {found}", file=sys.stderr)
                self.config[subcommand]["ckpt_path"] = ckpt_path = found
            self._checkpoint = (ckpt_path, read_checkpoint(ckpt_path))  # checked for fit once the model exists

    def _parse_ckpt_path(self) -> None:
        """Keep the config's model hyperparameters when resuming a fit.

        For ``fit --ckpt_path FILE`` Lightning would replace ``model.*`` with the checkpoint's
        values, silently dropping any given on the command line, and it does not for
        ``--ckpt_path last``; here both resume with the config's values (the shapes are checked
        against the checkpoint before training). ``validate`` and ``test`` still rebuild the model
        as it was trained.
        """
        subcommand = self.config.get("subcommand")
        if subcommand != "fit":
            if subcommand and self.config[subcommand].get("ckpt_path") == "last":  # the file, before the model
                path, checkpoint = self._last_checkpoint(_log_root(self.config[subcommand]["trainer"]))
                self.config[subcommand]["ckpt_path"] = str(path)
                self._checkpoint = (str(path), checkpoint)
                print(f"Scoring {path}", file=sys.stderr)
            super()._parse_ckpt_path()
            self._data_from_checkpoint()

    @staticmethod
    def _last_checkpoint(root: Path) -> tuple[Path, dict]:
        """``--ckpt_path last``: the newest readable last checkpoint under ``root``, or one line."""
        found = latest_last_checkpoint(root)
        if found is None:
            raise ConfigError(
                f"ckpt_path='last' found no readable {root}/version_*/checkpoints/last.ckpt "
                f"(or {root}/checkpoints/last.ckpt, last-vN.ckpt)"
            )
        return found

    def _data_from_checkpoint(self) -> None:
        """``validate`` and ``test`` rebuild the data module the checkpoint was trained with: its env
        spec (id, kwargs, wrappers, image layout) and evaluation seeds, so ``test --ckpt_path FILE``
        needs no config. A ``data.*`` key named on the command line wins, even at its default value
        (``--data.eval_episodes 100`` scored the checkpoint's 20 episodes), as does one a config
        sets to other than its default."""
        _, checkpoint = self._checkpoint
        saved = (checkpoint or {}).get("datamodule_hyper_parameters")
        if not isinstance(saved, dict):
            return
        data = self.config[self.config.subcommand]["data"]
        defaults = inspect.signature(GymDataModule).parameters
        given = {key for key in defaults if key in data and data[key] != defaults[key].default}
        given |= self._data_keys_on_the_command_line(set(defaults))
        taken = []
        for key, value in saved.items():
            if key in defaults and key in data and key not in given and value != data[key]:
                data[key] = value
                taken.append(f"{key}={value!r}")
        if taken:
            print(f"data from the checkpoint: {', '.join(taken)}", file=sys.stderr)

    def _data_keys_on_the_command_line(self, keys: set[str]) -> set[str]:
        """The keys of ``keys`` a ``--data.KEY`` option names, whatever its value. jsonargparse keeps
        no record of where a value came from (its parse without defaults fails on the linked
        arguments), so the tokens are read; like argparse, it takes a unique prefix of a key too."""
        named = set()
        for token in self._tokens:
            if token.startswith("--data."):
                name = token.removeprefix("--data.").split("=", 1)[0].split(".", 1)[0]
                named |= {name} if name in keys else {key for key in keys if key.startswith(name)}
        return named

    def instantiate_classes(self) -> None:
        """A class the config names (a callback, a logger, a profiler) whose constructor refuses its
        arguments is one line naming the key and the constructor's reason; jsonargparse would show
        a traceback ending in every type the key could have held."""
        try:
            super().instantiate_classes()
        except ConfigError:
            raise
        except ValueError as error:
            key = _instantiated_key(error)
            if key is None:
                raise
            reason = error.__cause__ or error.__context__ or error
            raise ConfigError(f"{key}: {type(reason).__name__}: {one_line(reason)}") from None

    def instantiate_trainer(self, **kwargs) -> Trainer:
        section = self.config_init[self.subcommand] if self.subcommand else self.config_init
        config = section["trainer"]
        if config.get("enable_progress_bar") is False and isinstance(config.get("callbacks"), list):
            # The configs list a progress bar; turning the bar off means leaving it out, not an error.
            config["callbacks"] = [cb for cb in config["callbacks"] if not isinstance(cb, ProgressBar)]
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (ValueError, MisconfigurationException) as error:  # e.g. an accelerator this machine lacks
            raise ConfigError(f"trainer: {str(error).strip().splitlines()[0]}") from None
        for key in ("optimizer", "lr_scheduler"):
            if section.get(key) is not None:
                raise ConfigError(
                    f"--{key} is not used: the module makes its own optimizer, AMSGrad AdamW at model.lr "
                    "(manual optimization: Lightning would never step a scheduler)"
                )
        # keep=False: Lightning makes the folder when it first writes; a refusal below leaves none behind
        check_writable("trainer.default_root_dir", Path(trainer.default_root_dir), "logs and checkpoints", keep=False)
        _check_trainer_flags(trainer, fitting=self.subcommand in (None, "fit"))
        if config.get("min_epochs") is None:
            # Lightning makes min_steps imply min_epochs=1, and the replay stream's one epoch never
            # ends: every stop (EarlyStopping, model.max_episodes, Ctrl-C) would wait for max_steps.
            trainer.fit_loop.min_epochs = 0
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # keep a plugin the user chose
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        for callback in trainer.checkpoint_callbacks:  # Lightning's default one too (a config with none)
            if callback.save_last is None:  # unset (not false): every run's last.ckpt holds its final state
                callback.save_last = True
        if EpisodeStatistics.of(trainer) is None:  # the episode curves, means and progress-bar figures
            trainer.callbacks.append(EpisodeStatistics())
        trainer.callbacks.append(GracefulStop())
        return trainer

    def before_fit(self) -> None:
        self._resolve_ckpt_path("fit")
        # The schedules' checks of setup, before Lightning writes config.yaml into a new run directory
        max_steps = self.trainer.max_steps
        if self.model.hparams.eps_schedule == "linear":
            check_max_steps_for("model.eps_schedule", "linear", max_steps)
        if self.datamodule.hparams.prioritized:
            check_max_steps_for("data.prioritized", "true", max_steps)

    def before_validate(self) -> None:
        self._resolve_ckpt_path("validate")

    def before_test(self) -> None:
        self._resolve_ckpt_path("test")

    def _resolve_ckpt_path(self, subcommand: str) -> None:
        """Turn fit's ``last`` into the newest ``last.ckpt`` (validate and test did in ``_parse_ckpt_path``,
        before their model was built from it) and check a checkpoint fits before any work starts.

        Lightning only looks for ``last`` in the *new* run's directory (a new ``version_N``), where
        there is none yet, and would silently start from scratch.
        """
        ckpt_path = self.config_init[subcommand].get("ckpt_path")
        if ckpt_path is None and subcommand != "fit":
            raise ConfigError(
                f"{subcommand} scores a trained network: give --ckpt_path (a .ckpt file, a run directory, or "
                f"'last'), or --ckpt_path {UNTRAINED} to score the untrained one on purpose"
            )
        if ckpt_path == UNTRAINED and subcommand != "fit":
            self.config_init[subcommand]["ckpt_path"] = None
            print(f"Scoring the untrained network (--ckpt_path {UNTRAINED})", file=sys.stderr)
            return
        if ckpt_path == "hpc" and not any(Path(self.trainer.default_root_dir).glob("hpc_ckpt_*.ckpt")):
            raise ConfigError(  # Lightning's ValueError came after the run directory was made
                f"ckpt_path='hpc' found no hpc_ckpt_N.ckpt (SLURM's requeue checkpoint) in "
                f"{self.trainer.default_root_dir}: give a .ckpt file, a run directory, or 'last'"
            )
        if ckpt_path is None or ckpt_path in _LIGHTNING_CKPT_NAMES:
            return
        cached_path, checkpoint = self._checkpoint
        if ckpt_path == "last":  # fit's (validate and test found theirs in _parse_ckpt_path)
            logger = self.trainer.logger
            root = Path(logger.root_dir) if logger is not None else Path(self.trainer.default_root_dir)
            path, checkpoint = self._last_checkpoint(root)
            ckpt_path = cached_path = str(path)
            self.config_init[subcommand]["ckpt_path"] = ckpt_path
            print(f"Resuming from {ckpt_path}", file=sys.stderr)
        if cached_path != ckpt_path:
            checkpoint = read_checkpoint(ckpt_path)
        self._checkpoint = (None, None)  # no need to hold it while training
        check_checkpoint_fits(checkpoint, self.model, ckpt_path)
        if subcommand == "fit":
            report_changed_hyperparameters(checkpoint, self.model, self.datamodule, ckpt_path)


def _log_root(trainer: Any) -> Path:
    """Where the configured logger's runs go (``version_N/`` under it), read from the parsed trainer
    config before anything is built: ``default_root_dir`` (``trainer.logger: false``), or the logger's
    ``save_dir`` (linked to it) joined with its ``name`` (``lightning_logs`` by default, as Lightning's)."""
    root = Path(_root_or_cwd(trainer.get("default_root_dir")))
    logger = trainer.get("logger")
    if isinstance(logger, list):
        logger = logger[0] if logger else False
    if logger is False:
        return root
    init_args = getattr(logger, "init_args", None) or {}
    name = init_args.get("name", "lightning_logs") if hasattr(init_args, "get") else "lightning_logs"
    return root / name if name else root


def _instantiated_key(error: BaseException) -> str | None:
    """The config key (``trainer.callbacks``) whose class jsonargparse was building when ``error``
    was raised, from its traceback; ``None`` if jsonargparse was not building one (a bug of ours,
    which keeps its traceback)."""
    keys = []
    for frame, _ in traceback.walk_tb(error.__traceback__):
        dest = getattr(frame.f_locals.get("self"), "dest", None)  # the argument (an action) being built
        in_jsonargparse = "jsonargparse" in frame.f_code.co_filename and frame.f_code.co_name == "instantiate_classes"
        if in_jsonargparse and isinstance(dest, str):
            keys.append(dest)
    return keys[-1] if keys else None


# Keys that configs of earlier versions set, and what a user does instead: the parse error names them.
REMOVED_KEYS = {
    "data.updates_per_training_step": (
        "data.updates_per_training_step was removed: every training step is one update now, so "
        "trainer.val_check_interval, trainer.log_every_n_steps and the progress bar's refresh_rate count "
        "updates (multiply the old values by it) and learning is unchanged"
    ),
}
LEAFSPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
# DQN._log_returns gathers every rank's greedy returns before logging them, so the values are already
# the job's on every rank: Lightning's advice to sync them (again) does not apply.
SYNC_DIST_ADVICE = r"It is recommended to use `self\.log\('(val|test)/return_(mean|std)'"
RECORD_HELP = (
    "Videos of a trained agent: python -m lit_dqn record CKPT [--episodes 3] (python -m lit_dqn record --help). "
    "Hyperparameter search: python -m lit_dqn tune --config CONFIG --search SPACE (python -m lit_dqn tune --help)"
)


def record(args: list[str]) -> int:
    """``python -m lit_dqn record CKPT``: jsonargparse builds the options from ``record_checkpoint``'s
    signature and docstring, as LightningCLI does for ``fit``."""
    try:
        auto_cli(record_checkpoint, args=args, prog="python -m lit_dqn record", exit_on_error=False)
    except ArgumentError as error:
        print(f"lit_dqn record: error: {one_line(error)} (see python -m lit_dqn record --help)", file=sys.stderr)
        return 2
    except ConfigError as error:
        print(f"lit_dqn record: error: {error}", file=sys.stderr)
        return 2
    except StopRequested as stop:  # Ctrl-C, SIGTERM: the videos written so far stay
        print(f"lit_dqn record: {stop}", file=sys.stderr)
        return 128 + stop.signum
    return 0


@contextlib.contextmanager
def known_warnings_filtered() -> Iterator[None]:
    """Leave out two warnings every run would print and no user can act on."""
    with warnings.catch_warnings():
        # Lightning's own use of a torch class deprecated in torch 2.10 warns in every run; only a
        # Lightning release can fix it.
        warnings.filterwarnings("ignore", LEAFSPEC_WARNING, FutureWarning, "lightning.pytorch.utilities._pytree")
        warnings.filterwarnings("ignore", SYNC_DIST_ADVICE, PossibleUserWarning)
        yield


def tune(args: list[str]) -> int:
    """``python -m lit_dqn tune``: an Optuna study (``lit_dqn.tuning``), with the ``tune`` extra."""
    try:
        from lit_dqn.tuning import main as tune_main
    except ImportError as error:
        print(f'lit_dqn tune: error: tune needs Optuna ({error}): pip install "lit-dqn[tune]"', file=sys.stderr)
        return 2
    return tune_main(args)


def _check_trainer_flags(trainer: Trainer, fitting: bool) -> None:
    """Trainer flags that cannot work with one DQN update per batch of an endless replay stream, each
    one line now rather than a traceback at the first update, or a flag silently without effect."""
    clip = next(
        (key for key in ("gradient_clip_val", "gradient_clip_algorithm") if getattr(trainer, key) is not None), None
    )
    if clip is not None:
        raise ConfigError(
            f"trainer.{clip} is not used: the module clips its own gradients, by value, at "
            "model.grad_clip_value (default 100; null for none)"
        )
    if trainer.accumulate_grad_batches != 1:
        raise ConfigError(
            f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches} is not allowed: each batch is one "
            "DQN update, against the target network of that moment; for bigger updates raise data.batch_size"
        )
    if trainer.precision not in ("32-true", "16-mixed", "bf16-mixed"):
        raise ConfigError(
            f"trainer.precision={trainer.precision!r} is not supported: replay keeps float32 observations and "
            "the networks train in float32; use 32-true, or 16-mixed or bf16-mixed (autocast)"
        )
    interval = getattr(trainer, "val_check_interval", None)  # a time-based interval sets no such attribute
    if isinstance(interval, int) and interval < 1:
        raise ConfigError(f"trainer.val_check_interval={interval} must be at least 1 (updates between validations)")
    endless = trainer.limit_train_batches == 1.0 and isinstance(trainer.limit_train_batches, float)
    fraction = isinstance(interval, float) and interval < 1.0  # 1.0, the default, validates at an epoch's end
    if fitting and trainer.check_val_every_n_epoch is not None and fraction and endless:
        raise ConfigError(
            f"trainer.val_check_interval={interval:g} is a fraction of an epoch, and the replay stream is one "
            "endless epoch, so validation would never run: give it in updates (an int, e.g. 1000)"
        )
    for callback in trainer.callbacks:
        monitor = getattr(callback, "monitor", None) if isinstance(callback, EarlyStopping | ModelCheckpoint) else None
        if monitor is not None and monitor not in MONITORED:
            raise ConfigError(
                f"{type(callback).__name__} monitors {monitor!r}, which callbacks never see: monitor "
                f"{' or '.join(MONITORED)} (train/* scalars go to the loggers only)"
            )
    for key in ("limit_val_batches", "limit_test_batches"):
        value = getattr(trainer, key)
        if isinstance(value, float) and 0.0 < value < 1.0:
            raise ConfigError(
                f"trainer.{key}={value:g} is not allowed: an evaluation is one batch of data.eval_episodes "
                "episodes; use 0 (none), 1.0 or an int (all of it), and data.eval_episodes for fewer episodes"
            )


def main(args: list[str] | None = None) -> int:
    """Run the CLI; a configuration or checkpoint problem ends it with one line on stderr, not a traceback."""
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["record"]:
        return record(argv[1:])
    if argv[:1] == ["tune"]:
        return tune(argv[1:])
    try:
        with known_warnings_filtered():
            cli = DQNCLI(
                DQN,
                GymDataModule,
                args=args,
                save_config_kwargs={"overwrite": True},
                parser_kwargs={"exit_on_error": False, "epilog": RECORD_HELP},  # raise parse errors: one line below
            )
    except ArgumentError as error:  # unknown keys, wrong types: jsonargparse names the key and the type
        message = one_line(error)
        message = next((hint for key, hint in REMOVED_KEYS.items() if key in message), message)
        print(f"lit_dqn: error: {message} (see python -m lit_dqn --help)", file=sys.stderr)
        return 2
    except (ConfigError, NonFiniteLossError) as error:
        print(f"lit_dqn: error: {error}", file=sys.stderr)
        return 2 if isinstance(error, ConfigError) else 1
    except StopRequested as stop:  # Ctrl-C, SIGTERM during a warm-up, an evaluation or a video (GracefulStop)
        print(f"lit_dqn: {stop}", file=sys.stderr)
        return 128 + stop.signum
    except SIGTERMException:  # Lightning's own stop (a SystemExit of status 0), between updates or batches
        print("lit_dqn: stopped by SIGTERM", file=sys.stderr)
        return 128 + signal.SIGTERM
    stops = [cb for cb in cli.trainer.callbacks if isinstance(cb, GracefulStop) and cb.signum is not None]
    return 128 + stops[0].signum if stops else 0  # the shell's convention for "ended by signal N"
