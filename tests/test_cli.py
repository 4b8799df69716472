import shutil
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_dqn import DQN, EpisodeStatistics, GymDataModule
from lit_dqn.checkpoints import latest_last_checkpoint
from lit_dqn.cli import DQNCLI

from .conftest import CONFIG, ROOT, SHORT_FIT, FitRun, make_cli, run_cli

SMALL_WARMUP = ("--data.batch_size=8", "--data.warmup_steps=50")


def read_events(run_dir) -> EventAccumulator:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def test_help_lists_subcommands_and_options(tmp_path) -> None:
    top = run_cli("--help", cwd=tmp_path)
    assert top.returncode == 0
    assert all(cmd in top.stdout for cmd in ("fit", "validate", "test"))
    fit = run_cli("fit", "--help", cwd=tmp_path)
    assert fit.returncode == 0
    for option in ("--model.lr", "--model.tau", "--data.env_id", "--data.buffer_capacity", "--trainer.max_steps"):
        assert option in fit.stdout


def test_print_config_applies_overrides_and_links_sizes(tmp_path) -> None:
    args = ["--config", str(CONFIG), "--model.lr", "3e-4", "--trainer.max_steps", "2000", "--seed_everything", "7"]
    result = run_cli("fit", *args, "--data.env_id", "Acrobot-v1", "--print_config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["model"]["lr"] == pytest.approx(3e-4)
    assert config["trainer"]["max_steps"] == 2000
    assert config["seed_everything"] == 7
    assert config["data"]["env_id"] == "Acrobot-v1"
    assert config["model"]["grad_clip_value"] == 100
    # sizes are linked from the datamodule at instantiation, never written in a config
    assert "obs_dim" not in config["model"] and "n_actions" not in config["model"]
    assert not (tmp_path / "lightning_logs").exists()


def test_default_root_dir_moves_logs_and_checkpoints(tmp_path) -> None:
    args = ["--config", str(CONFIG), "--trainer.max_steps=20", "--data.warmup_steps=256", "--data.eval_episodes=2"]
    result = run_cli("fit", *args, "--trainer.default_root_dir=runs/a", "--trainer.val_check_interval=10", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = tmp_path / "runs/a/lightning_logs/version_0"
    assert (run_dir / "checkpoints/last.ckpt").is_file() and (run_dir / "config.yaml").is_file()
    assert list(run_dir.glob("events.out.tfevents.*")) and (run_dir / "episode_durations.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # nothing in the current directory
    # and `--ckpt_path last` looks for the run there
    again = run_cli(
        "fit", *args, "--trainer.default_root_dir=runs/a", "--trainer.max_steps=30", "--ckpt_path=last", cwd=tmp_path
    )
    assert (
        again.returncode == 0 and "Resuming from runs/a/lightning_logs/version_0/checkpoints/last.ckpt" in again.stderr
    )


def test_a_fit_prints_no_warnings_and_leaves_the_warning_filters_as_they_were(fit_run: FitRun) -> None:
    """Lightning's warnings that do not apply to the replay stream are filtered during the fit only:
    importing lit_dqn adds no filter, and a fit leaves none behind."""
    assert "Warning" not in fit_run.result.stderr and "deprecated" not in fit_run.result.stderr
    code = """
import sys, warnings
import lightning, torch, gymnasium  # the libraries install their own filters at import
before = list(warnings.filters)
from lit_dqn import DQN, GymDataModule
from lit_dqn.cli import DQNCLI
assert warnings.filters == before, "import"
args = ["--config", "configs/cartpole.yaml", "--trainer.max_steps=5", "--data.warmup_steps=256",
        "--trainer.enable_progress_bar=false", "--trainer.default_root_dir=" + ROOT_DIR]
cli = DQNCLI(DQN, GymDataModule, args=args, run=False)  # as from Python: no CLI main() around it
cli.trainer.fit(cli.model, datamodule=cli.datamodule)
assert warnings.filters == before, [f for f in warnings.filters if f not in before]
"""
    code = code.replace("ROOT_DIR", repr(str(fit_run.cwd / "filters")))
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "IterableDataset" not in result.stderr  # filtered while the fit ran


def test_fit_writes_tensorboard_scalars_plot_and_checkpoints(fit_run: FitRun) -> None:
    run_dir = fit_run.run_dir
    assert (run_dir / "config.yaml").is_file() and (run_dir / "episode_durations.png").stat().st_size > 10_000
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and any(name.startswith("best-") for name in checkpoints)

    events = read_events(run_dir)
    tags = events.Tags()
    for tag in (
        "train/episode_duration",
        "train/episode_duration_mean100",
        "train/episode_return",
        "train/episode_return_mean100",
        "train/loss",
        "train/epsilon",
        "train/q_mean",
        "train/replay_size",
        "train/env_steps",
        "val/return_mean",
    ):
        assert tag in tags["scalars"], tag
    assert "train/episode_durations" in tags["images"]

    durations = events.Scalars("train/episode_duration")
    steps = [e.step for e in durations]
    assert steps == list(range(1, len(steps) + 1))  # x axis: episode index
    values = np.array([e.value for e in durations])
    assert (values >= 8).all() and (values <= 500).all() and (values == values.round()).all()
    # the 100-episode mean is logged at the newest episode every log_every_n_steps, and at the end
    means = events.Scalars("train/episode_duration_mean100")
    mean_steps = [e.step for e in means]
    assert len(means) >= 5 and mean_steps == sorted(set(mean_steps)) and mean_steps[-1] == len(values)
    for event in means:
        assert event.value == pytest.approx(values[max(0, event.step - 100) : event.step].mean(), rel=1e-5)
    # CartPole pays +1 per step: each return and its mean equal the duration and its mean
    assert [e.value for e in events.Scalars("train/episode_return")] == values.tolist()
    assert [(e.step, e.value) for e in events.Scalars("train/episode_return_mean100")] == [
        (e.step, e.value) for e in means
    ]
    # ε decays as env steps accumulate; loss is logged every log_every_n_steps updates
    eps = [e.value for e in events.Scalars("train/epsilon")]
    assert eps == sorted(eps, reverse=True) and eps[0] < 1.0
    assert [e.step for e in events.Scalars("train/loss")][:3] == [50, 100, 150]


def test_progress_bar_shows_episode_stats(fit_run: FitRun) -> None:
    for key in ("episodes=", "return=", "duration=", "return100=", "duration100=", "eps="):
        assert key in fit_run.result.stdout + fit_run.result.stderr


def test_checkpoint_loads_without_env_and_predicts_q_values(fit_run: FitRun) -> None:
    model = DQN.load_from_checkpoint(fit_run.run_dir / "checkpoints" / "last.ckpt", map_location="cpu")
    model.eval()
    obs = torch.randn(7, 4)
    q = model(obs)
    assert q.shape == (7, 2) and q.dtype == torch.float32
    assert model.hparams.obs_dim == 4 and model.hparams.n_actions == 2
    # the target network was restored too, and it differs from the online network (soft updates)
    assert not torch.equal(model.target_net(obs), q)


def test_test_subcommand_evaluates_checkpoint(fit_run: FitRun) -> None:
    ckpt = fit_run.run_dir / "checkpoints" / "last.ckpt"
    args = ["--config", str(CONFIG), "--trainer.accelerator=cpu", "--data.eval_episodes=10", "--ckpt_path", str(ckpt)]
    result = run_cli("test", *args, cwd=fit_run.cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/return_mean" in result.stdout


@pytest.mark.parametrize(
    ("given", "episodes"),
    [
        ((), 10),
        (("--data.eval_episodes=100",), 100),
        (("--data.eval_episodes", "100"), 100),
        (("--data.eval_ep=100",), 100),
        (("--data.eval_episodes=25",), 25),
        (("--config", "data-25.yaml"), 25),
        (("--config", "data-100.yaml"), 10),
    ],
    ids=["nothing", "the default", "the default, two tokens", "a prefix", "another", "a config", "a config's default"],
)
def test_validate_takes_the_checkpoints_data_unless_given(
    given: tuple[str, ...], episodes: int, fit_run: FitRun, tmp_path
) -> None:
    """The checkpoint was trained with ``data.eval_episodes=10``. ``validate`` takes that unless the
    command line names the key (the default included: it scored 10 episodes when asked for 100) or
    a config sets it to other than the default."""
    (tmp_path / "data-25.yaml").write_text("data:\n  eval_episodes: 25\n")
    (tmp_path / "data-100.yaml").write_text("data:\n  eval_episodes: 100\n")
    ckpt = fit_run.run_dir / "checkpoints" / "last.ckpt"
    args = ["validate", "--ckpt_path", str(ckpt), "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path}"]
    args += [str(tmp_path / arg) if arg.endswith(".yaml") else arg for arg in given]
    with mock.patch.object(sys, "argv", ["lit_dqn"]):
        cli = DQNCLI(DQN, GymDataModule, args=args)
    assert cli.datamodule.hparams.eval_episodes == episodes
    assert cli.datamodule.val_dataloader().dataset.episodes == episodes  # what validation played
    assert cli.datamodule.hparams.warmup_steps == 300  # the checkpoint's, never given here


def test_validate_last_rebuilds_the_model_the_checkpoint_was_trained_with(fit_run: FitRun, tmp_path) -> None:
    """``--ckpt_path last`` was found only after the model and data module were built from the
    config, so ``validate``/``test`` refused a checkpoint of another network (or scored with the
    config's data values); it is found first now, as a file given by path is."""
    shutil.copytree(fit_run.run_dir.parent, tmp_path / "lightning_logs")
    trained = torch.load(fit_run.run_dir / "checkpoints" / "last.ckpt", weights_only=False)["hyper_parameters"]
    args = ["validate", "--ckpt_path=last", "--model.hidden_sizes=[8]", "--trainer.accelerator=cpu"]
    with mock.patch.object(sys, "argv", ["lit_dqn"]):
        cli = DQNCLI(DQN, GymDataModule, args=[*args, f"--trainer.default_root_dir={tmp_path}"])
    assert list(cli.model.hparams.hidden_sizes) == list(trained["hidden_sizes"]) != [8]
    assert cli.datamodule.hparams.eval_episodes == 10  # the checkpoint's, as for a path


def test_a_run_without_a_config_keeps_its_final_state_in_last_ckpt(tmp_path) -> None:
    """With no checkpoint callback configured, Lightning's default one kept only the checkpoint of
    the last validation (``epoch=0-step=100.ckpt``): the updates after it were lost, and
    ``--ckpt_path last`` found nothing."""
    args = ["--data.env_id=CartPole-v1", "--trainer.max_steps=150", "--trainer.val_check_interval=100"]
    args += [
        *SMALL_WARMUP,
        "--data.eval_episodes=2",
        "--trainer.accelerator=cpu",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    with mock.patch.object(sys, "argv", ["lit_dqn"]):
        cli = DQNCLI(DQN, GymDataModule, args=args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    found = latest_last_checkpoint(tmp_path / "lightning_logs")
    assert found is not None and found[1]["global_step"] == 150


def test_max_episodes_stops_training(tmp_path) -> None:
    # one env and a tiny warm-up, so episodes end one per step at most and the count is exact
    args = [*SHORT_FIT, "--model.max_episodes=5", "--data.batch_size=8", "--data.warmup_steps=8"]
    result = run_cli("fit", "--config", str(CONFIG), *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    events = read_events(tmp_path / "lightning_logs" / "version_0")
    assert [e.step for e in events.Scalars("train/episode_duration")] == [1, 2, 3, 4, 5]
    # training stopped between logging steps: the 100-episode mean is still logged at the last episode
    assert events.Scalars("train/episode_duration_mean100")[-1].step == 5
    ckpt = torch.load(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=False)
    assert ckpt["global_step"] < 600


def test_a_config_saved_by_an_earlier_version_still_loads(tmp_path) -> None:
    """Every saved ``config.yaml`` has ``optimizer: null`` and ``lr_scheduler: null`` (LightningCLI's keys,
    which only a value other than null is refused for)."""
    saved = tmp_path / "config.yaml"
    saved.write_text("optimizer: null\nlr_scheduler: null\n")
    cli, _ = make_cli(tmp_path, "--config", str(saved), "--trainer.max_steps=10")
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)  # warm-up of 1000 env steps, then 10 updates
    optimizer = cli.model.optimizers(use_pl_optimizer=False)
    assert (
        isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["amsgrad"]
    )  # the module's own, not one of the CLI's
    assert cli.trainer.global_step == 10


def test_min_steps_delays_a_stop_only_until_it_is_reached(tmp_path) -> None:
    """``model.max_episodes`` asks to stop at once; ``trainer.min_steps`` holds it off to step 250,
    no further (Lightning's implied ``min_epochs=1`` would hold it to max_steps: the epoch is endless)."""
    args = ["--model.max_episodes=3", "--trainer.min_steps=250", "--trainer.max_steps=600", "--data.batch_size=8"]
    cli, _ = make_cli(tmp_path, "--data.warmup_steps=50", "--trainer.val_check_interval=1000", *args)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 250


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_mixed_precision_trains_with_clipping(precision: str, tmp_path) -> None:
    """Lightning's AMP clipping refuses a fused optimizer: mixed precision gets the unfused AdamW."""
    cli, recorder = make_cli(tmp_path, f"--trainer.precision={precision}", "--trainer.max_steps=20", *SMALL_WARMUP)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 20 and all(np.isfinite(recorder.losses))
    assert cli.model.hparams.grad_clip_value is not None


def test_train_scalars_keep_their_pace_across_finite_epochs(tmp_path) -> None:
    """Three epochs of 50 updates: ``train/*`` every 20 updates of the run, not of each epoch."""
    epochs = ["--trainer.max_steps=-1", "--trainer.max_epochs=3", "--trainer.limit_train_batches=50"]
    cli, _ = make_cli(tmp_path, *epochs, "--trainer.log_every_n_steps=20", "--trainer.val_check_interval=1000")
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 150
    events = read_events(tmp_path / "lightning_logs/version_0")
    assert [e.step for e in events.Scalars("train/loss")] == [20, 40, 60, 80, 100, 120, 140]


def test_without_a_logger_plots_videos_and_last_go_to_the_root_dir(tmp_path, monkeypatch) -> None:
    """``trainer.logger: false``: the configured plot and video are written where Lightning puts the
    checkpoints (``default_root_dir``), and ``--ckpt_path last`` finds ``checkpoints/last.ckpt`` there."""
    cli, _ = make_cli(tmp_path, "--trainer.logger=false", "--trainer.max_steps=60", *SMALL_WARMUP)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert (tmp_path / "episode_durations.png").is_file()
    assert list((tmp_path / "videos").rglob("seed-2000000.*"))
    found = latest_last_checkpoint(tmp_path)
    assert found is not None and found[0] == tmp_path / "checkpoints/last.ckpt"
    # a second such run (its config.yaml moved away: Lightning refuses to replace it) shares checkpoints/,
    # where Lightning names its last last-v1.ckpt: that is the newest. Its final save, after its
    # validation's, goes there too: it wrote last.ckpt, over the first run's final state.
    (tmp_path / "config.yaml").rename(tmp_path / "first-config.yaml")
    args = ("--trainer.logger=false", "--trainer.max_steps=40", "--trainer.val_check_interval=30", *SMALL_WARMUP)
    cli, _ = make_cli(tmp_path, *args)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    found = latest_last_checkpoint(tmp_path)
    assert found is not None and found[0] == tmp_path / "checkpoints/last-v1.ckpt" and found[1]["global_step"] == 40
    assert torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 60  # the first run's
    # a file a user's ModelCheckpoint names last-something is not a last checkpoint
    shutil.copy(tmp_path / "checkpoints/last.ckpt", tmp_path / "checkpoints/last-best.ckpt")
    assert latest_last_checkpoint(tmp_path)[0] == tmp_path / "checkpoints/last-v1.ckpt"


@pytest.mark.parametrize("listed", [False, True], ids=["added", "listed-in-the-config"])
def test_every_trainer_the_cli_builds_keeps_one_episode_history(listed: bool, tmp_path) -> None:
    """The episode curves, means and progress-bar figures come from one ``EpisodeStatistics``: the
    CLI adds it, unless the config lists one already (two would log every episode twice)."""
    args = ["--config", str(CONFIG), f"--trainer.default_root_dir={tmp_path}"]
    args += ["--trainer.callbacks+=lit_dqn.episodes.EpisodeStatistics"] if listed else []
    cli = DQNCLI(DQN, GymDataModule, args=args, run=False)
    assert sum(isinstance(cb, EpisodeStatistics) for cb in cli.trainer.callbacks) == 1
    assert EpisodeStatistics.of(cli.trainer) is not None


def test_progress_bar_can_be_turned_off(tmp_path) -> None:
    """The configs list EpisodeProgressBar; --trainer.enable_progress_bar false drops it rather than
    failing on the conflict (Lightning refuses a progress bar callback with the bar disabled)."""
    args = [*SHORT_FIT, "--trainer.max_steps=200", "--trainer.enable_progress_bar=false"]
    result = run_cli("fit", "--config", str(CONFIG), *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Epoch 0" not in result.stdout + result.stderr and "episodes=" not in result.stdout + result.stderr
    assert (tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt").is_file()


def test_dotted_overrides_pick_another_env(tmp_path) -> None:
    args = [*SHORT_FIT, "--data.env_id=Acrobot-v1", "--trainer.max_steps=300", "--model.hidden_sizes=[32]"]
    result = run_cli("fit", "--config", str(CONFIG), *args, "--model.lr=3e-4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    model = DQN.load_from_checkpoint(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt", map_location="cpu")
    assert (model.hparams.obs_dim, model.hparams.n_actions, model.hparams.lr) == (6, 3, 3e-4)
    assert model(torch.zeros(2, 6)).shape == (2, 3)
    # Acrobot pays -1 per step and 0 on the step that reaches the goal: returns are not durations
    events = read_events(tmp_path / "lightning_logs" / "version_0")
    returns = [e.value for e in events.Scalars("train/episode_return")]
    durations = [e.value for e in events.Scalars("train/episode_duration")]
    assert returns and all(r in (-d, -(d - 1)) for r, d in zip(returns, durations, strict=True))
    assert all(r == -500 for r, d in zip(returns, durations, strict=True) if d == 500)  # truncated: -1 every step


def test_tensorboard_and_checkpoints_count_updates(fit_run: FitRun) -> None:
    """One training step is one update: TensorBoard's x axis and checkpoint names are the updates
    done, as ``val_check_interval`` (300) and ``log_every_n_steps`` (50) count them."""
    events = read_events(fit_run.run_dir)
    assert [e.step for e in events.Scalars("train/loss")] == list(range(50, 601, 50))
    assert [e.step for e in events.Scalars("val/return_mean")] == [300, 600]
    names = {p.name for p in (fit_run.run_dir / "checkpoints").iterdir()}
    assert "last.ckpt" in names and {name.split("-")[1] for name in names if name.startswith("best-")} <= {"300", "600"}
