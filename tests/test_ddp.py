"""DDP on the CPU with 2 processes (gloo): each rank owns its envs and replay; the job counts, evaluates
and checkpoints as one; a resume with 2 processes continues exactly.

Each rank runs ``tests/ddp_env.py``'s ``Corridor-v0``, whose episodes all last 10 steps, so every rank
is between episodes at the same updates: a checkpoint taken there resumes bit for bit (mid-episode,
the episode in progress would be dropped, as with one process).
"""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_dqn import DQN
from lit_dqn.distributed import episode_share, rank_seed
from lit_dqn.rollout import evaluate

from . import ddp_env
from .conftest import CONFIG, ROOT

WARMUP = 300  # env steps before the first update: with 1 env step per update, step k has 300 + k
DDP = (
    "--trainer.strategy=ddp",
    "--trainer.devices=2",
    "--trainer.accelerator=cpu",
    "--data.env_id=tests.ddp_env:Corridor-v0",
    f"--data.warmup_steps={WARMUP}",
    "--data.eval_episodes=9",  # split 5 + 4
    "--trainer.val_check_interval=100",
    "--trainer.log_every_n_steps=50",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
)


# every rank's process imports tests.ddp_env (Corridor-v0, RankProbe) from the repository
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


@dataclass
class DDPRun:
    cwd: Path
    ranks: list[dict]  # what tests.ddp_env.RankProbe saw on each rank
    stderr: str


def fit_ddp(cwd: Path, *args: str, returncode: int = 0) -> DDPRun:
    cwd.mkdir(parents=True, exist_ok=True)
    probe = json.dumps({"class_path": "tests.ddp_env.RankProbe", "init_args": {"out_dir": str(cwd / "probe")}})
    result = subprocess.run(
        [sys.executable, "-m", "lit_dqn", "fit", "--config", str(CONFIG), *DDP, f"--trainer.callbacks+={probe}", *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == returncode, result.stderr[-3000:]
    ranks = [torch.load(cwd / "probe" / f"rank{r}.pt", weights_only=True) for r in range(2)]
    return DDPRun(cwd, ranks, result.stderr)


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> DDPRun:
    return fit_ddp(tmp_path_factory.mktemp("whole"), "--trainer.max_steps=200")


def test_each_rank_collects_its_own_transitions(whole: DDPRun) -> None:
    first, second = whole.ranks
    assert first["obs"].shape == second["obs"].shape == (64, 4)
    assert not torch.equal(first["obs"], second["obs"])  # seeds derived from the run seed and the rank
    assert first["losses"] != second["losses"]  # each samples its own batches


def test_weights_stay_identical_on_every_rank(whole: DDPRun) -> None:
    first, second = whole.ranks
    assert len(first["losses"]) == len(second["losses"]) == 200
    for key, value in first["state_dict"].items():
        assert torch.equal(value, second["state_dict"][key]), key  # online and target networks alike


def test_counters_and_logs_count_the_whole_job(whole: DDPRun) -> None:
    per_rank = [(r["episodes"], r["env_steps"]) for r in whole.ranks]
    assert per_rank == [((WARMUP + 200) // ddp_env.EPISODE_LENGTH, WARMUP + 200)] * 2
    job = (100, 2 * (WARMUP + 200))
    assert [tuple(r["job"]) for r in whole.ranks] == [job, job]
    # every rank holds every rank's episodes, in rank order
    assert whole.ranks[0]["history"] == whole.ranks[1]["history"] == [10] * 100

    run_dir = whole.cwd / "lightning_logs" / "version_0"
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    episodes = events.Scalars("train/episode_duration")
    assert [e.step for e in episodes] == list(range(1, 101))  # each episode of the job once
    assert events.Scalars("train/env_steps")[-1].value == job[1]
    assert events.Scalars("train/episodes")[-1].value == job[0]
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1  # rank 0 writes


def test_validation_is_split_across_ranks_and_scored_as_one(whole: DDPRun) -> None:
    """The 9 greedy episodes are shared 5 + 4; the logged mean is the mean over all 9, as one process
    would score the same weights."""
    run_dir = whole.cwd / "lightning_logs" / "version_0"
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    logged = events.Scalars("val/return_mean")[-1].value
    model = DQN.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", map_location="cpu")  # a DDP checkpoint
    envs = gym.make_vec("Corridor-v0", num_envs=9)
    returns = evaluate(envs, model.greedy_actions, seed=1_000_000)
    assert logged == pytest.approx(float(np.mean(returns)), abs=1e-5)
    assert "[rank: 1]" in whole.stderr  # both ranks' EarlyStopping saw it


def test_resume_with_two_processes_continues_exactly(whole: DDPRun, tmp_path: Path) -> None:
    first = fit_ddp(tmp_path / "first", "--trainer.max_steps=100")
    ckpt = tmp_path / "first" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["global_step"] == 100 and len(saved["GymDataModule"]["ranks"]) == 2
    resumed = fit_ddp(tmp_path / "first", "--trainer.max_steps=200", f"--ckpt_path={ckpt}")
    for rank in range(2):
        assert first.ranks[rank]["losses"] == whole.ranks[rank]["losses"][:100]
        assert resumed.ranks[rank]["losses"] == whole.ranks[rank]["losses"][100:]
        for key, value in whole.ranks[rank]["state_dict"].items():
            assert torch.equal(resumed.ranks[rank]["state_dict"][key], value), key
        assert (resumed.ranks[rank]["episodes"], resumed.ranks[rank]["env_steps"]) == (50, WARMUP + 200)
    assert resumed.ranks[0]["history"] == whole.ranks[0]["history"]


def test_a_ddp_checkpoint_tests_in_one_process_but_does_not_resume_there(whole: DDPRun) -> None:
    ckpt = whole.cwd / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    args = ("--config", str(CONFIG), "--data.env_id=tests.ddp_env:Corridor-v0", "--trainer.accelerator=cpu")

    def cli(*more: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "lit_dqn", *more]
        return subprocess.run(command, cwd=whole.cwd, env=ENV, capture_output=True, text=True, timeout=300)

    test = cli("test", *args, "--data.eval_episodes=9", f"--ckpt_path={ckpt}")
    assert test.returncode == 0 and "test/return_mean" in test.stdout, test.stderr[-2000:]
    resume = cli("fit", *args, f"--data.warmup_steps={WARMUP}", "--trainer.max_steps=300", f"--ckpt_path={ckpt}")
    assert resume.returncode == 2
    assert resume.stderr.strip().splitlines()[-1] == (
        "lit_dqn: error: the checkpoint holds the replay streams of 2 process(es), this run has 1: resume with "
        "the same trainer.devices x trainer.num_nodes, or start a new run from its weights"
    )


def test_single_process_runs_are_unchanged() -> None:
    """One process: seeds, evaluation and checkpoints are as before DDP support (the determinism and
    resume tests cover the numbers); here the helpers are the identity."""
    assert rank_seed(1234, 0, 1) == 1234
    assert episode_share(100, 0, 1) == (0, 100)
    assert [episode_share(9, r, 2) for r in range(2)] == [(0, 5), (5, 4)]
    assert [episode_share(10, r, 3) for r in range(3)] == [(0, 4), (4, 3), (7, 3)]
    assert len({rank_seed(1234, r, 4) for r in range(4)}) == 4


def test_max_episodes_counts_the_job_and_stops_every_rank_at_the_same_step(tmp_path: Path) -> None:
    run = fit_ddp(tmp_path, "--trainer.max_steps=200", "--model.max_episodes=70")
    # each rank ends an episode every 10 env steps, at the same updates: 2 x (300 + 50) / 10 = 70 after 50
    assert [len(r["losses"]) for r in run.ranks] == [50, 50]
    assert [tuple(r["job"]) for r in run.ranks] == [(70, 700)] * 2


def test_sigterm_stops_every_rank_and_a_two_process_resume_continues_exactly(whole: DDPRun, tmp_path: Path) -> None:
    """SIGTERM to rank 0's process after update 99 (``tests.ddp_env.SignalAt``): every rank runs update
    100 and stops, the checkpoint holds both ranks' replay streams, the exit code is 143, and a
    2-process resume to 200 updates matches the run that never stopped, bit for bit (at 400 env
    steps every rank is between 10-step episodes)."""
    signal_at = json.dumps({"class_path": "tests.ddp_env.SignalAt", "init_args": {"step": 99}})
    stopped = fit_ddp(tmp_path, "--trainer.max_steps=200", f"--trainer.callbacks+={signal_at}", returncode=143)
    assert [len(r["losses"]) for r in stopped.ranks] == [100, 100]  # both stopped after the same update
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == 100
    states = saved["GymDataModule"]["ranks"]
    assert [s["runner"]["env_steps"] for s in states] == [WARMUP + 100] * 2
    assert not torch.equal(states[0]["buffer"]["storage"]["obs"], states[1]["buffer"]["storage"]["obs"])

    resumed = fit_ddp(tmp_path, "--trainer.max_steps=200", "--ckpt_path=last")
    for rank in range(2):
        assert resumed.ranks[rank]["losses"] == whole.ranks[rank]["losses"][100:]
        for key, value in whole.ranks[rank]["state_dict"].items():
            assert torch.equal(resumed.ranks[rank]["state_dict"][key], value), key


def test_action_masks_hold_on_every_rank(tmp_path: Path) -> None:
    """MaskedCorridor raises on an action its mask forbids: both ranks explore, and play their share
    of the evaluation episodes, among valid actions only, and each rank's replay keeps its masks."""
    run = fit_ddp(
        tmp_path, "--data.env_id=tests.ddp_env:MaskedCorridor-v0", "--data.action_masks=true", "--trainer.max_steps=100"
    )
    assert [len(r["losses"]) for r in run.ranks] == [100, 100]
    for rank in run.ranks:
        masks = rank["next_mask"]
        assert masks.shape == (WARMUP + 100, 2) and masks[:, 0].all()
        assert 0.3 < masks[:, 1].float().mean() < 0.7  # action 1 valid in about half the states
    assert not torch.equal(run.ranks[0]["next_mask"], run.ranks[1]["next_mask"])  # each rank its own envs


RAINBOW = (
    "--model.distributional=c51",
    "--model.v_min=0",
    "--model.v_max=10",
    "--model.noisy=true",
    "--model.eps_start=0",  # the noise alone explores: every action depends on the rank's noise
    "--model.eps_end=0",
    "--model.dueling=true",
    "--model.double_dqn=true",
    "--data.prioritized=true",
    "--data.n_step=3",
)


def test_rainbow_on_two_processes_keeps_ranks_in_step_and_resumes_exactly(tmp_path: Path) -> None:
    """C51, noisy nets and the rest of Rainbow's parts under DDP: each rank draws its own noise (its
    noise buffers differ from the other's), the learned weights stay identical on both,
    and a 2-process resume after a SIGTERM at update 100 (the checkpoint holds each rank's noise
    generator and acting noise) matches the run that never stopped, bit for bit."""
    whole = fit_ddp(tmp_path / "whole", *RAINBOW, "--trainer.max_steps=200")
    first, second = whole.ranks
    noise = [key for key in first["state_dict"] if key.endswith(("noise_in", "noise_out"))]
    assert noise and any(not torch.equal(first["state_dict"][k], second["state_dict"][k]) for k in noise)
    for key, value in first["state_dict"].items():
        if key not in noise:  # the learned means and scales, and the atoms
            assert torch.equal(value, second["state_dict"][key]), key
    # stopped after update 100 of the same 200 (prioritized replay's β keeps the pace of the budget)
    signal_at = json.dumps({"class_path": "tests.ddp_env.SignalAt", "init_args": {"step": 99}})
    stop = f"--trainer.callbacks+={signal_at}"
    stopped = fit_ddp(tmp_path / "first", *RAINBOW, "--trainer.max_steps=200", stop, returncode=143)
    assert [len(r["losses"]) for r in stopped.ranks] == [100, 100]
    ckpt = tmp_path / "first" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["noise_generator"].shape[0] == 2  # one state per rank
    acting = saved["acting_noise"]  # [ranks, N]: the online net's noise on each rank
    assert acting.shape == (2, whole.ranks[0]["acting_noise"][100].numel()) and not torch.equal(acting[0], acting[1])
    resumed = fit_ddp(tmp_path / "first", *RAINBOW, "--trainer.max_steps=200", f"--ckpt_path={ckpt}")
    for rank in range(2):  # rank 1's first env steps act with its own noise, not with rank 0's saved buffers
        for step in range(100, 200):
            assert torch.equal(resumed.ranks[rank]["acting_noise"][step], whole.ranks[rank]["acting_noise"][step])
        assert resumed.ranks[rank]["losses"] == whole.ranks[rank]["losses"][100:]
        for key, value in whole.ranks[rank]["state_dict"].items():
            assert torch.equal(resumed.ranks[rank]["state_dict"][key], value), key
