"""``python -m lit_dqn tune``: an Optuna study over ``fit``'s own config keys, in a real database.

A **search space** is a YAML file mapping the dotted keys of ``fit`` (``model.lr``, ``data.batch_size``:
the keys of ``python -m lit_dqn fit --help``) to distributions::

    model.lr: {float: [1.0e-5, 1.0e-2], log: true}        # log-uniform
    model.gamma: {float: [1.0e-3, 0.1], log: true, one_minus: true}   # 1 - gamma log-uniform
    data.n_step: {int: [1, 5]}                            # also step: K, log: true
    model.hidden_sizes: {categorical: [[64], [64, 64], [256, 256]]}

Every key and every end of every range is parsed and built (model and data) before the first trial,
so a key ``fit`` does not know, a value it refuses, or an empty range is one line up front.

Each **trial** is one ``fit`` per seed, in this process (no new interpreter per trial), from the
study's config with the trial's values as dotted overrides, videos off, in its own run directory
``OUTPUT/trial_NNNN`` (TensorBoard events, ``config.yaml``, the best checkpoint). Its value is:

- ``best_return``: the best greedy validation return (``val/return_mean``) of the run, maximised;
- ``env_steps_to_solve``: the env steps at the first validation whose return reaches the threshold
  (the config's ``EarlyStopping`` ``stopping_threshold`` unless given), minimised; a seed that never
  gets there counts ``UNSOLVED_ENV_STEPS`` (10⁹) plus how far its best return fell short, so it
  ranks below every seed that solves, whatever either's env-step budget, and a trial's mean over
  seeds ranks first by how many seeds solved.

With several seeds the value is their mean. A lit_dqn run is one endless epoch, so pruning cannot
use Optuna's per-epoch Lightning callback: ``ValidationReport`` reports each validation's return at
its update count (seed ``k``'s run offset by ``k * max_steps``; negated for a minimised objective,
so that lower is better as the study's direction says) and ends a trial the pruner rejects at once.

The **study** lives in any storage Optuna accepts: SQLite on one machine, a PostgreSQL or MySQL URL
for many (start the same command on each: they share the study). ``--n_jobs K`` runs K worker
processes here. Each command runs ``--n_trials`` trials more (Optuna's meaning: a re-run continues
the study); Ctrl-C stops every worker, and the trial it interrupted is recorded as failed. After the
trials: ``best.yaml``, the best trial's complete config (``fit --config best.yaml`` reproduces its
first seed bit for bit on CPU, with the same number of torch threads), and Optuna's optimization
history and parameter importances as PNG files in ``OUTPUT``.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import hashlib
import inspect
import json
import logging
import math
import multiprocessing
import os
import random
import signal
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import optuna
import torch
import yaml
from jsonargparse import ArgumentError
from jsonargparse.typing import NonNegativeInt, PositiveInt
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from lit_dqn.callbacks import GracefulStop
from lit_dqn.checks import ConfigError, check_seed, check_writable, one_line
from lit_dqn.cli import DQNCLI, known_warnings_filtered
from lit_dqn.data import GymDataModule
from lit_dqn.module import DQN, NonFiniteLossError
from lit_dqn.rollout import StopRequested
from lit_dqn.video import GreedyVideo

OBJECTIVES = {"best_return": "maximize", "env_steps_to_solve": "minimize"}
DISTRIBUTIONS = ("float", "int", "categorical")
VALIDATION_METRIC = "val/return_mean"
SEED_SPAN_UNBOUNDED = 10**12  # steps between seeds' reports when trainer.max_steps is unbounded
# Study attributes a later command must match: the same study must mean the same experiment. The
# config is matched by its file's contents (``config_sha256``), not by how its path was written.
STUDY_KEYS = ("fit_args", "search", "objective", "threshold", "seeds")


@dataclass(frozen=True)
class Parameter:
    """One dotted ``fit`` key and the distribution its values are drawn from."""

    key: str
    kind: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    one_minus: bool = False  # float only: the range is of 1 - value (a discount near 1, sampled log-uniformly)
    choices: tuple[Any, ...] = ()

    @property
    def name(self) -> str:
        """The parameter's name in the study (what Optuna's plots and the dashboard show)."""
        return f"1 - {self.key}" if self.one_minus else self.key

    def suggest(self, trial: optuna.Trial) -> Any:
        """The trial's value for ``key`` (the config value, not the sampled 1 - value)."""
        if self.kind == "categorical":
            # Optuna stores plain values only: a list or dict choice is stored as its JSON text.
            labels = [_label(choice) for choice in self.choices]
            label = trial.suggest_categorical(self.name, labels)
            return self.choices[labels.index(label)]
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        value = trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)
        return 1.0 - value if self.one_minus else value

    def ends(self) -> list[Any]:
        """Config values at the ends of the range, or every choice: each is checked before any trial."""
        if self.kind == "categorical":
            return list(self.choices)
        low, high = (int(self.low), int(self.high)) if self.kind == "int" else (self.low, self.high)
        if self.kind == "int" and self.step:
            high = low + (high - low) // int(self.step) * int(self.step)
        return [1.0 - low, 1.0 - high] if self.one_minus else [low, high]


def _label(choice: Any) -> Any:
    plain = choice is None or isinstance(choice, bool | int | float | str)
    return choice if plain else json.dumps(choice)


def load_search_space(path: str | Path) -> list[Parameter]:
    """Read a search space YAML; each mistake is one line naming the key and what is allowed."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"search={str(path)!r} cannot be read: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"search={str(path)!r} is not YAML: {' '.join(str(error).split())}") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"search={str(path)!r} must map dotted fit keys (model.lr, data.batch_size) to distributions")
    return [_parameter(str(path), str(key), spec) for key, spec in raw.items()]


def _parameter(path: str, key: str, spec: Any) -> Parameter:
    where = f"search space {path}: {key}"
    kinds = [kind for kind in DISTRIBUTIONS if isinstance(spec, dict) and kind in spec]
    if len(kinds) != 1:
        raise ConfigError(
            f"{where} must be one of {{float: [low, high]}}, {{int: [low, high]}} or {{categorical: [a, b, ...]}}"
        )
    kind = kinds[0]
    unknown = set(spec) - {kind, "log", "step", "one_minus"}
    if unknown or (kind == "categorical" and len(spec) > 1):
        extra = sorted(unknown) if unknown else sorted(set(spec) - {kind})
        raise ConfigError(f"{where}: {extra} not allowed here (a range takes log, step and, for float, one_minus)")
    if kind == "categorical":
        choices = spec[kind]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: categorical must list at least one choice")
        if len({json.dumps(choice, sort_keys=True) for choice in choices}) != len(choices):
            raise ConfigError(f"{where}: categorical lists a choice twice")
        return Parameter(key, "categorical", choices=tuple(choices))
    bounds = spec[kind]
    if isinstance(bounds, list):  # PyYAML reads 1e-5 (no dot) as text: read it as the number it is
        bounds = [_number(b) for b in bounds]
    number = int if kind == "int" else (int, float)
    if (
        not isinstance(bounds, list)
        or len(bounds) != 2
        or not all(isinstance(b, number) and not isinstance(b, bool) for b in bounds)
    ):
        raise ConfigError(f"{where}: {kind} takes [low, high], two {'integers' if kind == 'int' else 'numbers'}")
    low, high = bounds
    log, step, one_minus = spec.get("log", False), spec.get("step"), spec.get("one_minus", False)
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ConfigError(f"{where}: the range [{low}, {high}] is empty: low must be below high")
    if log not in (True, False) or one_minus not in (True, False):
        raise ConfigError(f"{where}: log and one_minus are true or false")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range must be above 0 (low={low})")
    if step is not None and (log or not isinstance(step, number) or step <= 0):
        raise ConfigError(f"{where}: step must be a positive {kind} and cannot go with log")
    if one_minus and kind != "float":
        raise ConfigError(f"{where}: one_minus is for float ranges")
    return Parameter(key, kind, float(low), float(high), log, step, one_minus)


def _number(value: Any) -> Any:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    return value


class _ParseOnlyCLI(DQNCLI):
    """The ``fit`` parser alone: the CLI's own parsing and links, with nothing instantiated."""

    def instantiate_classes(self) -> None:
        pass


def _instantiate(parser: Any, config: Any) -> Any:
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    return instantiate(config)


@dataclass
class Settings:
    """What every worker of one command needs (picklable: workers are spawned processes)."""

    config: str
    search: str
    fit_args: list[str]
    objective: str
    threshold: float | None
    seeds: list[int]
    storage: str
    study_name: str
    output_dir: str
    pruner: str
    n_startup_trials: int
    n_warmup_steps: int
    sampler_seed: int | None
    max_steps: int = 0  # the config's trainer.max_steps (0: none), to keep each seed's reports apart
    threads: int | None = None  # torch threads of a spawned worker
    output_dir_given: bool = False  # --output_dir on the command line (else the default, or the study's own)
    parameters: list[Parameter] = field(default_factory=list)


def check_search_space(config: str, fit_args: Sequence[str], parameters: Sequence[Parameter]) -> dict[str, Any]:
    """Parse and build the model and data module at every end of every range (one line for the first
    that fails); return the study's base config (as ``fit`` parses it)."""
    with _quiet_lightning():
        given = "the config" if not fit_args else "the config or the fit arguments after --"
        try:  # exit_on_error: jsonargparse's error as one line, not its usage text
            args = ["--config", config, *fit_args]
            cli = _ParseOnlyCLI(DQN, GymDataModule, args=args, run=False, parser_kwargs={"exit_on_error": False})
        except ArgumentError as error:
            raise ConfigError(f"{given}: {one_line(error)}") from None
        base = cli.config
        _check_trials_validate(base)
        try:  # before the search space's values: a value of theirs is not the search space's fault
            _instantiate(cli.parser, base)
        except (ArgumentError, ValueError, TypeError) as error:  # ConfigError included
            raise ConfigError(f"{given}: {one_line(error)}") from None
        keys = sorted(base.keys())
        for parameter in parameters:
            if parameter.key in {"config", "seed_everything", "data.seed"}:
                raise ConfigError(f"search space: {parameter.key} cannot be searched (the seeds are --seeds)")
            if parameter.key not in keys:
                close = difflib.get_close_matches(parameter.key, keys, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise ConfigError(
                    f"search space: {parameter.key} is not a key of fit{hint}; python -m lit_dqn fit --help lists them"
                )
            _check_searched_key_acts(parameter.key, base, {p.key for p in parameters})
            for value in parameter.ends():
                args = ["--config", config, *fit_args, *_overrides({parameter.key: value})]
                try:
                    parsed = cli.parser.parse_args(args)
                    _instantiate(cli.parser, parsed)
                    _check_trials_validate(parsed)
                except (ArgumentError, ConfigError, ValueError, TypeError) as error:
                    message = f"search space: {parameter.key}={value!r} is refused: {one_line(error)}"
                    raise ConfigError(message) from None
    return base


# Keys that act only under a setting of another: (that key, the values it acts under).
ACTS_ONLY_WITH: dict[str, tuple[str, tuple[Any, ...]]] = {
    "model.eps_fraction": ("model.eps_schedule", ("linear",)),
    "model.eps_decay": ("model.eps_schedule", ("exponential",)),
    "model.num_atoms": ("model.distributional", ("c51",)),
    "model.v_min": ("model.distributional", ("c51",)),
    "model.v_max": ("model.distributional", ("c51",)),
    "model.num_quantiles": ("model.distributional", ("qr_dqn",)),
    "model.noisy_sigma0": ("model.noisy", (True,)),
    "data.priority_alpha": ("data.prioritized", (True,)),
    "data.priority_beta": ("data.prioritized", (True,)),
    "data.priority_eps": ("data.prioritized", (True,)),
}


def _check_searched_key_acts(key: str, base: Any, searched: set[str]) -> None:
    """Refuse a searched key that no trial would use: its trials would differ only by chance, and
    the importance plot would still rank it."""
    if key not in ACTS_ONLY_WITH:
        return
    other, values = ACTS_ONLY_WITH[key]
    if other not in searched and base[other] not in values:
        wanted = " or ".join(str(v).lower() if isinstance(v, bool) else str(v) for v in values)
        raise ConfigError(
            f"search space: {key} has no effect with the config's {other}={base[other]!r} (it acts with {wanted}): "
            f"leave it out, or set or search {other}"
        )


def _check_trials_validate(config: Any) -> None:
    """Refuse, before any trial, a fit that would run no greedy validation: trials are scored by
    their validations, so such a fit would train in full and only then fail."""
    limit = config["trainer.limit_val_batches"]
    if limit is not None and float(limit) == 0:
        raise ConfigError(
            f"trainer.limit_val_batches={float(limit):g} is not allowed for tune: each trial is scored by its greedy "
            "validations (leave it unset, or give a positive number)"
        )
    max_steps, interval = config["trainer.max_steps"], config["trainer.val_check_interval"]
    if isinstance(interval, int) and max_steps is not None and 0 <= max_steps < interval:
        raise ConfigError(
            f"trainer.max_steps={max_steps} is below trainer.val_check_interval={interval}: no trial would "
            "validate, and tune scores trials by their greedy validations"
        )


def _overrides(values: dict[str, Any]) -> list[str]:
    """Dotted ``fit`` arguments, each value as YAML (lists and dicts too); a string as it is, since
    jsonargparse takes ``"linear"`` with its quotes, which no ``Literal`` choice matches."""
    return [f"--{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in values.items()]


class _RefusedTrialsInOneLine(logging.Filter):
    """Optuna logs a trial that failed with a caught exception with its traceback. A trial ``fit``
    refused (a ``ConfigError``: a drawn combination such as a warm-up longer than the buffer) keeps
    Optuna's one line, which names the parameters and the error; the traceback says nothing more."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], ConfigError):
            record.exc_info, record.exc_text = None, None
        return True


@contextlib.contextmanager
def _refused_trials_in_one_line() -> Iterator[None]:
    logger, one_line_filter = logging.getLogger("optuna.study._optimize"), _RefusedTrialsInOneLine()
    logger.addFilter(one_line_filter)
    try:
        yield
    finally:
        logger.removeFilter(one_line_filter)


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning's per-run banners (accelerators, seeds, model summary) once per trial are noise."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # Trials pass fit's arguments in-process while sys.argv holds tune's, on purpose.
            warnings.filterwarnings("ignore", "LightningCLI's args parameter is intended")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class ValidationReport(L.Callback):
    """Reports each greedy validation to the trial and ends a trial the pruner rejects.

    ``history`` keeps ``(update, env_steps, return)`` per validation. A validation before update
    ``warmup`` of this run is reported but never judged: each seed's run has its own warm-up (Optuna's
    ``n_warmup_steps`` would count the steps of the trial, offset seed by seed, and so guard the first
    seed only). A pruned run stops after the validation that condemned it (``trainer.should_stop``: no
    further update), and ``pruned`` says so; the objective then raises ``optuna.TrialPruned``.
    """

    def __init__(self, trial: optuna.Trial, step_offset: int, sign: float, prune: bool = True, warmup: int = 0) -> None:
        self.trial, self.step_offset, self.sign, self.prune, self.warmup = trial, step_offset, sign, prune, warmup
        self.history: list[tuple[int, int, float]] = []
        self.pruned = False
        self.env_steps = 0  # of the whole fit

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.env_steps = trainer.datamodule.runner.env_steps

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        score = trainer.callback_metrics.get(VALIDATION_METRIC)
        if trainer.sanity_checking or trainer.state.fn != "fit" or score is None:
            return
        runner = trainer.datamodule.runner
        self.history.append((trainer.global_step, runner.env_steps, float(score)))
        self.trial.report(self.sign * float(score), step=self.step_offset + trainer.global_step)
        if self.prune and trainer.global_step >= self.warmup and self.trial.should_prune():
            self.pruned = True
            trainer.should_stop = True


class _TrialCLI(DQNCLI):
    """``fit`` for one trial's seed: the study's callbacks added, videos and ``last.ckpt`` left out
    (neither changes learning; both cost time and disk in every trial)."""

    def __init__(self, *args: Any, extra_callbacks: Sequence[L.Callback] = (), **kwargs: Any) -> None:
        self._extra_callbacks = list(extra_callbacks)
        super().__init__(*args, **kwargs)

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, GreedyVideo)]
        for callback in trainer.callbacks:
            if isinstance(callback, ModelCheckpoint):
                callback.save_last = False
        trainer.callbacks.extend(self._extra_callbacks)
        return trainer


@dataclass
class SeedResult:
    seed: int
    value: float
    best_return: float
    updates: int
    env_steps: int
    solved_at: int | None  # env steps at the first validation reaching the threshold
    run_dir: str


class Objective:
    """One trial: a ``fit`` per seed, their mean value; pruned between or within seeds."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sign = -1.0 if OBJECTIVES[settings.objective] == "minimize" else 1.0

    def __call__(self, trial: optuna.Trial) -> float:
        s = self.settings
        values = {parameter.key: parameter.suggest(trial) for parameter in s.parameters}
        trial.set_user_attr("config", values)  # the config values (1 - sampled for one_minus keys)
        run_dir = Path(s.output_dir) / f"trial_{trial.number:04d}"
        results: list[SeedResult] = []
        for index, seed in enumerate(s.seeds):
            result = self._fit(trial, values, seed, index, run_dir)
            if result is None:
                raise optuna.TrialPruned(f"pruned during seed {seed}")
            results.append(result)
            trial.set_user_attr("seeds", [asdict(r) for r in results])
        return sum(r.value for r in results) / len(results)

    def _fit(self, trial: optuna.Trial, values: dict[str, Any], seed: int, index: int, run_dir: Path):
        s = self.settings
        args = [
            "fit",
            "--config",
            s.config,
            *s.fit_args,
            *_overrides(values),
            f"--seed_everything={seed}",
            f"--trainer.default_root_dir={run_dir}",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ]
        # The offset keeps each seed's reports at steps of their own: trials compare seed by seed.
        offset, prune = index * (s.max_steps or SEED_SPAN_UNBOUNDED), s.pruner != "none"
        report = ValidationReport(trial, offset, self.sign, prune=prune, warmup=s.n_warmup_steps)
        diverged: str | None = None
        try:
            cli = _TrialCLI(
                DQN, GymDataModule, args=args, extra_callbacks=[report], save_config_kwargs={"overwrite": True}
            )
        except NonFiniteLossError as error:
            diverged, cli = str(error), None
        except ArgumentError as error:
            raise ConfigError(one_line(error)) from None
        if cli is not None:
            stops = [cb for cb in cli.trainer.callbacks if isinstance(cb, GracefulStop) and cb.signum is not None]
            if stops:  # Ctrl-C or SIGTERM ended the fit: the trial is not finished, the study stops
                raise KeyboardInterrupt(f"stopped by {signal.Signals(stops[0].signum).name}")
        history = report.history
        trial.set_user_attr(f"history_seed_{seed}", history)
        if report.pruned:
            return None
        if diverged:
            trial.set_user_attr("diverged", diverged)
            raise ConfigError(f"seed {seed} diverged: {diverged}")
        if not history:
            raise ConfigError(
                "no greedy validation ran: trainer.max_steps must reach trainer.val_check_interval at least once"
            )
        updates, env_steps = cli.trainer.global_step, report.env_steps
        best = max(score for _, _, score in history)
        reached = [steps for _, steps, score in history if s.threshold is not None and score >= s.threshold]
        solved_at = reached[0] if reached else None
        value = best if s.objective == "best_return" else env_steps_to_solve(solved_at, best, s.threshold)
        return SeedResult(seed, value, best, updates, env_steps, solved_at, str(cli.trainer.log_dir))


# What a run that never reaches the threshold counts, plus how far its best validation fell short:
# more env steps than any run here takes to solve, so an unsolved run ranks below every solved one
# whatever either's budget was (a searched data.updates_per_step makes one trial's max_steps 8x
# another's in env steps), and the nearer miss ranks higher among the unsolved.
UNSOLVED_ENV_STEPS = 1e9


def env_steps_to_solve(solved_at: int | None, best: float, threshold: float) -> float:
    """A seed's ``env_steps_to_solve`` value: the env steps at its first validation reaching
    ``threshold``, or ``UNSOLVED_ENV_STEPS + (threshold - best)`` if none did."""
    return float(solved_at) if solved_at is not None else UNSOLVED_ENV_STEPS + (threshold - best)


def shown(url: str) -> str:
    """``url`` as printed and written to files: its password hidden."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: nothing to hide
        return url


SCHEMA_ATTEMPTS = 10  # tries to open a storage whose tables other commands are creating at that moment


def _lost_schema_race(error: Exception) -> bool:
    """Whether opening a storage failed only because another command created its tables first.

    Optuna creates the tables, then its version rows, each as check-then-create: commands started at
    once on an empty database all see no table, and all but one then fail: PostgreSQL with "already
    exists" or "duplicate key" (a unique index of the catalog or of the version table), MySQL with
    "already exists" or "Duplicate entry", SQLite with "already exists" or "UNIQUE constraint failed"
    (the version table). Looking again finds what the winner made."""
    from sqlalchemy.exc import DBAPIError

    message = str(error).lower()
    signs = ("already exists", "duplicate", "unique constraint")
    return isinstance(error, DBAPIError) and any(sign in message for sign in signs)


def _rdb_storage(url: str, engine_kwargs: dict[str, Any]) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage, opened again while other commands are creating its tables."""

    def attempt() -> optuna.storages.RDBStorage:
        # A worker that dies (kill -9, a lost machine) has its trial marked failed by the next one.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats, stable for years
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=30, grace_period=120)

    jitter = random.Random()  # its own generator: the seeded global one stays the runs'
    for _ in range(SCHEMA_ATTEMPTS - 1):
        try:
            return attempt()
        except Exception as error:
            if not _lost_schema_race(error):
                raise
            time.sleep(jitter.uniform(0.1, 0.5))
    return attempt()  # the last: whatever it raises is the storage's error


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """Optuna's RDB storage for ``url``; a URL that cannot be opened is one line naming it."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        engine_kwargs: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            engine_kwargs = {"connect_args": {"timeout": 60}}  # workers wait for each other's writes
        return _rdb_storage(url, engine_kwargs)
    except Exception as error:  # SQLAlchemy's and the drivers' errors: a bad URL, no server, no driver
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"storage={shown(url)!r} cannot be opened ({type(error).__name__}: {first}); give an SQLAlchemy URL "
            "such as sqlite:///lightning_logs/tune/NAME.db or postgresql://USER:PASSWORD@HOST/DB"
        ) from None


class SeedMedianPruner(optuna.pruners.MedianPruner):
    """Optuna's ``MedianPruner``, judging a trial by the reports of the seed it is running.

    Seed ``k``'s reports sit at steps ``k * span`` on (``ValidationReport``'s offset). The median
    pruner compares a trial's best report so far with the median at the current step, and "so far"
    would include the earlier seeds': a good seed 0 kept a trial from ever being pruned in seed 1.
    """

    def __init__(self, span: int, n_startup_trials: int) -> None:
        super().__init__(n_startup_trials=n_startup_trials, n_warmup_steps=0)  # the warm-up: ValidationReport's
        self.span = span

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        start = step - step % self.span  # the running seed's first step
        this_seed = copy.copy(trial)
        this_seed.intermediate_values = {s: v for s, v in trial.intermediate_values.items() if s >= start}
        return super().prune(study, this_seed)


def _pruner(settings: Settings) -> optuna.pruners.BasePruner:
    if settings.pruner == "none":
        return optuna.pruners.NopPruner()
    return SeedMedianPruner(settings.max_steps or SEED_SPAN_UNBOUNDED, settings.n_startup_trials)


def _sampler(settings: Settings, worker: int, trials_before: int) -> optuna.samplers.BaseSampler:
    """TPE, seeded (with ``--sampler_seed``) from the seed, the worker and the trials the study held
    when the worker started: the same command on a fresh study draws the same trials, and a command
    that continues a study draws new ones, not its first trials again."""
    seed = None
    if settings.sampler_seed is not None:
        seed = int(np.random.SeedSequence([settings.sampler_seed, worker, trials_before]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=settings.n_startup_trials)


def _study(settings: Settings, worker: int = 0) -> optuna.Study:
    study = optuna.load_study(
        study_name=settings.study_name, storage=open_storage(settings.storage), pruner=_pruner(settings)
    )
    study.sampler = _sampler(settings, worker, len(study.get_trials(deepcopy=False)))
    return study


def _worker(settings: Settings, n_trials: int, worker: int) -> int:
    """Run ``n_trials`` trials of the study; 0, or 128 + the signal that stopped it.

    Inside a fit, ``GracefulStop`` turns Ctrl-C and SIGTERM into a stop after the current update and
    the objective into ``KeyboardInterrupt``; between fits the handler below raises it at once. Optuna
    records the interrupted trial as failed either way, and the study stops."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    stopping: list[int] = []

    def stop(signum: int, frame: Any) -> None:
        if not stopping:  # once: a second signal must not interrupt Optuna recording the first
            stopping.append(signum)
            raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        study = _study(settings, worker)
        with known_warnings_filtered(), _quiet_lightning(), _refused_trials_in_one_line():
            study.optimize(Objective(settings), n_trials=n_trials, catch=(ConfigError,), gc_after_trial=True)
    except (KeyboardInterrupt, StopRequested) as error:
        signum = getattr(error, "signum", stopping[0] if stopping else signal.SIGINT)
        print(f"lit_dqn tune: worker {worker} stopped ({error}); its running trial is failed", file=sys.stderr)
        return 128 + signum
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def _spawned_worker(settings: Settings, n_trials: int, worker: int) -> None:
    sys.exit(_worker(settings, n_trials, worker))


def create_study(settings: Settings) -> optuna.Study:
    """Create the study, or load it if it exists and was made for the same experiment."""
    direction = OBJECTIVES[settings.objective]
    database = _sqlite_file(settings.storage)
    if database is not None and not Path(database).exists():
        _check_output_dir_free(settings.output_dir)  # before a database is made for nothing
    storage = open_storage(settings.storage)
    if _one_machine(settings) and settings.study_name not in optuna.study.get_all_study_names(storage):
        _check_output_dir_free(settings.output_dir)  # before a study is made for nothing
    study = optuna.create_study(
        study_name=settings.study_name, storage=storage, direction=direction, load_if_exists=True
    )
    if study.direction.name.lower() != direction:
        raise ConfigError(
            f"study {settings.study_name!r} in {shown(settings.storage)} is {study.direction.name.lower()}d; "
            f"objective={settings.objective!r} needs {direction}: give another --study_name"
        )
    attrs = study.user_attrs  # a copy, as the storage holds them
    if "config" not in attrs:  # the config's path, for people reading the study
        study.set_user_attr("config", settings.config)
    contents = hashlib.sha256(Path(settings.config).read_bytes()).hexdigest()
    if "config_sha256" not in attrs:  # a new study, or one made before contents were compared
        study.set_user_attr("config_sha256", contents)
    elif attrs["config_sha256"] != contents:
        raise ConfigError(
            f"study {settings.study_name!r} was made with config={attrs.get('config')!r} as it was then; "
            f"{settings.config!r} has other contents: give another --study_name to start a new study"
        )
    wanted = {key: getattr(settings, key) for key in STUDY_KEYS}
    wanted["search"] = [asdict(p) for p in settings.parameters]
    wanted = json.loads(json.dumps(wanted))  # as the database gives it back
    for key, value in wanted.items():
        if key not in study.user_attrs:
            study.set_user_attr(key, value)
        elif study.user_attrs[key] != value:
            raise ConfigError(
                f"study {settings.study_name!r} was made with {key}={study.user_attrs[key]!r}, not {value!r}: "
                "give another --study_name to start a new study"
            )
    _claim_output_dir(settings, study)
    return study


STUDY_MARKER = ".lit_dqn_study"  # in an output folder: the token of the study whose runs it holds


def _claim_output_dir(settings: Settings, study: optuna.Study) -> None:
    """One study's runs in one folder, and one folder per study. A continued study goes on in its
    own folder (``settings.output_dir`` becomes it); a folder that holds another study's runs (two
    SQLite files with the same study name side by side, or a study made again after its database
    was deleted) is refused: its trial_NNNN and best.yaml would be mixed with or replaced by this one's.

    SQLite only: a study in a server's database is shared by machines, each with its own folder."""
    if not _one_machine(settings):
        return
    attrs = study.user_attrs
    folder = str(Path(settings.output_dir).resolve())
    kept = attrs.get("output_dir")
    if kept is None:
        study.set_user_attr("output_dir", folder)
    elif kept != folder:
        if settings.output_dir_given:
            raise ConfigError(
                f"study {settings.study_name!r} keeps its runs in {kept}: leave --output_dir out to continue it "
                "there, or give another --study_name to start a new study"
            )
        settings.output_dir = folder = kept
    token = attrs.get("output_token")
    if token is None:
        token = os.urandom(8).hex()
        study.set_user_attr("output_token", token)
    _check_output_dir_free(folder, token)
    check_writable("output_dir", Path(folder), "every trial's runs and best.yaml")  # the study's own, if kept
    (Path(folder) / STUDY_MARKER).write_text(f"{token}\n")


def _sqlite_file(storage: str) -> str | None:
    """The database file of an ``sqlite:///FILE`` storage URL; ``None`` for any other storage."""
    return storage.split("///", 1)[1] if storage.startswith("sqlite:///") else None


def _one_machine(settings: Settings) -> bool:
    """Whether the study's storage is an SQLite file, which one machine's commands share."""
    return settings.storage.startswith("sqlite")


def _check_output_dir_free(folder: str, token: str | None = None) -> None:
    """``folder`` holds no runs of a study other than the one of ``token`` (``None``: a new study's)."""
    marker = Path(folder) / STUDY_MARKER
    if marker.is_file() and marker.read_text().strip() != token:
        raise ConfigError(
            f"output_dir={folder!r} holds the runs of another study (its trial_NNNN and best.yaml): give "
            "another --output_dir, or move that folder away"
        )


def write_results(settings: Settings, study: optuna.Study) -> Path | None:
    """``best.yaml`` and the PNG plots in the output directory; the path of ``best.yaml``, if any trial completed."""
    out = Path(settings.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return None
    best = study.best_trial
    with _quiet_lightning():
        cli = _ParseOnlyCLI(DQN, GymDataModule, args=["--config", settings.config, *settings.fit_args], run=False)
        args = ["--config", settings.config, *settings.fit_args, *_overrides(best.user_attrs["config"])]
        config = cli.parser.parse_args([*args, f"--seed_everything={settings.seeds[0]}"])
    header = (
        f"# Best trial {best.number} of study {settings.study_name!r} ({shown(settings.storage)}): "
        f"{settings.objective} {best.value:g} over seeds {settings.seeds}.\n"
        f"#   python -m lit_dqn fit --config {out / 'best.yaml'}\n"
    )
    path = out / "best.yaml"
    path.write_text(header + cli.parser.dump(config, skip_none=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as plots

        axes = plots.plot_optimization_history(study)
        axes.figure.savefig(out / "history.png", bbox_inches="tight")
        plt.close(axes.figure)
        if len(complete) >= 2 and settings.parameters:
            try:
                axes = plots.plot_param_importances(study)
                axes.figure.savefig(out / "importances.png", bbox_inches="tight")
                plt.close(axes.figure)
            except (RuntimeError, ValueError) as error:  # e.g. every completed trial had the same values
                print(f"lit_dqn tune: no importances plot ({error})", file=sys.stderr)
    return path


def tune(
    config: str,
    search: str,
    n_trials: PositiveInt = 20,
    study_name: str | None = None,
    storage: str | None = None,
    objective: Literal["best_return", "env_steps_to_solve"] = "best_return",
    threshold: float | None = None,
    seeds: list[int] | None = None,
    pruner: Literal["median", "none"] = "median",
    n_startup_trials: NonNegativeInt = 5,
    n_warmup_steps: NonNegativeInt | None = None,
    n_jobs: PositiveInt = 1,
    sampler_seed: int | None = None,
    output_dir: str | None = None,
    fit: list[str] | None = None,
) -> int:
    """Tune a fit config with Optuna: TPE over a search space, trials pruned on greedy validation.

    Fit overrides for every trial go after ``--``, e.g. ``-- --trainer.max_steps 20000``.

    Args:
        config: the fit config every trial starts from, e.g. configs/acrobot.yaml.
        search: the search space, a YAML of dotted fit keys and distributions (configs/search/dqn.yaml).
        n_trials: trials this command runs, shared among its n_jobs workers; a re-run, or the same
            command on another machine, adds its own (Optuna's meaning).
        study_name: the study in the storage (default: the config's file name, without .yaml).
        storage: an SQLAlchemy URL Optuna accepts (default: sqlite:///lightning_logs/tune/STUDY.db);
            postgresql://USER:PASSWORD@HOST/DB lets several machines share one study.
        objective: best_return (the best greedy validation return, maximised) or env_steps_to_solve (env
            steps at the first validation reaching threshold, minimised; 1e9 plus the shortfall if never).
        threshold: the return that counts as solved (default: the config's EarlyStopping stopping_threshold).
        seeds: training seeds of every trial, its value their mean, e.g. --seeds 0 1 2 (default: the
            config's seed_everything).
        pruner: median (Optuna's MedianPruner on each validation's return) or none.
        n_startup_trials: trials drawn at random, and never pruned, before TPE and pruning start (Optuna's default 5).
        n_warmup_steps: updates of each seed's run before its validations can prune the trial (default:
            a third of trainer.max_steps, or of its smallest value if the search varies it, as rl-zoo3's
            n_evaluations // 3; 0 without max_steps). The
            first validations, just after the replay warm-up, say little: pruning on them dropped 2 of
            8 Acrobot trials that went on to solve (benchmarks/README.md, "Tune").
        n_jobs: worker processes on this machine, each with cores / n_jobs torch threads.
        sampler_seed: TPE's seed, mixed with the worker's number and the trials the study already holds:
            the same command on a new study draws the same trials; continuing a study draws new ones.
        output_dir: trial runs, best.yaml and the plots (default: beside an SQLite file, in a folder named
            after the study; lightning_logs/tune/STUDY for other storages).
        fit: fit arguments for every trial, after the config (on the command line: everything after --).
    """
    settings = _settings(locals())
    study = create_study(settings)
    counts = [n_trials // n_jobs + (k < n_trials % n_jobs) for k in range(n_jobs)]
    print(
        f"lit_dqn tune: study {settings.study_name!r} in {shown(settings.storage)}: {n_trials} trial(s) more, "
        f"{n_jobs} worker(s); runs in {settings.output_dir}",
        file=sys.stderr,
    )
    code = _worker(settings, counts[0], 0) if n_jobs == 1 else _run_workers(settings, counts)
    study = _study(settings)
    path = write_results(settings, study)
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    summary = ", ".join(f"{states.count(s)} {s.lower()}" for s in ("COMPLETE", "PRUNED", "FAIL") if s in states)
    print(f"lit_dqn tune: study {settings.study_name!r} has {len(states)} trial(s): {summary or 'none'}")
    if path is not None:
        best = study.best_trial
        print(f"best: trial {best.number}, {settings.objective} {best.value:g}, {best.user_attrs['config']}")
        print(f"wrote {path}; python -m lit_dqn fit --config {path}")
    return code


def _settings(given: dict[str, Any]) -> Settings:
    config, fit_args = str(given["config"]), list(given["fit"] or [])
    if any(arg.startswith("--trainer.default_root_dir") for arg in fit_args):
        raise ConfigError(
            "trainer.default_root_dir after -- is not used: each trial runs in OUTPUT/trial_NNNN; give --output_dir"
        )
    parameters = load_search_space(given["search"])
    base = check_search_space(config, fit_args, parameters)
    study_name = given["study_name"] or Path(config).stem
    storage = given["storage"] or f"sqlite:///lightning_logs/tune/{study_name}.db"
    output_dir = given["output_dir"]
    if output_dir is None:
        database = _sqlite_file(storage)
        output_dir = str((Path(database).parent if database else Path("lightning_logs/tune")) / study_name)
    if storage.startswith("sqlite://") and storage.rstrip("/").endswith((":memory:", "sqlite:")):
        raise ConfigError(
            f"storage={storage!r} is a database in memory, a new empty one in each worker and gone at the "
            "end: give a file, e.g. sqlite:///lightning_logs/tune/NAME.db"
        )
    seeds = given["seeds"] if given["seeds"] else [int(base["seed_everything"] or 0)]
    for seed in seeds:
        check_seed("seeds", seed)
    if len(seeds) > 1 and base["data.seed"] is not None:
        raise ConfigError(
            f"data.seed={base['data.seed']} fixes every run's env, exploration and replay seeds, so --seeds "
            f"{' '.join(map(str, seeds))} would vary only the network's initial weights (and noisy nets' "
            "noise): leave data.seed out of the config, or pass -- --data.seed=null (it then follows each seed)"
        )
    threshold = given["threshold"]
    if threshold is None:
        threshold = _early_stopping_threshold(base)
    if given["objective"] == "env_steps_to_solve" and threshold is None:
        raise ConfigError(
            "objective='env_steps_to_solve' needs a return to reach: give --threshold, or an EarlyStopping "
            "callback with stopping_threshold in the config"
        )
    # Last, and keep=False: a refusal leaves no empty folder, and a continued study goes on in its own
    # (_claim_output_dir), which may not be this default
    check_writable("output_dir", Path(output_dir), "every trial's runs and best.yaml", keep=False)
    n_jobs = given["n_jobs"]
    # Each seed's reports start past every step the one before could report: past the largest
    # max_steps a trial can have, the searched values' if trainer.max_steps is searched (0: unbounded).
    searched = [p for p in parameters if p.key == "trainer.max_steps"]
    budgets = [int(v) for p in searched for v in (p.choices or (p.high,))] or [int(base["trainer.max_steps"] or 0)]
    max_steps = 0 if min(budgets) <= 0 else max(budgets)
    settings = Settings(
        config=config,
        search=str(given["search"]),
        fit_args=list(fit_args),
        objective=given["objective"],
        threshold=threshold,
        seeds=list(seeds),
        storage=storage,
        study_name=study_name,
        output_dir=output_dir,
        output_dir_given=given["output_dir"] is not None,
        pruner=given["pruner"],
        n_startup_trials=given["n_startup_trials"],
        n_warmup_steps=max(min(budgets), 0) // 3 if given["n_warmup_steps"] is None else given["n_warmup_steps"],
        sampler_seed=given["sampler_seed"],
        max_steps=max_steps,
        threads=max(1, (os.cpu_count() or 1) // n_jobs) if n_jobs > 1 else None,
        parameters=parameters,
    )
    return settings


def _early_stopping_threshold(config: Any) -> float | None:
    for callback in config["trainer.callbacks"] or []:
        class_path = getattr(callback, "class_path", "")
        if class_path.endswith(EarlyStopping.__name__):
            value = callback.init_args.get("stopping_threshold")
            if value is not None:
                return float(value)
    return None


def _run_workers(settings: Settings, counts: list[int]) -> int:
    """``len(counts)`` spawned worker processes. Ctrl-C and SIGTERM are passed on to them as SIGTERM
    (each stops after its current update, as one process does); the exit code is 128 + that signal,
    else the first non-zero one of a worker."""
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_spawned_worker, args=(settings, count, k)) for k, count in enumerate(counts) if count
    ]
    for worker in workers:
        worker.start()

    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        for worker in workers:
            if worker.is_alive() and worker.pid is not None:
                os.kill(worker.pid, signal.SIGTERM)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        for worker in workers:
            worker.join()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:  # the signal this command got, not the SIGTERM its workers were sent
        return 128 + received[0]
    return next((w.exitcode for w in workers if w.exitcode), 0)


def _seeds_as_list(args: list[str]) -> list[str]:
    """``--seeds 0 1 2`` as jsonargparse reads a list (``--seeds [0, 1, 2]``), which it would take too."""
    if "--seeds" not in args:
        return args
    start = args.index("--seeds") + 1
    end = next((i for i in range(start, len(args)) if args[i].startswith("--")), len(args))
    values = args[start:end]
    if len(values) == 1 and values[0].lstrip().startswith("["):
        return args
    return [*args[: start - 1], f"--seeds=[{', '.join(values)}]", *args[end:]]


def _summary() -> str:
    return inspect.cleandoc(tune.__doc__ or "").split("Args:")[0].strip()


def main(args: list[str]) -> int:
    """``python -m lit_dqn tune ...``: jsonargparse builds the options from ``tune``'s signature and docstring."""
    from jsonargparse import ArgumentParser

    if "--" in args:  # fit's own arguments, for every trial
        split = args.index("--")
        args = [*args[:split], f"--fit={json.dumps(args[split + 1 :])}"]
    args = _seeds_as_list(args)
    try:
        # --config is fit's config, as in fit: this parser has no config file option of its own.
        parser = ArgumentParser(prog="python -m lit_dqn tune", description=_summary(), exit_on_error=False)
        parser.add_function_arguments(tune, as_positional=False)
        options = parser.parse_args(args)
        with known_warnings_filtered():
            return tune(**options.as_dict())
    except ArgumentError as error:
        print(f"lit_dqn tune: error: {one_line(error)} (see python -m lit_dqn tune --help)", file=sys.stderr)
        return 2
    except ConfigError as error:
        print(f"lit_dqn tune: error: {error}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, StopRequested) as stop:
        print(f"lit_dqn tune: stopped ({stop or 'Ctrl-C'})", file=sys.stderr)
        return 128 + getattr(stop, "signum", signal.SIGINT)
