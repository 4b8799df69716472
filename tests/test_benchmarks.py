"""The benchmark scripts stay runnable: a tiny run of each prints its table."""

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from .conftest import ROOT, FitRun


def run_script_result(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def run_script(*args: str) -> str:
    return run_script_result(*args).stdout


def test_benchmark_prints_throughput_with_paired_floors_and_a_solve_table() -> None:
    result = run_script_result(
        "benchmarks/benchmark.py", "--steps", "60", "--warmup", "20", "--block", "20", "--rounds", "1",
        "--seeds", "0", "--", "--trainer.max_steps=300", "--trainer.val_check_interval=15",
        "--data.warmup_steps=256", "--data.eval_episodes=5",
    )  # fmt: skip
    out = result.stdout
    # each seed is said as soon as it is done, before the table: a stopped study keeps its seeds
    said = re.search(r"^seed 0: solved (yes|no), test mean -?[\d.]+, best val", result.stderr, re.M)
    assert said is not None, result.stderr[-2000:]
    floors = ("floor: update alone", "floor: env + acting + push alone", "floor: Lightning loop")
    for row in ("lit_dqn", "tutorial (reference)", *floors, "plain loop (env step + update)"):
        assert row in out, out
    assert "ratio lit_dqn / tutorial" in out and "2x the tutorial needs" in out and "tops out at" in out
    assert "solved" in out and "peak RSS" in out
    # the accounting line adds up the floors printed in the table
    floor_rows = [line[34:].split() for line in out.splitlines() if line.startswith("floor:")]
    floor_us = [float(row[2]) for row in floor_rows]  # columns: env steps/s, updates/s, us/step
    assert len(floor_us) == 3 and all(us > 0 for us in floor_us)
    total = re.search(r"the three floors add up to (\d+) us", out)
    assert total is not None and abs(float(total.group(1)) - sum(floor_us)) <= 2, out
    # the overrides after -- reach lit_dqn's throughput run too: max_steps 300 leaves 280 updates
    # after the 20 of warm-up: 14 blocks of 20, each paired with its floors
    paired = re.search(r"lit_dqn / the three floors: ([\d.]+)x .*per round: ([\d.]+) \((\d+) blocks", out)
    assert paired is not None and paired.group(3) == "14" and float(paired.group(1)) > 0, out


def _children(pid: int) -> set[int]:
    return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads child processes from /proc (Linux)")
def test_sigterm_to_the_benchmark_ends_its_seed_workers() -> None:
    """A SIGTERM to the script (a scheduler's stop) must not leave its spawned seed worker training
    on, orphaned, as it did when the signal ended the parent at once."""
    script = [sys.executable, "benchmarks/benchmark.py", "--skip-throughput", "--seeds", "0", "--",
              "--trainer.max_steps=1000000", "--trainer.val_check_interval=1000000"]  # fmt: skip
    parent = subprocess.Popen(script, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2 and time.monotonic() < deadline:  # the seed's worker and the resource tracker
            time.sleep(0.5)
            workers = _children(parent.pid)
        assert len(workers) >= 2, "the seed worker never started"
        time.sleep(5)  # into its fit
        parent.send_signal(signal.SIGTERM)
        _, err = parent.communicate(timeout=60)
        assert parent.returncode == 143, err[-2000:]
        assert "benchmark.py: stopped by SIGTERM; ending its workers" in err
        deadline = time.monotonic() + 30
        while (alive := {pid for pid in workers if Path(f"/proc/{pid}").exists()}) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not alive, f"worker(s) {sorted(alive)} outlived the script"
    finally:
        parent.kill()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_paired_blocks_exclude_the_floors_time_and_count_every_block(monkeypatch) -> None:
    """PairedFloors and summarize_blocks on a fake clock: lit_dqn costs 1000 us per update, except
    for 20 slow ones; each floor advances the clock by its own cost while it is timed."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import benchmark

    clock = [0.0]
    monkeypatch.setattr(benchmark.time, "perf_counter", lambda: clock[0])
    costs = {"update_us": 600.0, "collect_us": 150.0, "loop_us": 200.0, "plain_us": 900.0}

    def floor(us: float):
        def timer(n: int) -> float:
            clock[0] += n * us * 1e-6  # the floor's own time, which must not count as lit_dqn's
            return us

        return timer

    paired = benchmark.PairedFloors(40, 40, "cpu", {name: floor(us) for name, us in costs.items()})
    trainer = SimpleNamespace(global_step=0, datamodule=SimpleNamespace(runner=SimpleNamespace(env_steps=0)))
    for step in range(200):  # one update per training step; the first 40 are the warm-up
        paired.on_train_batch_start(trainer, None, None, step)
        clock[0] += 3000e-6 if 100 <= step < 120 else 1000e-6
        trainer.global_step += 1
        trainer.datamodule.runner.env_steps += 1
        paired.on_train_batch_end(trainer, None, None, None, step)

    assert [row["updates"] for row in paired.rows] == [40, 40, 40, 40]  # steps 40-79, ..., 160-199
    assert [round(row["lit_us"]) for row in paired.rows] == [1000, 2000, 1000, 1000]
    summary = benchmark.summarize_blocks(paired.rows)
    assert summary["lit_us"] == pytest.approx(1250)  # the slow block counts in full: not a median
    assert summary["env_steps_per_s"] == pytest.approx(1e6 / 1250)
    assert summary["ratio"] == pytest.approx(1250 / (600 + 150 + 200))
    assert (summary["ratio_min"], summary["ratio_max"]) == pytest.approx((1000 / 950, 2000 / 950))


def test_profile_step_accounts_for_the_update() -> None:
    """The parts of a training step (one update) add up to the whole, and each part's pieces to it."""
    out = run_script("benchmarks/profile_step.py", "--steps", "60", "--warmup", "10")
    assert "one per training step" in out, out
    table = out[out.index("part ") : out.index("(indented")].splitlines()[1:]
    rows = [(line[:52].rstrip(), float(line[52:].split()[0])) for line in table]
    assert rows[0][0] == "total"
    top = [(i, value) for i, (label, value) in enumerate(rows[1:], start=1) if not label.startswith(" ")]
    assert rows[0][1] == pytest.approx(sum(value for _, value in top), abs=len(top)), out  # rounded to 1 us each
    for (i, value), (end, _) in zip(top, [*top[1:], (len(rows), 0)], strict=True):
        pieces = [piece for _, piece in rows[i + 1 : end]]
        assert not pieces or value == pytest.approx(sum(pieces), abs=len(pieces)), rows[i]
    values = dict(rows)
    assert values["  backward"] > 0 and values["  env step (gymnasium)"] > 0 and values["  soft update"] > 0, out


def test_soak_samples_memory_and_files() -> None:
    out = run_script("benchmarks/soak.py", "--env-steps", "2000", "--every", "1000")
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    env_steps = [int(row[0]) for row in rows]
    assert len(rows) >= 3 and env_steps == sorted(env_steps) and env_steps[-1] >= 2000, out
    # open file descriptors do not grow, once the first logging step (update 100, after the first row)
    # has opened what is opened lazily: CI under load once read 4 at the first row, 5 at the others
    assert len({row[3] for row in rows[1:]}) == 1, out
    assert "peak RSS" in out and "buffer storage" in out


def test_replay_benchmark_prints_uniform_and_prioritized_costs() -> None:
    out = run_script("benchmarks/replay.py", "--capacities", "1000", "5000", "--iters", "5", "--rounds", "1")
    rows = [line.split() for line in out.splitlines() if line.strip() and line.split()[0].isdigit()]
    assert [row[0] for row in rows] == ["1000", "5000"], out
    for row in rows:  # capacity, then four costs "N us", then the ratio "Rx"
        costs = [float(row[i]) for i in (1, 3, 5, 7)]
        assert all(c > 0 for c in costs) and costs[3] == pytest.approx(costs[1] + costs[2], abs=1.5)
        assert row[9].endswith("x")


def test_ddp_benchmark_compares_one_and_two_processes() -> None:
    out = run_script(
        "benchmarks/ddp.py", "--steps", "40", "--warmup", "10", "--rounds", "1", "--seeds", "0",
        "--", "--trainer.max_steps=120", "--trainer.val_check_interval=60", "--data.warmup_steps=256",
        "--data.eval_episodes=4",
    )  # fmt: skip
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0] in ("1", "2")]
    throughput = [row for row in rows if len(row) == 4]
    assert [(row[0], row[3]) for row in throughput] == [("1", "256"), ("2", "512")], out
    solve = [row for row in rows if len(row) == 6]
    assert [(row[0], row[1]) for row in solve] == [("1", "0"), ("2", "0")], out
    for processes, _, _, updates, env_steps, _ in solve:  # at the best validation, after 60 or 120 updates
        assert updates in ("60", "120") and int(env_steps) == int(processes) * (256 + int(updates)), out


def test_fingerprint_tells_the_same_learning_from_a_different_one(monkeypatch) -> None:
    """benchmarks/fingerprint.py, the bit-for-bit check of a change: two identical fits hash alike,
    and a different learning rate changes the losses and weights it hashes; every head's losses count."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import fingerprint

    config = str(ROOT / "configs" / "cartpole.yaml")
    short = ["--trainer.max_steps=40", "--data.warmup_steps=256", "--trainer.val_check_interval=20"]
    short += ["--data.eval_episodes=2", "--trainer.num_sanity_val_steps=0"]
    first, again = fingerprint.fingerprint(config, short), fingerprint.fingerprint(config, short)
    assert first == again
    assert first["updates"] == first["global_step"] == 40 and [step for step, _ in first["validations"]] == [20, 40]
    assert "last.ckpt" in first["checkpoints"]
    other = fingerprint.fingerprint(config, [*short, "--model.lr=2e-3"])
    assert other["losses"] != first["losses"] and other["weights"] != first["weights"]
    quantiles = fingerprint.fingerprint(config, [*short, "--model.distributional=qr_dqn"])  # its loss is not td_loss
    assert quantiles["updates"] == 40 and quantiles["losses"] != first["losses"]


def test_curves_map_each_validation_to_the_env_steps_of_its_run(
    fit_run: FitRun, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """benchmarks/curves.py on a real fit's events: validations at 300 and 600 updates of the default
    config (one env step per update after 300 of warm-up) sit at 600 and 900 env steps, with the
    returns TensorBoard holds; the table and the PNG come out."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import curves

    curve, left_out = curves.read_curve(fit_run.run_dir, "seed 0")
    assert curve.updates.tolist() == [300, 600] and left_out == []
    assert curve.env_steps.tolist() == [600, 900]
    events = EventAccumulator(str(fit_run.run_dir), size_guidance={"scalars": 0})
    events.Reload()
    assert curve.returns.tolist() == [e.value for e in events.Scalars("val/return_mean")]
    out = tmp_path / "curves.png"
    curves.main([str(fit_run.run_dir), str(fit_run.run_dir), "--labels", "a", "b", "--goal", "475", "--out", str(out)])
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| env steps | a | b |"
    assert table[2] == f"| 600 | {curve.returns[0]:.1f} | {curve.returns[0]:.1f} |"
    assert out.stat().st_size > 0


def test_curves_leave_out_validations_whose_env_steps_were_never_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A validation before the first or after the last env-step count (a fit stopped between logging
    steps) would get a guessed x, since np.interp holds the end values: it is left out, and stderr
    says so. A run with nothing left, or a directory that holds no fit, is one line, exit 2."""
    from torch.utils.tensorboard import SummaryWriter

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import curves

    with SummaryWriter(tmp_path / "run") as writer:
        for step in (50, 100):
            writer.add_scalar("train/env_steps", 1000 + 2 * step, step)
        for step, value in ((40, 1.0), (75, 3.0), (100, 4.0), (150, 5.0)):
            writer.add_scalar("val/return_mean", value, step)
    curve, left_out = curves.read_curve(tmp_path / "run", "x")
    assert (curve.updates.tolist(), curve.env_steps.tolist(), curve.returns.tolist()) == (
        [75, 100], [1150, 1200], [3.0, 4.0]
    )  # fmt: skip
    assert left_out == [40, 150]
    curves.main([str(tmp_path / "run"), "--labels", "x", "--out", str(tmp_path / "c.png")])
    assert "x: left out the validation(s) at update(s) [40, 150]" in capsys.readouterr().err
    with SummaryWriter(tmp_path / "late") as writer:
        writer.add_scalar("train/env_steps", 1100, 50)
        writer.add_scalar("val/return_mean", 3.0, 60)
    for run, message in ((tmp_path / "late", "no validation between"), (tmp_path, "no train/env_steps")):
        with pytest.raises(SystemExit) as stop:
            curves.main([str(run), "--out", str(tmp_path / "d.png")])
        assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "d.png").exists()
