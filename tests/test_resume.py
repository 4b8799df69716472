"""Nothing lost: exact resume, clean stops on signals, checkpoints that survive kill -9, NaN stops."""

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_dqn import DQN, EpisodeStatistics, GymDataModule
from lit_dqn.checkpoints import AtomicCheckpointIO, report_changed_hyperparameters
from lit_dqn.cli import DQNCLI
from lit_dqn.module import NonFiniteLossError
from lit_dqn.rollout import EnvRunner, StopRequested

from . import conftest
from .conftest import CONFIG, SHORT_FIT, StepRecorder, cuda_generator_state, run_cli, run_main
from .test_toolbox import PrioritizedCheck


def make_cli(root: Path, *overrides: str) -> tuple[DQNCLI, StepRecorder]:
    return conftest.make_cli(
        root, "--seed_everything=5", "--data.warmup_steps=300", "--data.eval_episodes=5", *overrides
    )


class StopAt(L.Callback):
    """Stop training after update ``step``, as Ctrl-C would (``last.ckpt`` holds the state there)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


# Every switch whose state outlives a step: priorities, β and ε schedules sized by max_steps, the
# hard target copy's phase, the dueling heads.
TOOLBOX = (
    "--data.prioritized=true",
    "--model.dueling=true",
    "--model.tau=1.0",
    "--model.target_update_interval=64",
    "--model.eps_schedule=linear",
)


# Action masks: a 10-step env that raises on a forbidden action; replay keeps next-state masks (n-step).
MASKED = ("--data.env_id=tests.ddp_env:MaskedCorridor-v0", "--data.action_masks=true", "--data.n_step=3")


# Rainbow's parts with the toolbox: QR-DQN's quantiles, noisy nets (their noise stream), Double DQN,
# n-step, priorities from each sample's loss.
DISTRIBUTIONAL = (
    *TOOLBOX,
    "--model.distributional=qr_dqn",
    "--model.noisy=true",
    "--model.double_dqn=true",
    "--data.n_step=3",
)


# The training env stepped in a worker process (Gymnasium's AsyncVectorEnv): its RNG travels through
# the worker pipes, and a checkpoint save must not ask the workers for what they lack.
ASYNC = ("--data.vectorization_mode=async",)


@pytest.mark.parametrize(
    "switches",
    [(), TOOLBOX, MASKED, DISTRIBUTIONAL, ASYNC],
    ids=["default", "toolbox", "masks", "distributional", "async"],
)
def test_resume_continues_exactly_like_an_uninterrupted_run(switches: tuple[str, ...], tmp_path: Path) -> None:
    """fit 2N == fit to N, stop, resume to 2N: the same losses, episodes and weights, bit for bit.

    The one condition: the checkpoint is taken between episodes. The env's physical state is not
    saved, so a resumed run starts a fresh episode, drawn from the env's saved RNG exactly as its
    next autoreset would have been; mid-episode, the episode in progress is dropped instead.
    """
    total = 700
    whole, whole_steps = make_cli(tmp_path / "whole", f"--trainer.max_steps={total}", *switches)
    whole.trainer.fit(whole.model, datamodule=whole.datamodule)
    # the first step after 300 whose batch saw an episode end: the checkpoint falls between episodes
    n = next(i + 1 for i in range(300, total) if whole_steps.episode_ended[i])

    first, _ = make_cli(tmp_path / "first", f"--trainer.max_steps={total}", *switches)
    first.trainer.callbacks.append(StopAt(n))
    first.trainer.fit(first.model, datamodule=first.datamodule)
    ckpt = tmp_path / "first/lightning_logs/version_0/checkpoints/last.ckpt"
    saved = torch.load(ckpt, weights_only=False)
    assert saved["global_step"] == n and "buffer" in saved["GymDataModule"]
    assert ("priorities" in saved["GymDataModule"]["buffer"]) == ("--data.prioritized=true" in switches)
    assert ("next_mask" in saved["GymDataModule"]["buffer"]["storage"]) == (switches == MASKED)

    resumed, resumed_steps = make_cli(tmp_path / "resumed", f"--trainer.max_steps={total}", *switches)
    resumed.trainer.fit(resumed.model, datamodule=resumed.datamodule, ckpt_path=str(ckpt))
    assert len(resumed_steps.losses) == total - n
    assert resumed_steps.losses == whole_steps.losses[n:]
    resumed_episodes, whole_episodes = EpisodeStatistics.of(resumed.trainer), EpisodeStatistics.of(whole.trainer)
    assert resumed_episodes.durations == whole_episodes.durations
    assert resumed_episodes.returns == whole_episodes.returns
    for a, b in zip(resumed.model.state_dict().values(), whole.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert resumed_steps.counters == whole_steps.counters  # env steps, episodes, buffer size and position


def test_resume_with_another_max_steps_keeps_the_schedules(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """β and the linear ε span are paced by the ``trainer.max_steps`` a run starts with: resumed with
    twice the budget, the updates learn bit for bit as in the run that kept its budget, and one line
    says what was kept."""
    total, switches = 600, ("--data.prioritized=true", "--model.eps_schedule=linear", "--model.eps_fraction=0.5")
    whole, whole_steps = make_cli(tmp_path / "whole", f"--trainer.max_steps={total}", *switches)
    whole.trainer.fit(whole.model, datamodule=whole.datamodule)
    n = next(i + 1 for i in range(300, total) if whole_steps.episode_ended[i])  # between episodes
    first, _ = make_cli(tmp_path / "first", f"--trainer.max_steps={total}", *switches)
    first.trainer.callbacks.append(StopAt(n))
    first.trainer.fit(first.model, datamodule=first.datamodule)
    ckpt = tmp_path / "first/lightning_logs/version_0/checkpoints/last.ckpt"

    resumed, resumed_steps = make_cli(tmp_path / "resumed", f"--trainer.max_steps={2 * total}", *switches)
    resumed.trainer.callbacks.append(StopAt(total))
    with caplog.at_level(logging.INFO):
        resumed.trainer.fit(resumed.model, datamodule=resumed.datamodule, ckpt_path=str(ckpt))
    assert resumed_steps.losses == whole_steps.losses[n:]
    [line] = [record.getMessage() for record in caplog.records if "keep the pace" in record.getMessage()]
    assert line == (
        "Resuming with trainer.max_steps=1200: the linear ε schedule and prioritized replay's β keep the pace of "
        "the 600 updates the run started with (trainer.max_steps now only moves where it stops)"
    )
    again = torch.load(tmp_path / "resumed/lightning_logs/version_0/checkpoints/last.ckpt", weights_only=False)
    assert again["schedules"]["max_steps"] == total and again["GymDataModule"]["beta_max_steps"] == total


def test_resume_from_another_device_kind_goes_on_the_same_way_every_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A checkpoint saved on CUDA holds its generators' Philox states, which a CPU generator cannot
    take (it raised mid-restore). The resume goes on with the replay sampler and the noise seeded
    from the saved states, says so once for each, and repeats exactly from one try to the next."""
    total, n = 500, 400
    first, _ = make_cli(tmp_path / "first", f"--trainer.max_steps={total}", *DISTRIBUTIONAL)
    first.trainer.callbacks.append(StopAt(n))
    first.trainer.fit(first.model, datamodule=first.datamodule)
    saved = torch.load(tmp_path / "first/lightning_logs/version_0/checkpoints/last.ckpt", weights_only=False)
    assert saved["noise_generator"].numel() == saved["GymDataModule"]["buffer"]["generator"].numel() == 5056
    saved["GymDataModule"]["buffer"]["generator"] = cuda_generator_state(5, 81_920)
    saved["noise_generator"] = cuda_generator_state(5, 12_288)
    torch.save(saved, tmp_path / "cuda.ckpt")

    losses = []
    for name in ("once", "again"):
        resumed, steps = make_cli(tmp_path / name, f"--trainer.max_steps={total}", *DISTRIBUTIONAL)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            resumed.trainer.fit(resumed.model, datamodule=resumed.datamodule, ckpt_path=str(tmp_path / "cuda.ckpt"))
        assert resumed.trainer.global_step == total and len(steps.losses) == total - n
        notices = [r.getMessage() for r in caplog.records if "saved on another kind of device" in r.getMessage()]
        assert [notice.split(":")[1].split(" stream")[0] for notice in notices] == [
            " the replay sampling",
            " the noisy nets' noise",
        ]
        losses.append(steps.losses)
    assert losses[0] == losses[1]


def test_the_progress_bar_of_a_resumed_run_counts_to_max_steps(tmp_path: Path) -> None:
    """A resume is mid-epoch (the replay stream is one endless epoch), where Lightning skips
    ``on_train_epoch_start``: the bar still reads "Epoch 0", counts towards ``trainer.max_steps``
    from the step it resumed at, and times only this run's updates."""
    first, _ = make_cli(tmp_path / "first", "--trainer.max_steps=600")
    first.trainer.callbacks.append(StopAt(400))
    first.trainer.fit(first.model, datamodule=first.datamodule)
    resumed, _ = make_cli(tmp_path / "resumed", "--trainer.max_steps=600")
    resumed.trainer.fit(
        resumed.model,
        datamodule=resumed.datamodule,
        ckpt_path=str(tmp_path / "first/lightning_logs/version_0/checkpoints/last.ckpt"),
    )
    bar = resumed.trainer.progress_bar_callback.train_progress_bar
    assert (bar.desc, bar.initial, bar.n, bar.total) == ("Epoch 0: ", 400, 600, 600)


@pytest.mark.parametrize("prioritized", [False, True], ids=["uniform", "prioritized"])
def test_resume_without_saved_buffer_refills_it(prioritized: bool, tmp_path: Path) -> None:
    switches = ("--data.save_replay_buffer=false", f"--data.prioritized={str(prioritized).lower()}")
    first, _ = make_cli(tmp_path / "a", "--trainer.max_steps=400", *switches)
    first.trainer.callbacks.append(StopAt(300))
    first.trainer.fit(first.model, datamodule=first.datamodule)
    ckpt = tmp_path / "a/lightning_logs/version_0/checkpoints/last.ckpt"
    assert "buffer" not in torch.load(ckpt, weights_only=False)["GymDataModule"]
    resumed, _ = make_cli(tmp_path / "b", "--trainer.max_steps=400", *switches)
    recorder = resumed.trainer.callbacks[-1]
    if prioritized:  # β goes on from the restored update count, not from the refilled stream's start
        check = PrioritizedCheck(beta_start=0.4, alpha=0.6)
        resumed.trainer.callbacks.append(check)
    resumed.trainer.fit(resumed.model, datamodule=resumed.datamodule, ckpt_path=str(ckpt))
    env_steps, _, buffer_size, _ = recorder.counters
    assert resumed.trainer.global_step == 400
    assert not prioritized or check.checked == 100
    # counters continued; the buffer was refilled with a full warm-up before training went on
    assert buffer_size == 300 + 100 and env_steps >= 300 + 300 + 300 + 100


# Poisoned at step 250: a logging step (299) finds it, or else the validation at 300 does, or else
# (no validation after the poison) the final save does.
@pytest.mark.parametrize(
    ("log_every", "max_steps", "found_at"),
    [(100, 400, 299), (1000, 400, 299), (1000, 290, 289)],
    ids=["found-on-a-logging-step", "found-before-validation", "found-by-the-final-save"],
)
def test_non_finite_loss_keeps_the_last_good_checkpoint(
    log_every: int, max_steps: int, found_at: int, tmp_path: Path
) -> None:
    class Poison(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == 250:
                with torch.no_grad():
                    pl_module.policy_net.net[0].weight.fill_(float("nan"))

    cli, _ = make_cli(
        tmp_path,
        f"--trainer.max_steps={max_steps}",
        "--trainer.val_check_interval=100",
        f"--trainer.log_every_n_steps={log_every}",
    )
    cli.trainer.callbacks.append(Poison())
    with pytest.raises(
        NonFiniteLossError, match=f"the TD loss became NaN or infinite at a step between 200 and {found_at}:"
    ) as error:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    last = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    assert str(last) in str(error.value)
    model = DQN.load_from_checkpoint(last, map_location="cpu")
    assert torch.load(last, weights_only=False)["global_step"] == 200
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_one_infinite_loss_between_checks_stops_the_run(tmp_path: Path, monkeypatch) -> None:
    """An infinite loss at update 250 alone, with finite gradients (the weights stay finite and the
    losses after it too): only a check that sees every update's loss can catch it, at 299."""
    import lit_dqn.module

    td_loss, calls = lit_dqn.module.td_loss, []

    def once_infinite(*args, **kwargs):
        calls.append(1)
        loss = td_loss(*args, **kwargs)
        return loss + float("inf") if len(calls) == 251 else loss  # d(loss + c)/d(loss) = 1: the update is unchanged

    monkeypatch.setattr(lit_dqn.module, "td_loss", once_infinite)
    cli, _ = make_cli(tmp_path, "--trainer.max_steps=400", "--trainer.val_check_interval=1000")
    with pytest.raises(NonFiniteLossError, match="the TD loss became NaN or infinite at a step between 200 and 299:"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())


def test_atomic_save_keeps_the_previous_checkpoint_when_writing_fails(tmp_path: Path, monkeypatch) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "weights": torch.ones(3)}, path)
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert path.stat().st_mode == plain.stat().st_mode  # the umask's permissions, not a temp file's 0600
    plain.unlink()

    def dies_half_way(obj, file) -> None:
        file.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # what a kill looks like from inside the process

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left behind


def start_fit(cwd: Path, *args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "lit_dqn", "fit", "--config", str(CONFIG), *SHORT_FIT, *args]
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def read_until(process: subprocess.Popen, text: str) -> str:
    """The stderr of ``process`` up to the first line holding ``text``."""
    lines = []
    while not lines or text not in lines[-1]:
        line = process.stderr.readline()
        assert line, "".join(lines)[-3000:]  # it ended first
        lines.append(line)
    return "".join(lines)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_cleanly_with_a_loadable_last_checkpoint(signum: int, tmp_path: Path) -> None:
    process = start_fit(tmp_path, "--trainer.max_steps=1000000", "--trainer.val_check_interval=1000000")
    run_dir = tmp_path / "lightning_logs/version_0"
    start = read_until(process, "Replay buffer: ")  # the train dataloader is made
    time.sleep(3)  # well into training
    process.send_signal(signum)
    stderr = start + process.communicate(timeout=120)[1]
    assert process.returncode == 128 + signum, stderr[-3000:]
    assert "Traceback" not in stderr
    last = run_dir / "checkpoints/last.ckpt"
    assert "Saved lightning_logs/version_0/checkpoints/last.ckpt at step" in stderr
    checkpoint = torch.load(last, weights_only=False)
    assert 0 < checkpoint["global_step"] < 1000000
    assert DQN.load_from_checkpoint(last, map_location="cpu")(torch.zeros(1, 4)).shape == (1, 2)


CORRIDOR = ("--data.env_id=tests.ddp_env:Corridor-v0", "--trainer.val_check_interval=100")  # 10-step episodes


class SignalBeforeValidation(L.Callback):
    """SIGTERM to this process after update ``step``, a validation step: as if it landed during that
    evaluation (Lightning fetches the episodes' returns before ``on_validation_start``)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def fit_stopped_and_resumed(tmp_path: Path, total: int, stop: Callable[[DQNCLI], None], monkeypatch) -> dict:
    """An uninterrupted run against one that ``stop`` arranges a signal for (``StopRequested``) and that
    resumes from its last.ckpt: the same losses and weights, bit for bit. Returns the saved checkpoint."""
    whole, whole_steps = make_cli(tmp_path / "whole", f"--trainer.max_steps={total}", *CORRIDOR)
    whole.trainer.fit(whole.model, datamodule=whole.datamodule)
    first, first_steps = make_cli(tmp_path / "first", f"--trainer.max_steps={total}", *CORRIDOR)
    stop(first)
    with pytest.raises(StopRequested, match="stopped by SIGTERM"):
        first.trainer.fit(first.model, datamodule=first.datamodule)
    monkeypatch.undo()
    ckpt = tmp_path / "first/lightning_logs/version_0/checkpoints/last.ckpt"
    saved = torch.load(ckpt, weights_only=False)
    assert saved["global_step"] == len(first_steps.losses)
    resumed, resumed_steps = make_cli(tmp_path / "resumed", f"--trainer.max_steps={total}", *CORRIDOR)
    resumed.trainer.fit(resumed.model, datamodule=resumed.datamodule, ckpt_path=str(ckpt))
    assert first_steps.losses + resumed_steps.losses == whole_steps.losses
    for a, b in zip(resumed.model.state_dict().values(), whole.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    return saved


def test_a_signal_during_evaluation_stops_it_and_the_resume_replays_it(tmp_path: Path, monkeypatch) -> None:
    """SIGTERM before the validation at 200: evaluation ends at its next env step, last.ckpt holds
    update 200, and the resumed run plays that validation again, then goes on exactly (at 500 env
    steps, between 10-step episodes)."""
    saved = fit_stopped_and_resumed(
        tmp_path, 300, lambda cli: cli.trainer.callbacks.append(SignalBeforeValidation(200)), monkeypatch
    )
    assert saved["global_step"] == 200


def test_a_signal_during_warm_up_stops_it_at_the_next_env_step(tmp_path: Path, monkeypatch) -> None:
    """SIGTERM at env step 150 of a 300-step warm-up: no update ran, last.ckpt holds the 150
    transitions, and the resumed run finishes the warm-up and trains as if never stopped."""
    runner_step = EnvRunner.step

    def step(self: EnvRunner, policy):
        if self.env_steps == 150:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next line
        return runner_step(self, policy)

    saved = fit_stopped_and_resumed(
        tmp_path, 300, lambda cli: monkeypatch.setattr(EnvRunner, "step", step), monkeypatch
    )
    assert saved["global_step"] == 0 and saved["GymDataModule"]["runner"]["env_steps"] == 150


def test_a_signal_during_a_long_warm_up_ends_the_run_within_seconds(tmp_path: Path) -> None:
    """The CLI's side of a stop mid warm-up (Atari's is 100k env steps; here up to 1M): SIGTERM ends
    the process within seconds with 143, the transitions so far saved in last.ckpt."""
    warm_up = ("--data.warmup_steps=1000000", "--data.buffer_capacity=1000000")
    process = start_fit(tmp_path, *warm_up)
    run_dir = tmp_path / "lightning_logs/version_0"
    start = read_until(process, "Replay buffer: ")  # the train dataloader is made, the warm-up begins
    time.sleep(3)  # well into the warm-up, which takes a minute or more
    process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    stderr = start + process.communicate(timeout=120)[1]
    assert time.monotonic() - sent < 15, stderr[-3000:]
    assert process.returncode == 143 and "Traceback" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "lit_dqn: stopped by SIGTERM"
    assert "Saved lightning_logs/version_0/checkpoints/last.ckpt at step 0" in stderr
    saved = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)
    assert 0 < saved["GymDataModule"]["runner"]["env_steps"] < 1000000


class SigtermBeforeOurHandler(L.Callback):
    """SIGTERM once Lightning has set its own handler and before ``GracefulStop`` sets ours (it comes
    after the config's callbacks): as a signal landing while the train dataloader is being made."""

    def on_train_start(self, trainer, pl_module) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


class LightningSigterm(L.Callback):
    """Lightning's own stop after update 50, as its DDP ranks raise it when rank 0 got a SIGTERM."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 50:
            raise SIGTERMException


@pytest.mark.parametrize(
    ("callback", "step"), [("SigtermBeforeOurHandler", 0), ("LightningSigterm", 50)], ids=["window", "lightning"]
)
def test_a_sigterm_that_lightning_catches_still_stops_with_143_and_last_ckpt(
    callback: str, step: int, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Lightning's SIGTERM handling ends a run with ``SystemExit()``, status 0 and no checkpoint: a
    preempted job would look finished. Either way in, the run stops as from our own handler."""
    fit = ["fit", "--config", str(CONFIG), *SHORT_FIT, f"--trainer.callbacks+=tests.test_resume.{callback}"]
    result = run_main(fit, tmp_path, monkeypatch, capsys)
    assert result.returncode == 143, result.stderr[-3000:]
    assert f"Saved lightning_logs/version_0/checkpoints/last.ckpt at step {step}" in result.stderr
    saved = torch.load(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=False)
    assert saved["global_step"] == step


class SigtermAtEvaluationStart(L.Callback):
    """SIGTERM as a ``validate`` or ``test`` run starts evaluating, before ``GracefulStop``'s hook (it
    comes after the config's callbacks): Lightning's handler gets it."""

    def on_validation_start(self, trainer, pl_module) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    def on_test_start(self, trainer, pl_module) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("when", ["during", "at_start"])
@pytest.mark.parametrize(
    ("subcommand", "signum"), [("validate", signal.SIGTERM), ("test", signal.SIGINT)], ids=["validate", "test"]
)
def test_a_signal_ends_validate_and_test_at_the_next_env_step(
    subcommand: str, signum: int, when: str, fit_run, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Outside a fit, Lightning's SIGTERM handler let all the episodes play and then exited 0, as if
    nothing had been asked (Ctrl-C: status 1). Now the evaluation ends at its next env step: 128 + N,
    no scores, the handlers as they were."""
    import lit_dqn.data

    steps: list[int] = []
    evaluate = lit_dqn.data.evaluate

    def signalled(envs, *args, **kwargs):  # the signal lands while the first round of episodes plays
        step = envs.step

        def counted(actions):
            if not steps and when == "during":
                os.kill(os.getpid(), signum)
            steps.append(1)
            return step(actions)

        envs.step = counted
        try:
            return evaluate(envs, *args, **kwargs)
        finally:
            envs.step = step

    monkeypatch.setattr(lit_dqn.data, "evaluate", signalled)
    if when == "at_start":
        signum = signal.SIGTERM
    ckpt = fit_run.run_dir / "checkpoints/last.ckpt"
    argv = [subcommand, "--config", str(CONFIG), f"--ckpt_path={ckpt}", "--trainer.accelerator=cpu"]
    argv += ["--data.eval_episodes=1000"]  # many seconds of CartPole, had the signal been held
    if when == "at_start":
        argv.append("--trainer.callbacks+=tests.test_resume.SigtermAtEvaluationStart")
    before = {n: signal.getsignal(n) for n in (signal.SIGINT, signal.SIGTERM)}
    result = run_main(argv, tmp_path, monkeypatch, capsys)
    assert result.returncode == 128 + signum, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == f"lit_dqn: stopped by {signal.Signals(signum).name}"
    assert "return_mean" not in result.stdout
    assert len(steps) == (1 if when == "during" else 0)  # the step that took the signal, then none
    assert {n: signal.getsignal(n) for n in before} == before


def test_kill_9_never_leaves_a_broken_latest_checkpoint(tmp_path: Path) -> None:
    # validation (and with it a checkpoint) every 20 updates: the kill is likely to land near a write
    process = start_fit(tmp_path, "--trainer.max_steps=1000000", "--trainer.val_check_interval=20")
    last = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    wait_for(last, process)
    time.sleep(2.5)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    step = torch.load(last, weights_only=False)["global_step"]  # complete and readable
    assert step >= 20
    resume = ["fit", "--config", str(CONFIG), *SHORT_FIT, "--ckpt_path=last", "--trainer.val_check_interval=20"]
    result = run_cli(*resume, f"--trainer.max_steps={step + 40}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resuming from lightning_logs/version_0/checkpoints/last.ckpt" in result.stderr
    assert "differ from the checkpoint's" not in result.stderr  # same config, nothing to report
    resumed = tmp_path / "lightning_logs/version_1/checkpoints/last.ckpt"
    # it went on from the saved step (to step + 40, or earlier if early stopping saw the task solved)
    assert step < torch.load(resumed, weights_only=False)["global_step"] <= step + 40


def test_the_resume_notice_names_real_differences_only(tmp_path: Path, capsys) -> None:
    """No env_kwargs or wrappers (``None``, a checkpoint's default) and an empty ``{}`` or ``[]`` from
    a config build the same env: not a difference to report. Another value is one."""
    model = DQN(4, 2)
    saved = {"env_id": "CartPole-v1", "env_kwargs": None, "wrappers": None}
    checkpoint = {"hyper_parameters": dict(model.hparams), "datamodule_hyper_parameters": saved}
    report_changed_hyperparameters(checkpoint, model, GymDataModule(env_kwargs={}, wrappers=[]), tmp_path / "x.ckpt")
    assert capsys.readouterr().err == ""
    report_changed_hyperparameters(checkpoint, model, GymDataModule(env_kwargs={"sutton_barto_reward": True}), "x")
    assert "data.env_kwargs={'sutton_barto_reward': True} (checkpoint: None)" in capsys.readouterr().err


def test_resume_takes_model_values_from_the_command_line(tmp_path: Path) -> None:
    """``--ckpt_path last`` and ``--ckpt_path FILE`` resume alike: the config's model values apply,
    the learning rate included (not the one inside the restored optimizer state). stderr names each
    model and data value that differs from the checkpoint's, another env's kwargs included."""
    fit = ["fit", "--config", str(CONFIG), *SHORT_FIT, "--trainer.enable_progress_bar=false"]
    assert run_cli(*fit, "--trainer.max_steps=300", cwd=tmp_path).returncode == 0
    first = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    env_kwargs = "--data.env_kwargs={max_episode_steps: 400}"
    overrides = {"last": ("0.5", "0.9", ()), str(first): ("0.25", "0.8", (env_kwargs,))}
    for version, (ckpt_path, (lr, gamma, data)) in enumerate(overrides.items(), start=1):
        args = [f"--ckpt_path={ckpt_path}", f"--model.lr={lr}", f"--model.gamma={gamma}", "--trainer.max_steps=400"]
        result = run_cli(*fit, *args, *data, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        notice = [line for line in result.stderr.splitlines() if "differ from the checkpoint's" in line]
        assert len(notice) == 1 and f"model.lr={float(lr)!r}" in notice[0] and "hidden_sizes" not in notice[0]
        named = "data.env_kwargs={'max_episode_steps': 400} (checkpoint: None)"
        assert (named in notice[0]) == bool(data) and notice[0].count("data.") == len(data)
        saved = torch.load(tmp_path / f"lightning_logs/version_{version}/checkpoints/last.ckpt", weights_only=False)
        assert saved["global_step"] == 400
        assert (saved["hyper_parameters"]["lr"], saved["hyper_parameters"]["gamma"]) == (float(lr), float(gamma))
        assert saved["optimizer_states"][0]["param_groups"][0]["lr"] == float(lr)
