"""A user's own env: the ``module:id`` form, env kwargs and wrappers in every env lit_dqn makes and in
the checkpoint, and every observation and action space lit_dqn accepts handled right (or refused
in one line)."""

import json
import sys
from pathlib import Path
from unittest import mock

import gymnasium as gym
import lightning as L
import numpy as np
import pytest
import torch

from lit_dqn import DQN, EpisodeStatistics, GymDataModule
from lit_dqn.checks import ConfigError
from lit_dqn.cli import DQNCLI
from lit_dqn.envs import EVAL_STEP_CAP, EnvSpec

from . import own_envs
from .conftest import ROOT, make_cli, quick_trainer, run_cli, skip_without_extra

CAP = 12  # steps per episode that env_kwargs set on CartPole below
BONUS = {"class_path": "tests.own_envs.Counting", "init_args": {"bonus": 1.0}}  # +1 per step: returns are 2 x length


def fit_briefly(data: GymDataModule, root: Path, max_steps: int = 100, **model_kwargs) -> DQN:
    model = DQN(data.obs_dim, data.n_actions, hidden_sizes=[32], obs_shape=data.obs_shape, **model_kwargs)
    quick_trainer(root, max_steps, limit_val_batches=0, enable_checkpointing=False).fit(model, datamodule=data)
    return model


def test_a_module_outside_the_package_registers_its_env_and_start_1_actions_reach_it_shifted(tmp_path) -> None:
    """``tests.own_envs:Shifted-v0`` is registered only when Gymnasium imports ``tests.own_envs``; its
    actions are 1..3 and any other raises, so an unshifted 0 would end the fit with a traceback."""
    own_envs.Shifted.seen.clear()
    data = GymDataModule("tests.own_envs:Shifted-v0", batch_size=16, warmup_steps=64, eval_episodes=2, seed=0)
    assert (data.obs_dim, data.n_actions) == (2, 3)
    model = fit_briefly(data, tmp_path, max_steps=600, lr=1e-3, gamma=0.5, eps_decay=100.0)
    assert own_envs.Shifted.seen == {1, 2, 3}  # every action was tried, none outside the env's space
    obs = np.random.default_rng(1).uniform(-1, 1, (200, 2)).astype(np.float32)
    assert np.mean(model.greedy_actions(obs) == 1) > 0.9  # index 1 is the env's action 2, the rewarded one


def test_an_env_module_that_fails_to_import_is_one_line_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"importing its module 'tests.broken_envs' failed: RuntimeError: the simu"):
        GymDataModule("tests.broken_envs:Licensed-v0")
    with pytest.raises(ConfigError, match=r"importing its module 'nopkg.envs' failed: ModuleNotFoundError"):
        GymDataModule("nopkg.envs:MyEnv-v0")
    wrapper = [{"class_path": "tests.broken_envs.Licence"}]  # a wrapper's module that fails the same way
    with pytest.raises(ConfigError, match=r"data.wrappers\[0\].class_path=.* cannot be imported: RuntimeError: the"):
        GymDataModule("CartPole-v1", wrappers=wrapper)


def test_an_env_that_refuses_its_kwargs_is_one_line_naming_them() -> None:
    """The env's own check of a kwarg (a ValueError, as examples/gridworld.py raises) and a kwarg it
    does not take (a TypeError) both name ``data.env_kwargs``."""
    with pytest.raises(ConfigError, match=r"data.env_kwargs=\{'size': 1\} cannot make the env: ValueError: size=1"):
        GymDataModule("examples.gridworld:GridWorld-v0", env_kwargs={"size": 1})
    with pytest.raises(ConfigError, match=r"data.env_kwargs=\{'sides': 4\} cannot make the env: TypeError"):
        GymDataModule("examples.gridworld:GridWorld-v0", env_kwargs={"sides": 4})


def test_env_kwargs_and_wrappers_reach_training_evaluation_the_checkpoint_test_and_record(tmp_path) -> None:
    cli, _ = make_cli(
        tmp_path,
        "--trainer.max_steps=200",
        "--trainer.val_check_interval=100",
        "--data.warmup_steps=256",
        "--data.eval_episodes=4",
        f"--data.env_kwargs={json.dumps({'max_episode_steps': CAP})}",
        f"--data.wrappers=[{json.dumps(BONUS)}]",
    )
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    episodes = EpisodeStatistics.of(cli.trainer)
    assert episodes.durations and max(episodes.durations) <= CAP  # training envs: the kwargs
    assert episodes.returns == [2.0 * d for d in episodes.durations]  # and the wrapper
    validation = float(cli.trainer.callback_metrics["val/return_mean"])
    # evaluation envs: both (CartPole's shortest episode is 8 steps: 16 or more with the bonus, 12 at most capped)
    assert CAP < validation <= 2 * CAP

    ckpt = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    saved = torch.load(ckpt, weights_only=True)["datamodule_hyper_parameters"]
    assert saved["env_kwargs"] == {"max_episode_steps": CAP} and saved["wrappers"] == [BONUS]
    env = DQN.load_from_checkpoint(ckpt).env_spec.make()  # the env, from the checkpoint alone
    env.reset(seed=0)
    steps, total, done = 0, 0.0, False
    while not done:
        _, reward, terminated, truncated, _ = env.step(0)
        steps, total, done = steps + 1, total + reward, terminated or truncated
    assert steps <= CAP and total == 2 * steps

    with mock.patch.object(sys, "argv", ["lit_dqn"]):  # `test` with no config: the checkpoint's env
        test = DQNCLI(
            DQN,
            GymDataModule,
            args=[
                "test",
                "--ckpt_path",
                str(ckpt),
                "--trainer.accelerator=cpu",
                f"--trainer.default_root_dir={tmp_path}",
            ],
        )
    assert test.datamodule.env_spec == EnvSpec("CartPole-v1", {"max_episode_steps": CAP}, (BONUS,))
    score = float(test.trainer.callback_metrics["test/return_mean"])
    assert CAP < score <= 2 * CAP

    pytest.importorskip("imageio_ffmpeg", reason="record writes mp4 (the video extra)")
    from lit_dqn.video import record_checkpoint

    [recording] = record_checkpoint(str(ckpt), episodes=1, output_dir=str(tmp_path / "videos"))
    assert recording.length <= CAP and recording.episode_return == 2 * recording.length


def test_wrappers_show_in_print_config_and_append_from_the_command_line(tmp_path) -> None:
    flatten = {"class_path": "gymnasium.wrappers.FlattenObservation"}
    result = run_cli(
        "fit",
        "--config",
        str(ROOT / "configs/cartpole.yaml"),
        f"--data.wrappers+={json.dumps(BONUS)}",
        f"--data.wrappers+={json.dumps(flatten)}",
        "--data.env_kwargs.max_episode_steps=50",
        "--print_config",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    import yaml

    data = yaml.safe_load(result.stdout)["data"]
    assert data["wrappers"] == [BONUS, flatten] and data["env_kwargs"] == {"max_episode_steps": 50}


def test_discrete_observations_are_one_hot(tmp_path) -> None:
    data = GymDataModule("FrozenLake-v1", batch_size=16, warmup_steps=64, eval_episodes=2, seed=0)
    assert (data.obs_dim, data.n_actions, data.obs_dtype) == (16, 4, torch.float32)
    batches = BatchObs()
    model = DQN(data.obs_dim, data.n_actions, hidden_sizes=[32])
    trainer = quick_trainer(tmp_path, 20, limit_val_batches=0, enable_checkpointing=False, callbacks=[batches])
    trainer.fit(model, datamodule=data)
    obs = torch.cat(batches.seen)  # [20 * B, 16]
    assert obs.dtype == torch.float32 and torch.equal(obs.sum(dim=1), torch.ones(len(obs)))
    assert set(obs.argmax(dim=1).tolist()) <= set(range(16)) and len(set(obs.argmax(dim=1).tolist())) > 1


def test_a_wrappers_function_is_given_by_its_dotted_path() -> None:
    """``TransformReward``'s ``func`` from YAML is a string: it was passed as it is and failed at the
    first step ("'str' object is not callable"); a Callable parameter's string is now imported."""
    negated = {"class_path": "gymnasium.wrappers.TransformReward", "init_args": {"func": "operator.neg"}}
    spec = EnvSpec("CartPole-v1", {}, (negated,))
    spec.check()
    env = spec.make()
    env.reset(seed=0)
    assert env.step(0)[1] == -1.0  # CartPole's +1, negated
    for bad, message in (("operator.nope", "cannot be imported: AttributeError"), ("math.pi", "is not a function")):
        wrapper = {"class_path": "gymnasium.wrappers.TransformReward", "init_args": {"func": bad}}
        with pytest.raises(ConfigError, match=rf"data.wrappers\[0\].init_args.func='{bad}' {message}"):
            EnvSpec("CartPole-v1", {}, (wrapper,)).check()


def test_grayscale_frames_name_the_wrapper_that_adds_a_channel() -> None:
    """2-D uint8 frames were told to be flattened (the MLP); the hint now gives them a channel axis,
    and following it gives the CNN its image."""
    hint = r"data.wrappers: \[\{class_path: gymnasium.wrappers.FrameStackObservation, init_args: \{stack_size: 1\}\}\]"
    with pytest.raises(ConfigError, match=rf"gives 2-D frames \(6, 7\);.*{hint}.*channels_first"):
        EnvSpec("tests.own_envs:Pixels-v0", {"shape": [6, 7]}).check()
    stack = {"class_path": "gymnasium.wrappers.FrameStackObservation", "init_args": {"stack_size": 1}}
    checked = EnvSpec("tests.own_envs:Pixels-v0", {"shape": [6, 7]}, (stack,), "channels_first").check()
    assert checked.observation_space.shape == (1, 6, 7) and checked.observation_space.dtype == np.uint8


def test_dict_and_tuple_observations_name_the_wrapper_that_flattens_them() -> None:
    hint = r"data.wrappers: \[\{class_path: gymnasium.wrappers.FlattenObservation\}\]"
    for env_id in ("tests.own_envs:Parts-v0", "Blackjack-v1"):
        with pytest.raises(ConfigError, match=hint):
            GymDataModule(env_id)
    flattened = GymDataModule(
        "tests.own_envs:Parts-v0", wrappers=[{"class_path": "gymnasium.wrappers.FlattenObservation"}]
    )
    assert flattened.obs_dim == 2 + 3  # the Box's two values and the Discrete(3) one-hot


class BatchObs(L.Callback):
    """The observations of every replay batch the learner received."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append(batch.transitions.obs)


def test_flat_uint8_observations_are_learned_as_floats(tmp_path) -> None:
    data = GymDataModule("tests.own_envs:Bytes-v0", batch_size=16, warmup_steps=64, eval_episodes=2, seed=0)
    assert data.obs_dtype == torch.float32
    batches = BatchObs()
    model = DQN(data.obs_dim, data.n_actions, hidden_sizes=[32], obs_shape=data.obs_shape)
    trainer = quick_trainer(tmp_path, 30, limit_val_batches=0, enable_checkpointing=False, callbacks=[batches])
    trainer.fit(model, datamodule=data)  # a uint8 batch into the MLP's Linear would raise at the first update
    obs = torch.cat(batches.seen)
    assert obs.dtype == torch.float32 and obs.max() > 200 and torch.equal(obs, obs.round())  # the bytes, exactly
    raw, _ = data.env_spec.make().reset(seed=0)
    assert raw.dtype == np.uint8 and model.greedy_actions(raw[None]).shape == (1,)  # acting takes the env's bytes


@pytest.mark.parametrize("game", ["Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders"])
def test_every_minatar_game_builds_a_channels_last_network(game: str, tmp_path) -> None:
    """Seaquest's (10, 10, 10) has as many channels as rows: a rule on the shape would take it as
    channels first and convolve over (width, channel). The family decides: channels last."""
    env_id = f"MinAtar/{game}-v1"
    skip_without_extra(env_id)
    cli, _ = make_cli(tmp_path, f"--data.env_id={env_id}", config=ROOT / "configs/minatar_breakout.yaml")
    shape = cli.datamodule.obs_shape  # [10, 10, C]
    encoder = cli.model.policy_net.encoder
    assert cli.datamodule.obs_layout == "channels_last" and encoder.channels_last
    frames = torch.as_tensor(np.random.default_rng(0).random((3, *shape)) < 0.2)  # [B, H, W, C] as MinAtar gives
    with torch.no_grad():  # what the CNN computes is its convolutions over rows and columns of each channel
        expected = encoder.convs(frames.permute(0, 3, 1, 2).float())
        assert torch.equal(encoder(frames), expected)


@pytest.mark.parametrize("high", [1, 255])
def test_uint8_images_reach_the_cnn_in_0_1_whatever_their_box_high(high: int, tmp_path) -> None:
    """An env whose uint8 pixels are 0 or 1 fed the CNN 0 or 1/255 when every uint8 frame was divided
    by 255: it learned, slowly, with no message. The Box's high is the divisor, linked to the model."""
    cli, _ = make_cli(
        tmp_path, "--data.env_id=tests.own_envs:Pixels-v0", f"--data.env_kwargs={{high: {high}}}",
        "--data.image_layout=channels_last", "--model.hidden_sizes=[16]", "--data.warmup_steps=32",
        "--data.batch_size=8",
    )  # fmt: skip
    encoder = cli.model.policy_net.encoder
    assert cli.model.hparams.obs_high == high and cli.model.target_net.encoder.high == high
    frames = torch.full((2, 10, 10, 3), high, dtype=torch.uint8)  # every pixel at its brightest
    with torch.no_grad():
        assert torch.equal(encoder(frames), encoder.convs(torch.ones(2, 3, 10, 10)))
    trainer = quick_trainer(tmp_path, 5, limit_val_batches=0, enable_checkpointing=False)
    trainer.fit(cli.model, datamodule=cli.datamodule)
    trainer.save_checkpoint(tmp_path / "pixels.ckpt")  # the divisor is a hyperparameter: loading keeps it
    assert DQN.load_from_checkpoint(tmp_path / "pixels.ckpt").policy_net.encoder.high == high


def test_an_image_env_of_no_known_family_says_its_layout(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"shape \(10, 10, 10\).*set data.image_layout to channels_first"):
        GymDataModule("tests.own_envs:Grid-v0")
    data = GymDataModule("tests.own_envs:Grid-v0", image_layout="channels_last", batch_size=8, warmup_steps=16)
    assert data.obs_layout == "channels_last" and data.obs_dtype == torch.bool
    with pytest.raises(ConfigError, match=r"data.image_layout='channels_last' is for image observations"):
        GymDataModule("CartPole-v1", image_layout="channels_last")


def test_images_smaller_than_the_convolution_are_one_line_and_train_flattened() -> None:
    with pytest.raises(ConfigError, match=r"images of 2x2 pixels \(channels_last.*the CNN needs at least 3x3"):
        GymDataModule("tests.own_envs:Tiny-v0", image_layout="channels_last")
    flat = GymDataModule("tests.own_envs:Tiny-v0", wrappers=[{"class_path": "gymnasium.wrappers.FlattenObservation"}])
    assert flat.obs_dim == 12 and flat.obs_layout is None


def test_a_vector_env_that_autoresets_in_the_same_step_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"autoreset in mode 'SameStep'.*'NextStep'"):
        GymDataModule("tests.own_envs:SameStep-v0", vectorization_mode="vector_entry_point")
    # Evaluation takes the batched implementation only where it resets on the next step; else copies.
    envs = EnvSpec("tests.own_envs:SameStep-v0").make_vec(2)
    assert isinstance(envs, gym.vector.SyncVectorEnv) and envs.metadata["autoreset_mode"].value == "NextStep"


def test_the_readme_example_env_trains_and_solves(tmp_path) -> None:
    """``examples/gridworld.yaml`` as the README runs it: a user's env module (``examples.gridworld``,
    imported by Gymnasium from the repository root), its kwargs and its action mask."""
    cli, _ = make_cli(tmp_path, "--trainer.max_steps=2000", config=ROOT / "examples/gridworld.yaml")
    assert cli.datamodule.env_spec.masks().source == "info" and cli.datamodule.obs_dim == 8 * 8  # one-hot cells
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert float(cli.trainer.callback_metrics["val/return_mean"]) == 1.0  # every greedy episode reaches the goal
    assert cli.trainer.global_step < 2000  # EarlyStopping: solved, not out of updates


@pytest.mark.parametrize(("env_kwargs", "cap"), [({}, EVAL_STEP_CAP), ({"max_episode_steps": 30}, 30)])
def test_evaluation_episodes_are_cut_at_the_env_s_time_limit_or_the_cap(env_kwargs: dict, cap: int, tmp_path) -> None:
    """An env that never ends an episode: validation would never return. It stops at the env's own
    time limit where it has one, else after ``EVAL_STEP_CAP`` steps, the episode counted as it went."""
    data = GymDataModule(
        "tests.own_envs:Endless-v0", env_kwargs=env_kwargs, batch_size=8, warmup_steps=16, eval_episodes=2, seed=0
    )
    assert data.env_spec.eval_step_cap == cap
    model = DQN(data.obs_dim, data.n_actions, hidden_sizes=[8])
    quick_trainer(tmp_path, 10, val_check_interval=10, check_val_every_n_epoch=None, enable_checkpointing=False).fit(
        model, datamodule=data
    )
    assert float(model.trainer.callback_metrics["val/return_mean"]) == cap  # reward 1 per step, cut at the cap
