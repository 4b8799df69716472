import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import lightning as L
import pytest
import torch

from lit_dqn import DQN, GymDataModule
from lit_dqn.cli import DQNCLI, main

# pytest-xdist's workers (README: the suite runs on every core) share the cores: one torch thread
# each on 2 cores, also in the CLI subprocesses. Two workers of two threads each oversubscribed them
# (OpenMP threads spin while they wait): the suite took 42 minutes that way, against 27 in one process.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    THREADS = max(1, (os.cpu_count() or 1) // WORKERS)
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
    torch.set_num_threads(THREADS)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "cartpole.yaml"
TUTORIAL_CONFIG = ROOT / "configs" / "cartpole_tutorial.yaml"


# the module each optional env family imports, by extra (see lit_dqn.envs.EXTRAS)
EXTRA_MODULES = {"box2d": "Box2D", "minatar": "minatar", "atari": "ale_py"}


def skip_without_extra(env_id: str) -> None:
    """Skip a test whose env needs an extra that is not installed (README's quick start installs
    .[dev] only; CI installs every extra, so there it runs)."""
    from lit_dqn.envs import missing_extra

    extra = missing_extra(env_id)  # the extra of the env's family, installed or not
    if extra is not None:
        pytest.importorskip(EXTRA_MODULES[extra], reason=f'{env_id} needs pip install -e ".[{extra}]"')


def run_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m lit_dqn ARGS`` the way a user does, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "lit_dqn", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def run_main(argv: list[str], cwd: Path, monkeypatch, capsys) -> subprocess.CompletedProcess:
    """``lit_dqn.cli.main(argv)`` in this process, in ``cwd``, as a finished command: its exit code
    and what it printed (Lightning's log lines, written by handlers made at import, are not seen)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["lit_dqn"])  # LightningCLI warns when pytest's arguments are there too
    capsys.readouterr()
    code = main(argv)
    return subprocess.CompletedProcess(argv, code, *capsys.readouterr())


@dataclass
class FitRun:
    cwd: Path
    run_dir: Path  # lightning_logs/version_0
    result: subprocess.CompletedProcess


# A short CPU run of the default config, shared by the tests that read what a fit leaves behind.
SHORT_FIT = (
    "--trainer.accelerator=cpu",
    "--trainer.max_steps=600",
    "--trainer.val_check_interval=300",
    "--trainer.log_every_n_steps=50",
    "--data.warmup_steps=300",
    "--data.eval_episodes=10",
)


@pytest.fixture(scope="session")
def fit_run(tmp_path_factory: pytest.TempPathFactory) -> FitRun:
    cwd = tmp_path_factory.mktemp("fit")
    result = run_cli("fit", "--config", str(CONFIG), *SHORT_FIT, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return FitRun(cwd, cwd / "lightning_logs" / "version_0", result)


class StepRecorder(L.Callback):
    """Per training step (one update each): the loss, and whether an episode ended while its batch was collected."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.episode_ended: list[bool] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.episode_ended.append(bool(batch.finished))
        self.losses.append(outputs["loss"].item())

    def on_train_end(self, trainer, pl_module) -> None:
        runner = trainer.datamodule.runner
        self.counters = (runner.env_steps, runner.episodes, len(runner.buffer), runner.buffer.pos)


class KeepSampledBatch(L.Callback):
    """Keeps each replay batch the learner draws (``self.transitions``: drawn when Lightning fetches the
    batch, before its update), for checks that recompute the update from it."""

    def on_train_start(self, trainer, pl_module) -> None:
        buffer = trainer.datamodule.buffer
        sample = buffer.sample

        def keep(*args, **kwargs):
            self.transitions = sample(*args, **kwargs)
            return self.transitions

        buffer.sample = keep


def make_cli(root: Path, *overrides: str, config: Path = CONFIG) -> tuple[DQNCLI, StepRecorder]:
    """``lit_dqn fit --config CONFIG OVERRIDES`` (default: configs/cartpole.yaml) on the CPU, in-process
    and not yet run, writing under ``root``, with a ``StepRecorder`` attached."""
    args = ["--config", str(config), "--trainer.accelerator=cpu", f"--trainer.default_root_dir={root}"]
    args += ["--trainer.enable_model_summary=false"]
    with mock.patch.object(sys, "argv", ["lit_dqn"]):  # pytest's own arguments are not the CLI's
        cli = DQNCLI(DQN, GymDataModule, args=[*args, *overrides], run=False)
    recorder = StepRecorder()
    cli.trainer.callbacks.append(recorder)
    return cli, recorder


def record_td_losses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """From now on (until the next call), every update's TD loss as a float, for bitwise comparisons."""
    import lit_dqn.losses
    import lit_dqn.module

    losses: list[float] = []

    def recorded(*args, **kwargs):
        loss = lit_dqn.losses.td_loss(*args, **kwargs)
        losses.append(loss.item())
        return loss

    monkeypatch.setattr(lit_dqn.module, "td_loss", recorded)
    return losses


def cuda_generator_state(seed: int, offset: int) -> torch.Tensor:
    """What ``torch.Generator("cuda").get_state()`` returns: Philox's seed and offset, 16 bytes."""
    return torch.tensor([seed, offset], dtype=torch.int64).view(torch.uint8)


def quick_trainer(root: Path, max_steps: int, **kwargs) -> L.Trainer:
    """A CPU Trainer for ``max_steps`` updates with no logger, bar or summary: for in-process fits."""
    return L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )
