"""lit_dqn with 1 process against N DDP processes on the CPU (gloo): throughput, then time to solve.

    python benchmarks/ddp.py                                   # 1 vs 2 processes, CartPole, seeds 0-2
    python benchmarks/ddp.py --processes 1 2 4 --seeds 0 1 2 3 4
    python benchmarks/ddp.py --skip-solve --steps 3000
    python benchmarks/ddp.py --skip-throughput --seeds 0 -- --trainer.max_steps 2000   # overrides for solve runs

Each run is ``python -m lit_dqn fit --config configs/cartpole.yaml`` in a fresh process (Lightning
launches the other ranks), alternating the process counts so all see the same machine load; every
process uses one torch thread. ``DDPTimer`` below, loaded into each run as a callback, writes rank 0's
figures:

- throughput: job env steps/s (all ranks' envs together) and updates/s (one update: every rank
  samples ``data.batch_size`` transitions and DDP all-reduces their gradients), timed after
  ``--warmup`` updates, with validation off;
- solve: wall time from the start of ``fit`` to the validation that stopped it (greedy mean over
  ``data.eval_episodes`` >= the config's 495, the episodes split across ranks), and the job's env
  steps then.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

ROOT = Path(__file__).resolve().parents[1]


class DDPTimer(L.Callback):
    """Rank 0 writes ``out``: the steady-state rates after ``warmup`` updates, and the time, updates
    and job env steps at the best validation."""

    def __init__(self, out: str, warmup: int = 0) -> None:
        self.out, self.warmup = Path(out), warmup
        self.start: float | None = None
        self.fit_start = 0.0
        self.start_updates = 0
        self.start_env_steps = 0
        self.best = float("-inf")
        self.best_at: dict[str, float] = {}

    @staticmethod
    def _job_env_steps(trainer: L.Trainer, pl_module: L.LightningModule) -> int:
        runner_steps = trainer.datamodule.runner.env_steps
        return pl_module.job_env_steps if trainer.world_size > 1 else runner_steps

    def on_fit_start(self, trainer, pl_module) -> None:
        self.fit_start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.start is None and trainer.global_step >= self.warmup:  # a training step may hold several updates
            self.start, self.start_updates = time.perf_counter(), trainer.global_step
            self.start_env_steps = batch.env_steps * trainer.world_size  # the same on every rank here

    def on_validation_end(self, trainer, pl_module) -> None:
        score = trainer.callback_metrics.get("val/return_mean")
        if trainer.sanity_checking or score is None or float(score) <= self.best:
            return
        self.best = float(score)
        self.best_at = {
            "solve_s": time.perf_counter() - self.fit_start,
            "updates": trainer.global_step,
            "env_steps": self._job_env_steps(trainer, pl_module),
            "val": self.best,
        }

    def on_train_end(self, trainer, pl_module) -> None:
        elapsed = time.perf_counter() - self.start
        updates = trainer.global_step - self.start_updates
        env_steps = self._job_env_steps(trainer, pl_module) - self.start_env_steps
        if trainer.global_rank == 0:
            result = {"env_steps_per_s": env_steps / elapsed, "updates_per_s": updates / elapsed, **self.best_at}
            self.out.write_text(json.dumps(result))


def run(processes: int, args: list[str], warmup: int = 0) -> dict[str, float]:
    """One ``fit`` with ``processes`` ranks; rank 0's ``DDPTimer`` figures."""
    with tempfile.TemporaryDirectory() as root:
        out = Path(root) / "timer.json"
        timer = json.dumps({"class_path": "ddp.DDPTimer", "init_args": {"out": str(out), "warmup": warmup}})
        strategy = ["--trainer.strategy=ddp"] if processes > 1 else []
        command = [sys.executable, "-m", "lit_dqn", "fit", "--config", str(ROOT / "configs" / "cartpole.yaml")]
        command += [f"--trainer.devices={processes}", "--trainer.accelerator=cpu", *strategy]
        command += [f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false"]
        command += [f"--trainer.callbacks+={timer}", *args]
        path = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
        result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=2000, help="timed updates per throughput run")
    parser.add_argument("--warmup", type=int, default=300, help="untimed updates first")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-solve", action="store_true")
    parser.add_argument("extra", nargs="*", help="lit_dqn CLI overrides for the solve runs, after --")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPU(s), one torch thread per process; configs/cartpole.yaml\n")

    if not args.skip_throughput:
        rates: dict[int, list[dict]] = {n: [] for n in args.processes}
        no_validation = [f"--trainer.max_steps={args.warmup + args.steps}", "--trainer.val_check_interval=1000000"]
        for _ in range(args.rounds):
            for n in args.processes:  # alternating, so every count sees the same machine
                rates[n].append(run(n, no_validation, warmup=args.warmup))
        print(f"## Throughput ({args.steps} updates after {args.warmup}, median of {args.rounds} rounds)")
        print(f"{'processes':>9} {'env steps/s':>12} {'updates/s':>10} {'transitions/update':>19}")
        for n in args.processes:
            env_rate = statistics.median(r["env_steps_per_s"] for r in rates[n])
            update_rate = statistics.median(r["updates_per_s"] for r in rates[n])
            print(f"{n:>9} {env_rate:>12.0f} {update_rate:>10.0f} {n * 256:>19}")
        print()

    if not args.skip_solve:
        print("## Time to solve (early stop at greedy validation mean >= 495)")
        print(f"{'processes':>9} {'seed':>5} {'solve s':>8} {'updates':>8} {'job env steps':>14} {'val':>6}")
        solved: dict[int, list[dict]] = {n: [] for n in args.processes}
        for seed in args.seeds:
            for n in args.processes:
                row = run(n, [f"--seed_everything={seed}", *args.extra])
                solved[n].append(row)
                print(
                    f"{n:>9} {seed:>5} {row['solve_s']:>8.1f} {row['updates']:>8} {row['env_steps']:>14}"
                    f" {row['val']:>6.1f}",
                    flush=True,
                )
        for n in args.processes:
            rows = [r for r in solved[n] if r["val"] >= 495]
            median_s = statistics.median(r["solve_s"] for r in rows) if rows else float("nan")
            median_steps = statistics.median(r["env_steps"] for r in rows) if rows else float("nan")
            print(
                f"{n} process(es): {len(rows)}/{len(solved[n])} reached 495; median {median_s:.1f} s, "
                f"{median_steps:.0f} job env steps"
            )


if __name__ == "__main__":
    main()
