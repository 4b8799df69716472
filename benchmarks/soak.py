"""Soak: a long run with resident memory and open files sampled, to show nothing grows per step.

    python benchmarks/soak.py --env-steps 200000

Trains the default config (early stopping off) for ``--env-steps`` env steps at a low replay ratio,
so the env and buffer see many steps quickly, and prints RSS and open file descriptors every
``--every`` env steps. Once the buffer is full, RSS should stay flat and the descriptor count fixed.
"""

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import lightning as L
from benchmark import build_cli
from lightning.pytorch.callbacks import EarlyStopping, ProgressBar

ROOT = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


class Sampler(L.Callback):
    def __init__(self, every: int) -> None:
        self.every = every
        self.next = every
        self.start = time.perf_counter()
        self.rows: list[tuple[int, int, float, int, float]] = []
        self.buffer_mib = float("nan")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.buffer_mib = trainer.datamodule.buffer.nbytes / 2**20
        if batch.env_steps >= self.next:
            self.next += self.every
            row = (batch.env_steps, trainer.global_step, rss_mib(), open_files(), time.perf_counter() - self.start)
            self.rows.append(row)
            print(f"{row[0]:>9} {row[1]:>8} {row[2]:>8.1f} {row[3]:>6} {row[4]:>7.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-steps", type=int, default=200_000)
    parser.add_argument("--every", type=int, default=10_000)
    parser.add_argument("--updates-per-step", type=float, default=0.125)
    args = parser.parse_args()
    updates = int(args.env_steps * args.updates_per_step)
    with tempfile.TemporaryDirectory() as root:
        extra = ["--trainer.max_steps", str(updates), "--data.updates_per_step", str(args.updates_per_step)]
        # validation every 5000 updates: 250 training steps of the config's 20 updates
        extra += ["--trainer.val_check_interval=250", "--data.eval_episodes=10"]
        cli = build_cli(str(ROOT / "configs/cartpole.yaml"), root, "cpu", extra)
        # no early stop (the run must last), no progress bar (the table is the output)
        drop = (EarlyStopping, ProgressBar)
        cli.trainer.callbacks = [c for c in cli.trainer.callbacks if not isinstance(c, drop)]
        sampler = Sampler(args.every)
        cli.trainer.callbacks.append(sampler)
        print(f"buffer: {cli.datamodule.hparams.buffer_capacity} transitions")
        print(f"{'env steps':>9} {'updates':>8} {'RSS MiB':>8} {'fds':>6} {'time s':>7}")
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    full = [r for r in sampler.rows if r[0] >= cli.datamodule.hparams.buffer_capacity]
    if len(full) >= 2:
        growth = full[-1][2] - full[0][2]
        fds = {r[3] for r in full}
        print(
            f"after the buffer filled: RSS {full[0][2]:.1f} -> {full[-1][2]:.1f} MiB ({growth:+.1f} MiB over "
            f"{full[-1][0] - full[0][0]} env steps); open files {sorted(fds)}"
        )
    print(
        f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MiB; buffer storage "
        f"{sampler.buffer_mib:.2f} MiB (capacity x transition size)"
    )


if __name__ == "__main__":
    main()
