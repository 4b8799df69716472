"""The lit_dqn vs Stable-Baselines3 comparison stays runnable: a tiny run prints every agent's rows."""

import re

import pytest

from .test_benchmarks import run_script_result

AGENTS = r"(lit_dqn|sb3 rl-zoo3|sb3 QR-DQN)"
ROW = re.compile(rf"^CartPole-v1\s+{AGENTS}\s+0\s+(yes|no)\s+(-?\d+\.\d)\s", re.MULTILINE)
SUMMARY = re.compile(rf"^{AGENTS}: solved (\d)/1, median wall ([\d.]+) s, median env steps (\d+)", re.MULTILINE)


def test_compare_sb3_prints_every_agent_on_the_same_seed() -> None:
    pytest.importorskip("stable_baselines3")
    pytest.importorskip("sb3_contrib")
    result = run_script_result(
        "benchmarks/compare_sb3.py", "--env", "CartPole-v1", "--seeds", "0", "--sb3-steps", "2000", "--threads", "1",
        "--sb3-algo", "dqn", "qrdqn",
        "--", "--trainer.max_steps=300", "--trainer.val_check_interval=15", "--data.warmup_steps=300",
        "--data.eval_episodes=10",
    )  # fmt: skip
    out = result.stdout
    # each run is said on stderr as soon as it ends, before the table: a stopped comparison keeps it
    assert {agent for agent, _, _ in ROW.findall(result.stderr)} == {"lit_dqn", "sb3 rl-zoo3", "sb3 QR-DQN"}
    assert out.startswith("$ python benchmarks/compare_sb3.py --env CartPole-v1") and "stable-baselines3" in out
    rows = {agent: float(mean) for agent, _, mean in ROW.findall(out)}
    assert set(rows) == {"lit_dqn", "sb3 rl-zoo3", "sb3 QR-DQN"}, out
    assert all(0 <= mean <= 500 for mean in rows.values()), out  # CartPole-v1's range of returns
    summaries = {agent: (int(solved), float(wall), int(steps)) for agent, solved, wall, steps in SUMMARY.findall(out)}
    assert set(summaries) == {"lit_dqn", "sb3 rl-zoo3", "sb3 QR-DQN"}, out
    assert summaries["sb3 rl-zoo3"][2] >= 2000 and summaries["sb3 QR-DQN"][2] >= 2000  # at least their budget
    assert "'n_quantiles': 10" in out and "sb3-contrib" in out  # QR-DQN with rl-zoo3's CartPole settings
    assert summaries["lit_dqn"][2] >= 300  # warm-up plus one env step per update
    # both are tested on the same held-out episodes: lit_dqn's data.eval_episodes from its test seed
    assert "mean of 10 greedy test episodes (seeds from 2000000)" in out


def test_skip_lit_runs_only_the_sb3_agents_on_lit_dqns_test_episodes() -> None:
    """``--skip-lit`` finishes a comparison whose lit_dqn runs are done: SB3's rows only, still scored on
    the test episodes the lit_dqn config names."""
    pytest.importorskip("stable_baselines3")
    result = run_script_result(
        "benchmarks/compare_sb3.py", "--env", "CartPole-v1", "--seeds", "0", "--sb3-steps", "1000", "--threads", "1",
        "--skip-lit", "--", "--data.eval_episodes=5", "--data.test_seed=123",
    )  # fmt: skip
    out = result.stdout
    assert {agent for agent, _, _ in ROW.findall(out)} == {"sb3 rl-zoo3"}, out
    assert [agent for agent, *_ in SUMMARY.findall(out)] == ["sb3 rl-zoo3"], out
    assert "(not run: --skip-lit)" in out
    assert "mean of 5 greedy test episodes (seeds from 123)" in out
