"""Bad input gets one clear line on stderr, a non-zero exit, no traceback, and loses nothing on disk."""

import shutil
from pathlib import Path

import pytest
import torch

from lit_dqn.checkpoints import read_checkpoint
from lit_dqn.checks import ConfigError

from .conftest import CONFIG, SHORT_FIT, FitRun, run_cli, run_main

# (CLI arguments after `fit --config configs/cartpole.yaml`, fragments the one-line message must contain)
BAD_INPUTS = [
    (["--model.lrr=3"], ["unrecognized arguments", "--model.lrr"]),
    (["--model.lr=abc"], ['"model.lr"', "float", "abc"]),
    (["--trainer.max_steps=lots"], ['"trainer.max_steps"', "int"]),
    (["--data.vectorization_mode=threads"], ['"data.vectorization_mode"', "sync", "async"]),
    (["--model.gamma=1.5"], ["model.gamma=1.5", "(0, 1]"]),
    (["--model.gamma=0"], ["model.gamma=0", "(0, 1]"]),
    (["--model.tau=0"], ["model.tau=0", "(0, 1]"]),
    (["--model.tau=2"], ["model.tau=2", "(0, 1]"]),
    (["--model.lr=0"], ["model.lr=0", "> 0"]),
    (["--model.lr=-1e-3"], ["model.lr=-0.001", "> 0"]),
    (["--data.batch_size=0"], ["data.batch_size=0", ">= 1"]),
    (["--data.batch_size=60000"], ["data.batch_size=60000", "at most data.buffer_capacity=50000"]),
    (["--data.warmup_steps=64"], ["data.warmup_steps=64", "at least data.batch_size=256"]),
    (["--model.eps_start=1.5"], ["model.eps_start=1.5", "[0, 1]"]),
    (["--model.eps_end=-0.1"], ["model.eps_end=-0.1", "[0, 1]"]),
    (["--model.eps_start=0.2", "--model.eps_end=0.5"], ["model.eps_end=0.5", "at most model.eps_start=0.2"]),
    (["--model.hidden_sizes=[128, 0]"], ["model.hidden_sizes=[128, 0]", "positive integer"]),
    (["--model.hidden_sizes=[-4]"], ["model.hidden_sizes=[-4]", "positive integer"]),
    (["--model.max_episodes=0"], ["model.max_episodes=0", ">= 1"]),
    (["--data.n_step=0"], ["data.n_step=0", ">= 1"]),
    (["--data.updates_per_training_step=20"], ["data.updates_per_training_step was removed", "count updates"]),
    (["--data.env_id=CartPol-v1"], ["data.env_id='CartPol-v1'", "did you mean 'CartPole-v1'"]),
    (["--data.env_id=CartPole"], ["data.env_id='CartPole' needs its version, e.g. 'CartPole-v1'"]),
    (["--data.env_id=Cart Pole-v1"], ["data.env_id='Cart Pole-v1' cannot be made", "did you mean 'CartPole-v1'"]),
    (["--seed_everything=-1"], ["seed_everything=-1 must be in [0, 4294967295]"]),
    (["--data.seed=-3"], ["data.seed=-3", ">= 0"]),
    (["--data.test_seed=-1"], ["data.test_seed=-1", ">= 0"]),
    (["--data.env_id=Pendulum-v1"], ["data.env_id='Pendulum-v1'", "Box action space", "DQN needs Discrete actions"]),
    (
        ["--data.env_id=Blackjack-v1"],
        [
            "data.env_id='Blackjack-v1'",
            "Tuple(Discrete(32)",
            "data.wrappers: [{class_path: gymnasium.wrappers.FlattenObservation}]",
        ],
    ),
    (["--trainer.accelerator=tpux"], ["trainer:", "accelerator", "cpu"]),
    (["--ckpt_path=missing.ckpt"], ["ckpt_path='missing.ckpt' does not exist"]),
    (["--ckpt_path=hpc"], ["ckpt_path='hpc' found no hpc_ckpt_N.ckpt"]),
    (["--ckpt_path=hpc", "--trainer.default_root_dir=new/root"], ["ckpt_path='hpc' found no hpc_ckpt_N.ckpt"]),
    (["--ckpt_path=lightning_logs/empty"], ["ckpt_path='lightning_logs/empty' is a directory with no .ckpt"]),
    (["--trainer.default_root_dir=/proc/lit_dqn_runs"], ["trainer.default_root_dir='/proc/lit_dqn_runs' cannot be"]),
    (["--model.target_update_interval=0"], ["model.target_update_interval=0", ">= 1"]),
    (["--model.eps_schedule=cosine"], ['"model.eps_schedule"', "exponential", "linear"]),
    (["--model.eps_fraction=0"], ["model.eps_fraction=0", "(0, 1]"]),
    (["--model.eps_schedule=linear", "--trainer.max_steps=-1"], ["model.eps_schedule=linear", "trainer.max_steps=-1"]),
    (
        ["--trainer.logger.init_args.save_dir=elsewhere"],
        ["save_dir follows trainer.default_root_dir", "--trainer.default_root_dir DIR"],
    ),
    (["--model.dueling=true", "--model.hidden_sizes=[]"], ["model.dueling=true", "model.hidden_sizes"]),
    (["--data.prioritized=true", "--trainer.max_steps=-1"], ["data.prioritized=true", "trainer.max_steps=-1", "> 0"]),
    (["--data.priority_alpha=1.5"], ["data.priority_alpha=1.5", "[0, 1]"]),
    (["--data.priority_beta=-0.1"], ["data.priority_beta=-0.1", "[0, 1]"]),
    (["--data.priority_eps=0"], ["data.priority_eps=0", "> 0"]),
    (["--trainer.limit_val_batches=0.5"], ["trainer.limit_val_batches=0.5", "one batch", "data.eval_episodes"]),
    (["--trainer.limit_test_batches=0.25"], ["trainer.limit_test_batches=0.25", "use 0 (none), 1.0 or an int"]),
    # Lightning flags that one update per batch of an endless stream cannot honour
    (["--trainer.gradient_clip_val=0.5"], ["trainer.gradient_clip_val is not used", "model.grad_clip_value"]),
    (["--trainer.gradient_clip_algorithm=norm"], ["trainer.gradient_clip_algorithm is not used", "by value"]),
    (["--trainer.accumulate_grad_batches=4"], ["trainer.accumulate_grad_batches=4", "data.batch_size"]),
    (["--trainer.precision=64-true"], ["trainer.precision='64-true'", "32-true", "16-mixed", "bf16-mixed"]),
    (["--trainer.precision=bf16-true"], ["trainer.precision='bf16-true'", "32-true"]),
    (
        ["--trainer.check_val_every_n_epoch=1", "--trainer.val_check_interval=0.001"],
        ["trainer.val_check_interval=0.001", "validation would never run", "in updates"],
    ),
    (["--trainer.val_check_interval=0"], ["trainer.val_check_interval=0", "at least 1"]),
    (
        ["--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor=val/retrun_mean"],
        ["EarlyStopping monitors 'val/retrun_mean'", "val/return_mean"],
    ),
    (  # a callback's own constructor refuses a value jsonargparse let through (mode is typed str)
        [
            "--trainer.callbacks+=EarlyStopping",
            "--trainer.callbacks.monitor=val/return_mean",
            "--trainer.callbacks.mode=maximum",
        ],
        ["trainer.callbacks: MisconfigurationException: `mode` can be min, max, got maximum"],
    ),
    (["--ckpt_path=best"], ["ckpt_path='best'", "after a fit in the same Python", "'last'"]),
    (["--optimizer=SGD"], ["--optimizer is not used", "AdamW at model.lr"]),
    (["--lr_scheduler=StepLR", "--lr_scheduler.step_size=50"], ["--lr_scheduler is not used", "never step"]),
]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def run_dir_with_history(fit_run: FitRun, tmp_path: Path) -> Path:
    """A working directory holding a previous run (events, config, checkpoints) that must survive,
    and an empty folder beside it."""
    shutil.copytree(fit_run.cwd / "lightning_logs", tmp_path / "lightning_logs")
    (tmp_path / "lightning_logs/empty").mkdir()
    return tmp_path


def assert_clean_error(result, fragments: list[str], code: int = 2) -> str:
    assert result.returncode == code, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("lit_dqn: error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize(("args", "fragments"), BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_clear_line(
    args: list[str], fragments: list[str], run_dir_with_history: Path, monkeypatch, capsys
) -> None:
    """In-process, through the CLI's ``main`` (what the command runs); the subprocess tests below
    show the command's own exit status and stderr."""
    before = snapshot(run_dir_with_history)
    result = run_main(["fit", "--config", str(CONFIG), *SHORT_FIT, *args], run_dir_with_history, monkeypatch, capsys)
    assert_clean_error(result, fragments)
    after = snapshot(run_dir_with_history)
    assert after == before  # nothing deleted, rewritten or added
    assert not (run_dir_with_history / "new").exists()  # nor an empty folder


def test_unknown_key_in_a_yaml_config(run_dir_with_history: Path) -> None:
    (run_dir_with_history / "typo.yaml").write_text("model:\n  lerning_rate: 0.001\n")
    result = run_cli("fit", "--config", str(CONFIG), "--config", "typo.yaml", cwd=run_dir_with_history)
    assert_clean_error(result, ["does not accept", "model.lerning_rate"])


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_checkpoint(damage: str, run_dir_with_history: Path) -> None:
    good = run_dir_with_history / "lightning_logs/version_0/checkpoints/last.ckpt"
    bad = run_dir_with_history / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint" if damage == "garbage" else good.read_bytes()[: good.stat().st_size // 2])
    before = snapshot(run_dir_with_history)
    result = run_cli("fit", "--config", str(CONFIG), *SHORT_FIT, "--ckpt_path", str(bad), cwd=run_dir_with_history)
    assert_clean_error(result, [f"ckpt_path='{bad}' is not a readable checkpoint"])
    assert snapshot(run_dir_with_history) == before


@pytest.mark.parametrize("content", [b"trainer:\n  max_steps: 100\n", b"hello", b"(", "a tensor"])
def test_a_file_that_is_no_checkpoint_is_one_line(content: bytes | str, tmp_path: Path) -> None:
    """A config given as ``--ckpt_path`` by mistake reached torch's unpickler as opcodes: IndexError
    or KeyError tracebacks; a file holding a bare tensor failed later, reading it as a dict."""
    path = tmp_path / "x.ckpt"
    if content == "a tensor":
        torch.save(torch.zeros(3), path)
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"ckpt_path='.*x.ckpt' (is not a readable checkpoint|holds a Tensor)"):
        read_checkpoint(path)


def test_checkpoint_from_another_env_names_the_shapes(run_dir_with_history: Path) -> None:
    ckpt = run_dir_with_history / "lightning_logs/version_0/checkpoints/last.ckpt"
    args = ["--data.env_id=Acrobot-v1", "--ckpt_path", str(ckpt)]
    before = snapshot(run_dir_with_history)
    for subcommand in ("fit", "test"):
        result = run_cli(subcommand, "--config", str(CONFIG), *SHORT_FIT, *args, cwd=run_dir_with_history)
        line = assert_clean_error(result, ["does not fit this model", "obs_dim=4, n_actions=2", "obs_dim=6"])
        assert "n_actions=3" in line and "policy_net.net.0.weight (128, 4) in the checkpoint vs (128, 6) now" in line
    after = snapshot(run_dir_with_history)
    assert {k: v for k, v in after.items() if k in before} == before


def test_checkpoint_of_a_plain_network_into_a_dueling_one_says_so(run_dir_with_history: Path) -> None:
    ckpt = run_dir_with_history / "lightning_logs/version_0/checkpoints/last.ckpt"
    args = ["--model.dueling=true", "--ckpt_path", str(ckpt)]
    result = run_cli("fit", "--config", str(CONFIG), *SHORT_FIT, *args, cwd=run_dir_with_history)
    assert_clean_error(result, ["does not fit this model", "dueling=False, the config gives", "dueling=True"])


def test_test_and_validate_score_a_checkpoint_or_say_they_mean_the_untrained_net(
    run_dir_with_history: Path, monkeypatch, capsys
) -> None:
    for subcommand in ("validate", "test"):  # scoring the untrained network by accident: refused
        result = run_main([subcommand, "--config", str(CONFIG), *SHORT_FIT], run_dir_with_history, monkeypatch, capsys)
        assert_clean_error(result, [f"{subcommand} scores a trained network", "--ckpt_path untrained"])
    result = run_cli("test", "--config", str(CONFIG), *SHORT_FIT, "--ckpt_path=untrained", cwd=run_dir_with_history)
    assert result.returncode == 0 and "Scoring the untrained network" in result.stderr, result.stderr[-2000:]
    # a run's directory stands for its last.ckpt
    result = run_cli("test", *SHORT_FIT, "--ckpt_path=lightning_logs/version_0", cwd=run_dir_with_history)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (
        "Using lightning_logs/version_0/checkpoints/last.ckpt" in result.stderr and "test/return_mean" in result.stdout
    )


def test_resume_last_skips_a_newest_last_ckpt_that_cannot_be_read(run_dir_with_history: Path) -> None:
    good = run_dir_with_history / "lightning_logs/version_0/checkpoints/last.ckpt"
    cut = run_dir_with_history / "lightning_logs/version_1/checkpoints/last.ckpt"  # newer, cut short by a full disk
    cut.parent.mkdir(parents=True)
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    args = [*SHORT_FIT, "--trainer.max_steps=620", "--trainer.enable_progress_bar=false", "--ckpt_path=last"]
    result = run_cli("fit", "--config", str(CONFIG), *args, cwd=run_dir_with_history)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"Skipping {cut.relative_to(run_dir_with_history)}: ckpt_path=" in result.stderr
    assert f"Resuming from {good.relative_to(run_dir_with_history)}" in result.stderr


def test_resume_last_without_any_run(tmp_path: Path, monkeypatch, capsys) -> None:
    result = run_main(["fit", "--config", str(CONFIG), *SHORT_FIT, "--ckpt_path=last"], tmp_path, monkeypatch, capsys)
    assert_clean_error(result, ["ckpt_path='last' found no", "last.ckpt"])


def test_non_finite_loss_stops_with_the_step(tmp_path: Path) -> None:
    # lr 1e30 blows the weights up on the first update; the next loss is NaN
    result = run_cli("fit", "--config", str(CONFIG), *SHORT_FIT, "--model.lr=1e30", cwd=tmp_path)
    assert_clean_error(
        result,
        ["the TD loss became NaN or infinite at a step between 0 and 49", "last good checkpoint is none"],
        code=1,
    )
