"""Callbacks: episode statistics on the progress bar, and a clean stop on Ctrl-C or SIGTERM."""

import signal
import sys
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_dqn.distributed import world
from lit_dqn.episodes import EpisodeStatistics
from lit_dqn.rollout import STOP_SIGNALS, StopRequested, clear_stop, request_stop, stop_on_signals


class EpisodeProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar plus the episode count, the last episode's return and duration, their
    100-episode means and ε.

    The numbers come from the trainer's ``episodes.EpisodeStatistics`` and are read only when the bar
    refreshes; logging them with ``self.log(prog_bar=True)`` would cost more than a training step every
    time an episode ends.
    """

    _resumed_mid_epoch = False  # set from on_train_start until on_train_epoch_start or the first batch

    @property
    def total_train_batches(self) -> int | float:
        """Updates left before ``trainer.max_steps``; the replay stream reports ``sys.maxsize`` batches
        (see ``ReplayDataset.__len__``), so with no step limit the bar is open-ended."""
        total = super().total_train_batches
        return float("inf") if total >= sys.maxsize else total

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Label the bar here too. Lightning labels it and sets its total in ``on_train_epoch_start``,
        which it skips when a run resumes mid-epoch; the replay stream's one endless epoch makes most
        resumes mid-epoch, and the bar then read "Training: 220500/?" with a rate counted from 0."""
        super().on_train_start(trainer, pl_module)
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch}")
        self._resumed_mid_epoch = True  # until on_train_epoch_start says otherwise

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.train_progress_bar.initial = 0  # a resumed run's start, not a count of this epoch's
        super().on_train_epoch_start(trainer, *args)
        self._resumed_mid_epoch = False

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """After a mid-epoch resume the bar counts the epoch's batches from ``batch_idx``, the first of
        this run: its total is that plus the updates left, and rate and time left count from it."""
        if self._resumed_mid_epoch:
            self._resumed_mid_epoch = False
            bar, left = self.train_progress_bar, self.total_train_batches  # left after this batch
            total = min(trainer.num_training_batches, batch_idx + 1 + left)  # a finite epoch ends first
            bar.initial = bar.n = batch_idx
            bar.total = None if total == float("inf") else total
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        statistics = EpisodeStatistics.of(trainer)
        return {**(statistics.progress if statistics is not None else {}), **metrics}


class GracefulStop(L.Callback):
    """Ctrl-C (SIGINT) or SIGTERM ends training within seconds, and ``last.ckpt`` always holds the
    state training ended in (signal, ``max_steps``, ``max_episodes`` or early stopping).

    A signal during an update sets ``trainer.should_stop``: the update finishes and the saved state
    is consistent (buffer, counters, optimizer and target network all after the same update). One
    process also requests a stop of env stepping (``rollout.request_stop``), so a long warm-up or an
    evaluation ends at its next env step with ``StopRequested``; ``on_exception`` then saves the
    state after the last update (an interrupted validation is replayed when the run resumes). With
    several ranks (DDP) the request waits for the next training step's start, where the module shares
    it with every rank, so all stop after the same update. A second Ctrl-C interrupts at once, as
    usual. ``signum`` tells the CLI which signal ended the run.

    ``validate`` and ``test`` have no training state to save: there a signal ends the evaluation at
    its next env step with ``StopRequested`` (exit 130 or 143, no scores), where Lightning's own
    handler would let it play every episode and then exit 0 as if nothing had been asked.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._requested = False
        self._previous: dict[int, Any] = {}
        self._saved_step: int | None = None
        self._evaluation = ExitStack()  # the handlers of a ``validate`` or ``test`` run, while it evaluates

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._saved_step = trainer.global_step

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Install the handlers when training starts (before it there is nothing to save), after
        Lightning registered its own SIGTERM handler, which would end the run without a checkpoint."""
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        clear_stop()
        handler = self._make_handler(trainer)
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, handler)
        if trainer.received_sigterm:  # it came after Lightning's handler was set, before ours: the same stop
            handler(signal.SIGTERM, None)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_evaluation_on_signals(trainer)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_evaluation_on_signals(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._evaluation.close()

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._evaluation.close()

    def _stop_evaluation_on_signals(self, trainer: L.Trainer) -> None:
        """Outside a fit (``validate``, ``test``), Ctrl-C and SIGTERM end the evaluation at its next env
        step; a fit's validations already stop through the handlers ``on_train_start`` set."""
        if trainer.state.fn == TrainerFn.FITTING:
            return
        self._evaluation.enter_context(stop_on_signals())
        if trainer.received_sigterm:  # it came after Lightning's handler was set, before ours
            request_stop(signal.SIGTERM)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._requested:
            trainer.should_stop = True  # with several ranks, the module shares it with all of them next

    def _make_handler(self, trainer: L.Trainer):
        def handler(signum: int, frame: Any) -> None:
            self.signum = signum
            self._requested = True
            alone = world()[1] == 1
            if alone:
                trainer.should_stop = True  # one process: stop after the update in progress ...
                request_stop(signum)  # ... or at the next env step of a warm-up or evaluation
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C interrupts now
            when = "after this update or at the next env step" if alone else "at the next training step, with all ranks"
            print(f"\nReceived {signal.Signals(signum).name}: stopping {when}", file=sys.stderr)

        return handler

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handlers()
        self._save_last(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """A stop that interrupted env stepping (warm-up, evaluation) saves what an exact resume needs:
        the state after the last update, as a stop after that update would have. So does Lightning's
        own ``SIGTERMException``, raised between updates (its DDP ranks share a SIGTERM at each batch)."""
        stopped_training = isinstance(exception, StopRequested | SIGTERMException) and bool(self._previous)
        if isinstance(exception, SIGTERMException):
            self.signum = signal.SIGTERM
        self._evaluation.close()
        self._restore_handlers()
        if stopped_training:
            self._save_last(trainer)

    def _save_last(self, trainer: L.Trainer) -> None:
        checkpoint = trainer.checkpoint_callback
        if checkpoint is None or checkpoint.dirpath is None or not checkpoint.save_last:
            return
        path = Path(checkpoint.last_model_path) if checkpoint.last_model_path else _free_last_path(checkpoint)
        # Unless the last validation saved this very state (on every rank alike: all ranks must save).
        if self._saved_step != trainer.global_step:
            trainer.save_checkpoint(path, weights_only=False)  # the full state, to resume from
        if self.signum is not None:
            print(f"Saved {path} at step {trainer.global_step}; resume with --ckpt_path last", file=sys.stderr)

    def _restore_handlers(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        clear_stop()


def _free_last_path(checkpoint: ModelCheckpoint) -> Path:
    """Where this run's first last checkpoint goes: ``last.ckpt``, or, in a folder another run's fills
    (runs without a logger share ``checkpoints/``), the next free ``last-vN.ckpt``, as Lightning's
    version counter names it; writing ``last.ckpt`` replaced the other run's."""
    name, extension, join = checkpoint.CHECKPOINT_NAME_LAST, checkpoint.FILE_EXTENSION, checkpoint.CHECKPOINT_JOIN_CHAR
    path, version = Path(checkpoint.dirpath) / f"{name}{extension}", checkpoint.STARTING_VERSION
    while path.exists():
        path, version = Path(checkpoint.dirpath) / f"{name}{join}v{version}{extension}", version + 1
    return path
