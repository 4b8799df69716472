"""Every shipped config trains on its real env with a real Trainer, and stops at a margin over its
env's solve threshold that the config, not the code, states."""

from pathlib import Path

import gymnasium as gym
import pytest
import yaml

from lit_dqn.envs import register_family

from .conftest import ROOT, make_cli, skip_without_extra

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
# Envs whose reward_threshold is above what their validation seeds allow, with the reason.
UNREACHABLE_THRESHOLD = {
    # value iteration on Taxi's table (benchmarks/taxi_optimum.py): 7.977 on its 2000 validation episodes
    "Taxi-v4": 7.977,
}
TINY = [
    "--trainer.max_steps=150",
    "--data.warmup_steps=256",
    "--data.eval_episodes=2",
    "--trainer.enable_progress_bar=false",
]


def early_stopping(config: Path) -> dict | None:
    callbacks = yaml.safe_load(config.read_text())["trainer"].get("callbacks", [])
    stops = [c for c in callbacks if c["class_path"].endswith("EarlyStopping")]
    return stops[0]["init_args"] if stops else None


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_runs_on_its_env(config: Path, tmp_path: Path) -> None:
    env_id = yaml.safe_load(config.read_text())["data"]["env_id"]
    skip_without_extra(env_id)
    if env_id == "ALE/Breakout-v5":
        pytest.skip("trained in test_atari without validation: an untrained greedy agent never launches the ball")
    cli, recorder = make_cli(tmp_path, *TINY, "--trainer.val_check_interval=150", config=config)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 150 and len(recorder.losses) == 150  # one update per training step
    assert cli.datamodule.hparams.env_id == env_id
    assert "val/return_mean" in cli.trainer.callback_metrics


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_stops_above_its_env_threshold(config: Path) -> None:
    stop = early_stopping(config)
    if stop is None:
        pytest.skip(f"{config.name} trains for a fixed budget")
    assert (stop["monitor"], stop["mode"]) == ("val/return_mean", "max")  # the greedy validation return
    env_id = yaml.safe_load(config.read_text())["data"]["env_id"]
    register_family(env_id)
    if env_id not in gym.registry:
        pytest.skip(f"{env_id} needs an extra that is not installed")
    threshold = gym.spec(env_id).reward_threshold
    if threshold is None:  # Atari registers none: Pong's 20 is of the 21 a game allows
        assert stop["stopping_threshold"] < 21
    elif env_id in UNREACHABLE_THRESHOLD:  # stop at the best the validation seeds allow
        optimum = UNREACHABLE_THRESHOLD[env_id]
        assert optimum - 0.05 < stop["stopping_threshold"] < optimum  # EarlyStopping stops strictly above it
    else:
        assert stop["stopping_threshold"] > threshold  # e.g. 495 for CartPole-v1's 475
