import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "cartpole.yaml"
TUTORIAL_CONFIG = ROOT / "configs" / "cartpole_tutorial.yaml"


def run_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m lit_dqn ARGS`` the way a user does, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "lit_dqn", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


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
