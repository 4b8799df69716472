"""lit_dqn's speed and reliability, side by side with the PyTorch tutorial's own loop.

    python benchmarks/benchmark.py                          # CPU: throughput, then 10 seeds of the default config
    python benchmarks/benchmark.py --device cuda            # the same on a GPU
    python benchmarks/benchmark.py --seeds 0 1 2 --jobs 2   # fewer seeds, two at a time
    python benchmarks/benchmark.py --skip-solve             # throughput only

Throughput: ``configs/cartpole_tutorial.yaml`` (1 env step + 1 update of batch 128 per training
step) against ``tutorial_loop.py``, each in a fresh process, alternating for ``--rounds``
rounds; the timers start after ``--warmup`` updates (startup, compilation of kernels) and run for
``--steps`` updates. Absolute rates drift with the machine's load, so ratios are the figures to
compare.

Three floors from ``floors.py`` bound how fast a Lightning DQN step can be on the machine: lit_dqn's
update with no env and no framework, collecting transitions with no update, and Lightning's loop
around an empty step. They are timed **paired** with lit_dqn, in its process: after every
``--block`` updates of lit_dqn's ``fit``, a callback times each floor for as many updates, so a
lit_dqn block and its floors see the same machine. ``lit_dqn / the three floors`` is lit_dqn's
time over its floors', summed over a round's blocks (every block counts, with whatever periodic
work it holds), then the median over rounds; Lightning's loop counts once per update, as lit_dqn
pays it (every training step is one update). lit_dqn's own row counts all its timed blocks, the
time spent in the floors excluded. The ``plain loop`` row, timed in the same blocks, is not a
floor: the env step and the update taking turns as plain calls (``floors.PlainLoop``), what
interleaving costs any DQN loop. (Timed in separate processes one after another, as this script
did until 2026-11-30, the floors ratio moved by ±25% between runs of the same code on a shared
machine; see benchmarks/README.md.)

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
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
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


FLOORS = ("update_us", "collect_us", "loop_us")  # µs per update of the three floors
PAIRED_FLOORS = (*FLOORS, "plain_us")  # and of the plain loop, timed in the same blocks


class PairedFloors(L.Callback):
    """Times lit_dqn's ``fit`` in blocks of ``block`` updates from update ``warmup`` on and, after each
    block, each of ``floors`` (name -> a timer of ``n`` updates returning µs per update) for
    ``block`` updates, in this process.

    A block ends at the end of the training step (the update) that completes it, so it includes
    Lightning's loop once per update, as training does.
    """

    def __init__(self, warmup: int, block: int, device: str, floors: dict[str, Callable[[int], float]]) -> None:
        self.warmup, self.block, self.device, self.floors = warmup, block, device, floors
        self.start: float | None = None
        self.start_updates = self.start_env_steps = 0
        self.rows: list[dict[str, float]] = []  # one per block: lit_dqn's time and updates, each floor's µs

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def _restart(self, trainer: L.Trainer) -> None:
        self._sync()
        self.start = time.perf_counter()
        self.start_updates, self.start_env_steps = trainer.global_step, trainer.datamodule.runner.env_steps

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.start is None and trainer.global_step >= self.warmup:
            self._restart(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        updates = trainer.global_step - self.start_updates
        if self.start is None or updates < self.block:
            return
        self._sync()
        seconds = time.perf_counter() - self.start
        row = {
            "seconds": seconds,
            "updates": updates,
            "env_steps": trainer.datamodule.runner.env_steps - self.start_env_steps,
        }
        row["lit_us"] = seconds / updates * 1e6
        row.update({name: timer(self.block) for name, timer in self.floors.items()})
        self.rows.append(row)
        self._restart(trainer)


def paired_floors(device: str) -> dict[str, Callable[[int], float]]:
    """The three floors and the plain loop, built once per round and timed after every block."""
    from floors import CollectionFloor, PlainLoop, UpdateFloor, lightning_alone

    def loop_us(n: int) -> float:
        return 1e6 / lightning_alone(n, warmup=20, device=device)["steps_per_s"]

    update, collect, plain = UpdateFloor(device=device), CollectionFloor(device=device), PlainLoop(device=device)
    return {"update_us": update.time, "collect_us": collect.time, "loop_us": loop_us, "plain_us": plain.time}


def summarize_blocks(rows: list[dict[str, float]]) -> dict[str, float]:
    """A round's figures from its paired blocks: lit_dqn's and each floor's mean µs per update over
    all blocks (a cost that lands in some blocks only, such as a progress-bar refresh, counts in
    full), and ``ratio``, lit_dqn's time over the three floors' sum."""
    updates = sum(row["updates"] for row in rows)
    seconds = sum(row["seconds"] for row in rows)
    means = {key: sum(row[key] * row["updates"] for row in rows) / updates for key in PAIRED_FLOORS}
    lit_us = seconds / updates * 1e6
    ratios = [row["lit_us"] / sum(row[key] for key in FLOORS) for row in rows]
    return {
        **means,
        "lit_us": lit_us,
        "ratio": lit_us / sum(means[key] for key in FLOORS),
        "updates": updates,
        "env_steps_per_s": sum(row["env_steps"] for row in rows) / seconds,
        "updates_per_s": updates / seconds,
        "blocks": len(rows),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


def lit_throughput(job: tuple[int, int, int, str, list[str]]) -> dict[str, float]:
    """One round: lit_dqn's ``fit`` with its floors timed in paired blocks (``summarize_blocks``)."""
    warmup, steps, block, device, extra = job
    _quiet()
    with tempfile.TemporaryDirectory() as root:
        config = str(ROOT / "configs" / "cartpole_tutorial.yaml")
        cli = build_cli(config, root, device, ["--trainer.max_steps", str(warmup + steps), *extra])
        cli.trainer.callbacks = [c for c in cli.trainer.callbacks if type(c).__name__ != "GreedyVideo"]
        paired = PairedFloors(warmup, block, device, paired_floors(device))
        cli.trainer.callbacks.append(paired)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    if not paired.rows:
        raise RuntimeError(f"no block of {block} updates after the {warmup} of warm-up: raise --steps or lower --block")
    return {**summarize_blocks(paired.rows), "peak_rss_mib": _peak_rss_mib()}


def tutorial_throughput(job: tuple[int, int, int, str, list[str]]) -> dict[str, float]:
    warmup, steps, _, device, _ = job
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
    from lit_dqn.episodes import EpisodeStatistics

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
        episodes = len(EpisodeStatistics.of(cli.trainer).durations)
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


def throughput_table(args: argparse.Namespace) -> None:
    job = (args.warmup, args.steps, args.block, args.device, args.extra)
    lit, tut = [], []
    ctx = mp.get_context("spawn")
    for _ in range(args.rounds):  # alternate, one process at a time, so both see the same machine
        for fn, rows in ((lit_throughput, lit), (tutorial_throughput, tut)):
            with ctx.Pool(1) as pool:
                rows.append(pool.apply(fn, (job,)))
                pool.close()
                pool.join()
    print(
        f"## Throughput: configs/cartpole_tutorial.yaml vs the tutorial's loop ({args.device}, "
        f"{args.steps} updates after {args.warmup}, median of {args.rounds} rounds; lit_dqn and its floors "
        f"in paired blocks of {args.block} updates, {statistics.median(r['updates'] for r in lit):.0f} timed)"
    )
    print(f"{'loop':<34} {'env steps/s':>12} {'updates/s':>10} {'us/step':>8} {'peak RSS MiB':>13}")
    us = {}
    for name, rows in (("lit_dqn", lit), ("tutorial (reference)", tut)):
        steps = statistics.median(r["env_steps_per_s"] for r in rows)
        updates = statistics.median(r["updates_per_s"] for r in rows)
        rss = max(r["peak_rss_mib"] for r in rows)
        us[name] = 1e6 / steps
        print(f"{name:<34} {steps:>12.0f} {updates:>10.0f} {us[name]:>8.0f} {rss:>13.0f}")
    update_us, collect_us, loop_us, plain_us = (statistics.median(r[key] for r in lit) for key in PAIRED_FLOORS)
    print(f"{'floor: update alone (no env)':<34} {'-':>12} {1e6 / update_us:>10.0f} {update_us:>8.0f} {'':>13}")
    print(f"{'floor: env + acting + push alone':<34} {1e6 / collect_us:>12.0f} {'-':>10} {collect_us:>8.0f} {'':>13}")
    print(f"{'floor: Lightning loop, empty step':<34} {'-':>12} {'-':>10} {loop_us:>8.0f} {'':>13}")
    plain = "plain loop (env step + update)"
    print(f"{plain:<34} {1e6 / plain_us:>12.0f} {1e6 / plain_us:>10.0f} {plain_us:>8.0f} {'':>13}")
    ratio = us["tutorial (reference)"] / us["lit_dqn"]
    pairs = zip(lit, tut, strict=True)
    per_round = ", ".join(f"{a['env_steps_per_s']:.0f}/{b['env_steps_per_s']:.0f}" for a, b in pairs)
    print(f"ratio lit_dqn / tutorial: {ratio:.2f}x (env steps/s per round, lit_dqn/tutorial: {per_round})")
    floor_us = update_us + collect_us + loop_us
    per_round = ", ".join(
        f"{r['ratio']:.2f} ({r['blocks']} blocks, {r['ratio_min']:.2f}-{r['ratio_max']:.2f})" for r in lit
    )
    print(
        f"lit_dqn / the three floors: {statistics.median(r['ratio'] for r in lit):.2f}x (lit_dqn's time over the "
        f"floors' in its paired blocks, median of rounds; per round: {per_round})"
    )
    print(
        f"2x the tutorial needs <= {us['tutorial (reference)'] / 2:.0f} us/step; the three floors add up to "
        f"{floor_us:.0f} us (update {update_us:.0f} + env, acting and push {collect_us:.0f} + Lightning's loop "
        f"{loop_us:.0f}), so a Lightning DQN step here tops out at {us['tutorial (reference)'] / floor_us:.2f}x"
    )
    lit_us = statistics.median(r["lit_us"] for r in lit)
    print(
        f"lit_dqn's overhead beyond the update: {lit_us - update_us:.0f} us/update: env, acting and push "
        f"{collect_us:.0f}, the two taking turns {plain_us - update_us - collect_us:.0f} more (the plain loop), "
        f"and {lit_us - plain_us:.0f} more for Lightning and lit_dqn (the loop, hooks, "
        "logging; see benchmarks/profile_step.py)"
    )
    print()


def solve_table(args: argparse.Namespace) -> None:
    threads = max(1, torch.get_num_threads() // args.jobs)
    jobs = [(args.config, seed, args.threshold, args.device, args.extra, threads) for seed in args.seeds]
    # a fresh process per seed (maxtasksperchild=1), so no seed inherits another's memory or state
    with mp.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:
        rows = []
        for r in pool.imap(solve_seed, jobs, chunksize=1):  # in seed order; each said as it is known,
            rows.append(r)  # so a long study stopped half-way keeps the seeds it finished
            print(
                f"seed {r['seed']}: solved {'yes' if r['solved'] else 'no'}, test mean {r['test_mean']:.1f}, "
                f"best val {r['best_val']:.1f}, env steps to solve {_fmt(r['solve_env_steps'], 'd')}, "
                f"fit {r['fit_s']:.1f} s",
                file=sys.stderr,
                flush=True,
            )
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


def end_workers_on_sigterm() -> None:
    """Make SIGTERM (``kill``, a job scheduler's stop) end this script as Ctrl-C does, by an exception,
    so that each ``with Pool`` block terminates its workers on the way out. By default SIGTERM ends
    the parent at once and its spawned workers train on, orphaned: only Ctrl-C reaches them, as the
    terminal signals the whole process group."""

    def stop(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        print(f"{Path(sys.argv[0]).name}: stopped by {name}; ending its workers", file=sys.stderr)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def main() -> None:
    end_workers_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"])
    parser.add_argument("--steps", type=int, default=3000, help="timed updates per throughput run")
    parser.add_argument("--warmup", type=int, default=500, help="untimed updates first")
    parser.add_argument("--block", type=int, default=200, help="lit_dqn updates per block paired with its floors")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-solve", action="store_true")
    parser.add_argument("--config", default="configs/cartpole.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--threshold", type=float, default=475.0)
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at once, one process each")
    parser.add_argument("extra", nargs="*", help="lit_dqn CLI overrides, after --")
    args = parser.parse_args()
    if args.steps < args.block:
        parser.error(f"--steps ({args.steps}) must be at least --block ({args.block}): no block would be timed")
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU(s), {torch.get_num_threads()} torch thread(s)\n")
    if not args.skip_throughput:
        throughput_table(args)
    if not args.skip_solve:
        solve_table(args)


if __name__ == "__main__":
    main()
