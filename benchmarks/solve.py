"""How reliably and how fast a config solves its env: train N seeds, test each best checkpoint.

    python benchmarks/solve.py --config configs/cartpole.yaml --seeds 0 1 2 3 4 --jobs 2

Each seed runs ``fit`` in its own process, then ``test`` on the best checkpoint (by greedy validation
return) with the datamodule's test seeds, which validation never saw. Extra arguments after ``--``
are passed to the CLI, e.g. ``-- --model.lr 1e-3``. Prints one row per seed and a summary.
"""

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import time

import lightning as L
import torch


class SolveTimer(L.Callback):
    """Wall-clock and env steps from the start of fit to the first validation that reaches ``threshold``."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.start = 0.0
        self.solved_at: float | None = None
        self.solved_step: int | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        score = trainer.callback_metrics.get("val/return_mean")
        if self.solved_at is None and not trainer.sanity_checking and score is not None and score >= self.threshold:
            self.solved_at = time.perf_counter() - self.start
            self.solved_step = trainer.datamodule.runner.env_steps


def run_seed(job: tuple[str, int, float, list[str], int]) -> dict:
    from lit_dqn.cli import DQNCLI
    from lit_dqn.data import GymDataModule
    from lit_dqn.module import DQN

    config, seed, threshold, extra, threads = job
    torch.set_num_threads(threads)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # the worker's progress bars and warnings would interleave with the table
    with tempfile.TemporaryDirectory() as root:
        args = ["--config", config, "--seed_everything", str(seed), "--trainer.default_root_dir", root]
        args += ["--trainer.logger.init_args.save_dir", root]
        cli = DQNCLI(DQN, GymDataModule, args=args + extra, run=False)
        timer = SolveTimer(threshold)
        cli.trainer.callbacks.append(timer)
        start = time.perf_counter()
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        fit_s = time.perf_counter() - start
        episodes = len(cli.model.episode_durations)
        env_steps = int(cli.trainer.callback_metrics.get("train/env_steps", torch.tensor(-1)).item())
        best_val = float(cli.trainer.checkpoint_callback.best_model_score or float("nan"))
        test = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)[0]
    return {
        "seed": seed,
        "solved": test["test/return_mean"] >= threshold,
        "test_mean": test["test/return_mean"],
        "best_val": best_val,
        "episodes": episodes,
        "env_steps": env_steps,
        "updates": cli.trainer.global_step,
        "fit_s": fit_s,
        "solve_s": timer.solved_at,
        "solve_steps": timer.solved_step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/cartpole.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threshold", type=float, default=475.0)
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at once, one process each")
    parser.add_argument("extra", nargs="*", help="CLI overrides, after --")
    args = parser.parse_args()
    threads = max(1, torch.get_num_threads() // args.jobs)
    jobs = [(args.config, seed, args.threshold, args.extra, threads) for seed in args.seeds]
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        rows = pool.map(run_seed, jobs, chunksize=1)

    print(f"config: {args.config} {' '.join(args.extra)}")
    header = f"{'seed':>4} {'solved':>6} {'test':>6} {'bestval':>7} {'episodes':>8} {'envsteps':>8} "
    print(header + f"{'fit_s':>7} {'solve_s':>7} {'solve_at':>8}")
    for r in rows:
        solve_s = f"{r['solve_s']:.1f}" if r["solve_s"] is not None else "-"
        solve_at = str(r["solve_steps"]) if r["solve_steps"] is not None else "-"
        print(
            f"{r['seed']:>4} {'yes' if r['solved'] else 'no':>6} {r['test_mean']:>6.1f} {r['best_val']:>7.1f} "
            f"{r['episodes']:>8} {r['env_steps']:>8} {r['fit_s']:>7.1f} {solve_s:>7} {solve_at:>8}"
        )
    solved = [r for r in rows if r["solved"]]
    times = [r["solve_s"] for r in rows if r["solve_s"] is not None]
    median = f"{statistics.median(times):.1f} s" if times else "-"
    print(f"solved {len(solved)}/{len(rows)}; median wall-clock to first solving validation: {median}")


if __name__ == "__main__":
    main()
