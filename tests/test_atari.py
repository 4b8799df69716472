"""Atari (the atari extra): the Nature DQN pipeline from Gymnasium's wrappers, a short fit on the frame
ring, and an exact resume across a lost life."""

import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.wrappers import AtariPreprocessing, ClipReward, FrameStackObservation

from lit_dqn.atari import EmulatorState, EpisodicLife
from lit_dqn.checks import ConfigError
from lit_dqn.envs import EnvSpec
from lit_dqn.networks import DuelingQNetwork
from lit_dqn.plots import TrainingPlot
from lit_dqn.video import GreedyVideo

from .conftest import ROOT, make_cli, skip_without_extra

BREAKOUT = "ALE/Breakout-v5"


def wrappers(env: gym.Env) -> list[type]:
    chain = []
    while isinstance(env, gym.Wrapper):
        chain.append(type(env))
        env = env.env
    return chain


def test_training_and_evaluation_pipelines() -> None:
    skip_without_extra(BREAKOUT)
    train, evaluate = EnvSpec(BREAKOUT).make(training=True), EnvSpec(BREAKOUT).make()
    for env in (train, evaluate):
        obs, _ = env.reset(seed=0)
        assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
        assert env.observation_space.shape == (4, 84, 84)
        assert env.unwrapped._frameskip == 1  # AtariPreprocessing skips frames, max-pooling the last two
        assert env.unwrapped.ale.getFloat("repeat_action_probability") == pytest.approx(0.25)  # v5 sticky actions
        preprocessing = env.get_wrapper_attr("frame_skip"), env.get_wrapper_attr("noop_max")
        assert preprocessing == (4, 30)
        assert env.metadata["render_fps"] == pytest.approx(15)  # 60 emulator frames/s, 4 per step
    assert {EpisodicLife, ClipReward} <= set(wrappers(train))
    assert not {EpisodicLife, ClipReward} & set(wrappers(evaluate))
    assert {FrameStackObservation, EmulatorState, AtariPreprocessing} <= set(wrappers(evaluate))


def play_until_terminated(env: gym.Env, rng: np.random.Generator) -> tuple[int, list[float]]:
    rewards = []
    for steps in range(1, 20_000):
        _, reward, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
        rewards.append(float(reward))
        if terminated or truncated:
            return steps, rewards
    raise AssertionError("no episode end in 20000 steps")


def test_a_lost_life_ends_the_training_episode_but_not_the_game() -> None:
    skip_without_extra(BREAKOUT)
    rng = np.random.default_rng(0)
    train = EnvSpec(BREAKOUT).make(training=True)
    train.reset(seed=1)
    ale = train.unwrapped.ale
    assert ale.lives() == 5
    play_until_terminated(train, rng)
    assert ale.lives() == 4  # one life lost ends the learner's episode...
    frame = ale.getEpisodeFrameNumber()
    train.reset()
    assert ale.lives() == 4 and ale.getEpisodeFrameNumber() > frame  # ...and the same game goes on

    evaluate = EnvSpec(BREAKOUT).make()
    evaluate.reset(seed=1)
    play_until_terminated(evaluate, rng)
    assert evaluate.unwrapped.ale.lives() == 0  # evaluation plays the whole game


def test_training_rewards_are_clipped() -> None:
    skip_without_extra(BREAKOUT)
    env = EnvSpec(BREAKOUT).make(training=True)
    while not isinstance(env, ClipReward):
        env = env.env
    assert [env.reward(r) for r in (-3.0, 0.0, 0.5, 7.0)] == [-1.0, 0.0, 0.5, 1.0]  # Breakout's rows score 1-7


def test_atari_refuses_the_vector_entry_point() -> None:
    skip_without_extra(BREAKOUT)
    with pytest.raises(ConfigError, match="use 'sync' or 'async'"):
        EnvSpec(BREAKOUT).make_vec(2, vectorization_mode="vector_entry_point")


TINY = (
    "--seed_everything=1",
    "--data.batch_size=8",
    "--data.buffer_capacity=2000",
    "--data.warmup_steps=200",
    "--trainer.val_check_interval=100000",  # no validation: an untrained greedy agent never launches the ball
    "--trainer.num_sanity_val_steps=0",
    "--data.eval_episodes=1",
    "--data.updates_per_step=1.0",
    "--model.eps_end=1.0",  # random play: lives are lost often, whatever the network learns
)


def breakout_cli(root: Path, *overrides: str):
    cli, recorder = make_cli(root, *TINY, *overrides, config=ROOT / "configs/atari_breakout.yaml")
    cli.trainer.callbacks[:] = [c for c in cli.trainer.callbacks if not isinstance(c, GreedyVideo | TrainingPlot)]
    return cli, recorder


def test_breakout_trains_on_the_frame_ring_and_resumes_exactly_after_a_lost_life(tmp_path: Path) -> None:
    """fit 2N == fit to N, stop at the end of a life, resume to 2N: the same losses and weights.

    The resumed run restores the emulator (its sticky-action generator and the game the lost life
    continues), so it plays on exactly as the uninterrupted run does.
    """
    skip_without_extra(BREAKOUT)
    from .test_resume import StopAt

    total = 160
    whole, whole_steps = breakout_cli(tmp_path / "whole", f"--trainer.max_steps={total}")
    whole.trainer.fit(whole.model, datamodule=whole.datamodule)
    assert len(whole_steps.losses) == total and all(np.isfinite(whole_steps.losses))
    n = next(i + 1 for i in range(40, total - 20) if whole_steps.episode_ended[i])

    first, _ = breakout_cli(tmp_path / "first", f"--trainer.max_steps={total}")
    first.trainer.callbacks.append(StopAt(n))
    first.trainer.fit(first.model, datamodule=first.datamodule)
    ckpt = tmp_path / "first/lightning_logs/version_0/checkpoints/last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    data = saved["GymDataModule"]
    assert data["buffer"]["storage"]["frames"].shape == (2000, 84, 84)
    assert data["buffer"]["storage"]["frames"].dtype == torch.uint8
    (emulator,) = data["runner"]["emulators"]
    assert emulator["ale"].dtype == torch.uint8 and 0 < emulator["lives"] < 5  # stopped mid-game, after a life

    resumed, resumed_steps = breakout_cli(tmp_path / "resumed", f"--trainer.max_steps={total}")
    resumed.trainer.fit(resumed.model, datamodule=resumed.datamodule, ckpt_path=str(ckpt))
    assert resumed_steps.losses == whole_steps.losses[n:]
    for a, b in zip(resumed.model.state_dict().values(), whole.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert resumed_steps.counters == whole_steps.counters


def test_the_atari_configs_use_the_nature_cnn(tmp_path: Path) -> None:
    skip_without_extra(BREAKOUT)
    for name in ("atari_pong.yaml", "atari_breakout.yaml"):
        cli, _ = make_cli(tmp_path, config=ROOT / "configs" / name)
        assert cli.datamodule.obs_shape == [4, 84, 84] and cli.datamodule.obs_dtype == torch.uint8
        convs = [m for m in cli.model.policy_net.modules() if isinstance(m, torch.nn.Conv2d)]
        assert [c.kernel_size for c in convs] == [(8, 8), (4, 4), (3, 3)]
        assert cli.datamodule.hparams.buffer_capacity == 100_000 and cli.datamodule.hparams.updates_per_step == 0.25


def test_without_ale_py_the_atari_configs_name_the_extra() -> None:
    code = (
        "import sys; sys.modules['ale_py'] = None\n"
        "from lit_dqn.cli import main\n"
        "sys.exit(main(['fit', '--config', 'configs/atari_pong.yaml']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "lit_dqn: error: data.env_id='ALE/Pong-v5' needs the atari extra: pip install \"lit-dqn[atari]\""
    )


# Rainbow's other parts on the frame ring: C51 over the clipped rewards' range, noisy nets, dueling,
# Double DQN and 3-step windows, whose stacks the ring rebuilds across episode starts.
RAINBOW = (
    "--model.distributional=c51",
    "--model.noisy=true",
    "--model.dueling=true",
    "--model.double_dqn=true",
    "--data.n_step=3",
)


@pytest.mark.parametrize("head", [(), RAINBOW], ids=["expected_q", "rainbow"])
def test_prioritized_replay_trains_on_the_frame_ring(head: tuple[str, ...], tmp_path: Path) -> None:
    skip_without_extra(BREAKOUT)
    cli, recorder = breakout_cli(tmp_path, "--trainer.max_steps=40", "--data.prioritized=true", *head)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert len(recorder.losses) == 40 and all(np.isfinite(recorder.losses))
    # a smoke test of the learner (ε stays 1 here, so the noise never picks an action): every part took effect
    model, rainbow = cli.model, bool(head)
    assert (model.policy_net.distribution is not None) == rainbow == bool(model._noisy_layers)
    assert isinstance(model.policy_net, DuelingQNetwork) == rainbow
    assert (cli.datamodule.hparams.n_step == 3) == rainbow and model.hparams.double_dqn == rainbow
    saved = torch.load(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    buffer = saved["GymDataModule"]["buffer"]
    tree = buffer["storage"]["weights"]  # the sum-tree: root at 1, leaves from len/2
    leaves = tree[len(tree) // 2 :][: buffer["capacity"]]
    sampleable = buffer["host"]["sampleable"]
    assert buffer["max_priority"] > 0 and bool((leaves[sampleable] > 0).all()) and not leaves[~sampleable].any()
    assert tree[1].item() == pytest.approx(leaves.sum().item())
