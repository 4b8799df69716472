"""lit_dqn's speed and reliability, side by side with the PyTorch tutorial's own loop.

    python benchmarks/benchmark.py                          # CPU: throughput, then 10 seeds of the default config
    python benchmarks/benchmark.py --device cuda            # the same on a GPU
    python benchmarks/benchmark.py --seeds 0 1 2 --jobs 2   # fewer seeds, two at a time
    python benchmarks/benchmark.py --skip-solve             # throughput only

Throughput: ``configs/cartpole_tutorial.yaml`` (1 env step + 1 update of batch 128 per training step)
against ``tutorial_loop.py``, each in a fresh process, alternating for ``--rounds`` rounds; the
timer starts after ``--warmup`` steps (startup, compilation of kernels and the first validation
excluded) and runs for ``--steps`` steps. The ratio of medians is the figure to compare: absolute
rates drift with the machine's load. Three floors from ``floors.py`` are measured in the same
rounds: lit_dqn's update with no env and no framework, collecting transitions with no update, and
Lightning's loop around an empty step; together they bound how fast a Lightning DQN step can be on
the machine.

Solve: each seed trains the default config in its own process (``fit``, which stops early once the
greedy validation mean reaches the config's threshold) and then tests the best checkpoint on the
test seeds, which validation never used; the seed solved if that test mean reaches ``--threshold``.
Time to solve counts from the start of ``fit`` to the end of the validation that produced that
checkpoint; the process's startup and imports are not included.

Extra arguments after ``--`` go to the CLI of every lit_dqn run, e.g. ``-- --model.lr 1e-3``; the
tutorial's loop and the floors ignore them.
"""

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]


def _quiet() -> None:
    """Send a worker's progress bars and warnings to /dev/null so they do not interleave with the table."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def build_cli(config: str, root: str, device: str, extra: list[str]):
    """``lit_dqn fit --config CONFIG EXTRA`` in-process (not yet run), logging under ``root``."""
    from lit_dqn.cli import DQNCLI
    from lit_dqn.data import GymDataModule
    from lit_dqn.module import DQN

    args = ["--config", config, "--trainer.default_root_dir", root]
    args += ["--trainer.accelerator", device]
    return DQNCLI(DQN, GymDataModule, args=args + extra, run=False)


class SteadyStateTimer(L.Callback):
    """Times the updates from the training step that starts at or after update ``warmup`` to the end
    of fit, and the env steps taken meanwhile (a training step may hold several updates)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: float | None = None
        self.start_env_steps = self.start_updates = 0
        self.elapsed = self.updates = self.env_steps = 0.0

    def _sync(self, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.start is None and trainer.global_step >= self.warmup:
            self._sync(pl_module)
            self.start = time.perf_counter()
            self.start_env_steps, self.start_updates = batch.env_steps, trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        self._sync(pl_module)
        self.elapsed = time.perf_counter() - self.start
        self.updates = trainer.global_step - self.start_updates
        self.env_steps = trainer.datamodule.runner.env_steps - self.start_env_steps


def lit_throughput(job: tuple[int, int, str, list[str]]) -> dict[str, float]:
    warmup, steps, device, extra = job
    _quiet()
    with tempfile.TemporaryDirectory() as root:
        config = str(ROOT / "configs" / "cartpole_tutorial.yaml")
        cli = build_cli(config, root, device, ["--trainer.max_steps", str(warmup + steps), *extra])
        timer = SteadyStateTimer(warmup)
        cli.trainer.callbacks.append(timer)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return {
        "env_steps_per_s": timer.env_steps / timer.elapsed,
        "updates_per_s": timer.updates / timer.elapsed,
        "peak_rss_mib": _peak_rss_mib(),
    }


def tutorial_throughput(job: tuple[int, int, str, list[str]]) -> dict[str, float]:
    warmup, steps, device, _ = job
    _quiet()
    sys.path.insert(0, str(Path(__file__).parent))
    from tutorial_loop import run

    return {**run(steps, warmup=warmup, device=device), "peak_rss_mib": _peak_rss_mib()}


class SolveTimer(L.Callback):
    """Wall-clock, env steps and episodes from the start of fit to the end of the validation that
    produced the best checkpoint (the one ``test`` scores), i.e. the time to that checkpoint; and
    the env steps of the whole fit."""

    def __init__(self) -> None:
        self.start = 0.0
        self.best = float("-inf")
        self.best_at: tuple[float, int, int] | None = None
        self.env_steps = 0

    def on_train_end(self, trainer, pl_module) -> None:
        self.env_steps = trainer.datamodule.runner.env_steps

    def on_fit_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        score = trainer.callback_metrics.get("val/return_mean")
        if not trainer.sanity_checking and score is not None and score > self.best:
            self.best = float(score)
            runner = trainer.datamodule.runner
            self.best_at = (time.perf_counter() - self.start, runner.env_steps, runner.episodes)


def solve_seed(job: tuple[str, int, float, str, list[str], int]) -> dict:
    config, seed, threshold, device, extra, threads = job
    _quiet()
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as root:
        cli = build_cli(config, root, device, ["--seed_everything", str(seed), *extra])
        timer = SolveTimer()
        cli.trainer.callbacks.append(timer)
        start = time.perf_counter()
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        fit_s = time.perf_counter() - start
        episodes = len(cli.model.episode_durations)
        best_val = float(cli.trainer.checkpoint_callback.best_model_score or float("nan"))
        test = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)[0]
    solved = test["test/return_mean"] >= threshold
    solve_s, solve_env_steps, solve_episodes = timer.best_at if solved and timer.best_at else (None, None, None)
    return {
        "seed": seed,
        "solved": solved,
        "test_mean": test["test/return_mean"],
        "best_val": best_val,
        "episodes": episodes,
        "updates": cli.trainer.global_step,
        "env_steps": timer.env_steps,
        "fit_s": fit_s,
        "solve_s": solve_s,
        "solve_env_steps": solve_env_steps,
        "solve_episodes": solve_episodes,
        "peak_rss_mib": _peak_rss_mib(),
    }


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def floors_throughput(job: tuple[int, int, str, list[str]]) -> dict[str, float]:
    warmup, steps, device, _ = job
    _quiet()
    sys.path.insert(0, str(Path(__file__).parent))
    from floors import collection_alone, lightning_alone, update_alone

    update = update_alone(steps, warmup, device)["updates_per_s"]
    collect = collection_alone(steps, warmup, device)["env_steps_per_s"]
    loop = lightning_alone(steps, warmup, device)["steps_per_s"]
    return {
        "update_us": 1e6 / update,
        "collect_us": 1e6 / collect,
        "loop_us": 1e6 / loop,
        "peak_rss_mib": _peak_rss_mib(),
    }


def throughput_table(args: argparse.Namespace) -> None:
    job = (args.warmup, args.steps, args.device, args.extra)
    lit, tut, floors = [], [], []
    ctx = mp.get_context("spawn")
    for _ in range(args.rounds):  # alternate, one process at a time, so all see the same machine
        for fn, rows in ((lit_throughput, lit), (tutorial_throughput, tut), (floors_throughput, floors)):
            with ctx.Pool(1) as pool:
                rows.append(pool.apply(fn, (job,)))
                pool.close()
                pool.join()
    print(
        f"## Throughput: configs/cartpole_tutorial.yaml vs the tutorial's loop ({args.device}, "
        f"{args.steps} steps after {args.warmup}, median of {args.rounds} rounds)"
    )
    print(f"{'loop':<34} {'env steps/s':>12} {'updates/s':>10} {'us/step':>8} {'peak RSS MiB':>13}")
    us = {}
    for name, rows in (("lit_dqn", lit), ("tutorial (reference)", tut)):
        steps = statistics.median(r["env_steps_per_s"] for r in rows)
        updates = statistics.median(r["updates_per_s"] for r in rows)
        rss = max(r["peak_rss_mib"] for r in rows)
        us[name] = 1e6 / steps
        print(f"{name:<34} {steps:>12.0f} {updates:>10.0f} {us[name]:>8.0f} {rss:>13.0f}")
    update_us = statistics.median(r["update_us"] for r in floors)
    collect_us = statistics.median(r["collect_us"] for r in floors)
    loop_us = statistics.median(r["loop_us"] for r in floors)
    rss = max(r["peak_rss_mib"] for r in floors)
    print(f"{'floor: update alone (no env)':<34} {'-':>12} {1e6 / update_us:>10.0f} {update_us:>8.0f} {rss:>13.0f}")
    print(f"{'floor: env + acting + push alone':<34} {1e6 / collect_us:>12.0f} {'-':>10} {collect_us:>8.0f} {'':>13}")
    print(f"{'floor: Lightning loop, empty step':<34} {'-':>12} {'-':>10} {loop_us:>8.0f} {'':>13}")
    ratio = us["tutorial (reference)"] / us["lit_dqn"]
    pairs = zip(lit, tut, strict=True)
    per_round = ", ".join(f"{a['env_steps_per_s']:.0f}/{b['env_steps_per_s']:.0f}" for a, b in pairs)
    print(f"ratio lit_dqn / tutorial: {ratio:.2f}x (env steps/s per round, lit_dqn/tutorial: {per_round})")
    floor_us = update_us + collect_us + loop_us
    per_round = ", ".join(
        f"{1e6 / a['env_steps_per_s'] / (f['update_us'] + f['collect_us'] + f['loop_us']):.2f}"
        for a, f in zip(lit, floors, strict=True)
    )
    print(
        f"lit_dqn / the three floors: {us['lit_dqn'] / floor_us:.2f}x ({us['lit_dqn']:.0f} / {floor_us:.0f} us, "
        f"medians; per round: {per_round})"
    )
    print(
        f"2x the tutorial needs <= {us['tutorial (reference)'] / 2:.0f} us/step; the three floors add up to "
        f"{floor_us:.0f} us (update {update_us:.0f} + env, acting and push {collect_us:.0f} + Lightning's loop "
        f"{loop_us:.0f}), so a Lightning DQN step here tops out at {us['tutorial (reference)'] / floor_us:.2f}x"
    )
    print(
        f"lit_dqn's overhead beyond the update: {us['lit_dqn'] - update_us:.0f} us/step (budget 200): env, acting "
        f"and push {collect_us:.0f}, Lightning's empty loop {loop_us:.0f}, and {us['lit_dqn'] - floor_us:.0f} more "
        "(Lightning's backward/clip/step wrappers, episode logging, and the update running slower between "
        "the other work than in a tight loop; see benchmarks/profile_step.py)"
    )
    print()


def solve_table(args: argparse.Namespace) -> None:
    threads = max(1, torch.get_num_threads() // args.jobs)
    jobs = [(args.config, seed, args.threshold, args.device, args.extra, threads) for seed in args.seeds]
    # a fresh process per seed (maxtasksperchild=1), so no seed inherits another's memory or state
    with mp.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:
        rows = pool.map(solve_seed, jobs, chunksize=1)
        pool.close()  # let the workers exit before the pool is torn down: no leaked semaphore at exit
        pool.join()
    print(
        f"## Solve: {args.config} {' '.join(args.extra)} ({args.device}, {args.jobs} seed(s) at a time, "
        f"{threads} torch thread(s) each, threshold {args.threshold})"
    )
    print(
        f"{'seed':>4} {'solved':>6} {'test mean':>9} {'best val':>8} {'solve s':>7} {'env steps':>9} "
        f"{'episodes':>8} {'fit s':>6} {'updates':>7} {'RSS MiB':>7}"
    )
    for r in rows:
        print(
            f"{r['seed']:>4} {'yes' if r['solved'] else 'no':>6} {r['test_mean']:>9.1f} {r['best_val']:>8.1f} "
            f"{_fmt(r['solve_s'], '.1f'):>7} {_fmt(r['solve_env_steps'], 'd'):>9} "
            f"{_fmt(r['solve_episodes'], 'd'):>8} {r['fit_s']:>6.1f} {r['updates']:>7} {r['peak_rss_mib']:>7.0f}"
        )
    solved = sum(r["solved"] for r in rows)
    times = [r["solve_s"] for r in rows if r["solve_s"] is not None]
    steps = [r["solve_env_steps"] for r in rows if r["solve_env_steps"] is not None]
    median_s = f"{statistics.median(times):.1f} s" if times else "-"
    median_steps = f"{statistics.median(steps):.0f}" if steps else "-"
    print(
        f"solved {solved}/{len(rows)} (test mean >= {args.threshold}); median time to solve {median_s}, "
        f"median env steps to solve {median_steps}; peak RSS {max(r['peak_rss_mib'] for r in rows):.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"])
    parser.add_argument("--steps", type=int, default=3000, help="timed training steps per throughput run")
    parser.add_argument("--warmup", type=int, default=500, help="untimed training steps first")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-solve", action="store_true")
    parser.add_argument("--config", default="configs/cartpole.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--threshold", type=float, default=475.0)
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at once, one process each")
    parser.add_argument("extra", nargs="*", help="lit_dqn CLI overrides, after --")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU(s), {torch.get_num_threads()} torch thread(s)\n")
    if not args.skip_throughput:
        throughput_table(args)
    if not args.skip_solve:
        solve_table(args)


if __name__ == "__main__":
    main()
