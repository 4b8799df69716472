"""Where one update's time goes, on ``configs/cartpole_tutorial.yaml`` (1 env step + 1 update).

    python benchmarks/profile_step.py --steps 3000
    python benchmarks/profile_step.py -- --trainer.log_every_n_steps 1000   # CLI overrides after --

Wraps the functions a step calls with wall-clock timers (a few hundred ns each, unlike a tracing
profiler's per-call overhead) and prints the time per step spent in each part after ``--warmup``
updates (figures are per update, and a training step is one update). The replay stream's env steps
and sample run inside Lightning's fetch of the batch; "Lightning loop" is what is left: hooks, the
fetcher, the progress bar, logging and the stream's own Python.
"""

import argparse
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import lightning as L
import torch
from benchmark import build_cli

ROOT = Path(__file__).resolve().parents[1]
TOTALS: dict[str, float] = defaultdict(float)
ACTIVE = {"on": False}


def timed(owner: object, name: str, label: str) -> None:
    """Replace ``owner.name`` with a wrapper adding its wall-clock time to ``TOTALS[label]``."""
    original: Callable = getattr(owner, name)

    def wrapper(*args, **kwargs):
        if not ACTIVE["on"]:
            return original(*args, **kwargs)
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            TOTALS[label] += time.perf_counter() - start

    setattr(owner, name, wrapper)


class Window(L.Callback):
    """Times from the end of the first training step at or past update ``warmup`` to the end of fit."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = self.elapsed = 0.0
        self.start_updates: int | None = None
        self.steps = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.start_updates is None and trainer.global_step >= self.warmup:
            ACTIVE["on"] = True
            self.start, self.start_updates = time.perf_counter(), trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        self.elapsed = time.perf_counter() - self.start
        self.steps = trainer.global_step - self.start_updates
        ACTIVE["on"] = False


def main() -> None:
    from lit_dqn import module
    from lit_dqn.buffer import ReplayBuffer
    from lit_dqn.module import DQN
    from lit_dqn.rollout import EnvRunner

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--config", default=str(ROOT / "configs/cartpole_tutorial.yaml"))
    parser.add_argument("extra", nargs="*", help="lit_dqn CLI overrides, after --")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as root:
        cli = build_cli(args.config, root, "cpu", [f"--trainer.max_steps={args.warmup + args.steps}", *args.extra])
        window = Window(args.warmup)
        cli.trainer.callbacks.append(window)

        # (label, owner, attribute); indented labels are parts of the unindented one above them
        parts = [
            ("replay stream: env steps (EnvRunner.step)", EnvRunner, "step"),
            ("  env step (gymnasium)", gym.vector.SyncVectorEnv, "step"),
            ("  action selection (ε-greedy, forward)", DQN, "act"),
            ("  buffer push", ReplayBuffer, "push"),
            ("replay stream: buffer sample", ReplayBuffer, "sample"),
            ("on_train_batch_start (episodes, stop checks)", DQN, "on_train_batch_start"),
            ("training_step (the update)", DQN, "training_step"),
            ("  TD targets", module, "td_targets"),
            ("  Huber loss", module, "td_loss"),
            ("  backward", torch.autograd, "backward"),
            ("  gradient clipping", torch.nn.utils, "clip_grad_value_"),
            ("  AdamW step (fused)", torch.optim.AdamW, "step"),
            ("on_train_batch_end (target update)", DQN, "on_train_batch_end"),
            ("  soft update", module, "soft_update"),
        ]
        for label, owner, name in parts:
            timed(owner, name, label)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)

    per_update = {label: TOTALS[label] / window.steps * 1e6 for label, _, _ in parts}
    total = window.elapsed / window.steps * 1e6
    rows: list[tuple[str, float]] = []
    for label, value in per_update.items():
        if not label.startswith(" ") and rows and rows[-1][0].startswith(" "):
            rows.append(("  the rest", _rest(rows)))
        rows.append((label, value))
    rows.append(("  the rest", _rest(rows)))
    top_level = sum(value for label, value in per_update.items() if not label.startswith(" "))
    rows.append(("Lightning loop, fetcher and the stream's own Python", total - top_level))
    print(f"{args.steps} updates of {Path(args.config).name} after {args.warmup}, one per training step:")
    print(f"{'part':<52} {'us/update':>9} {'share':>6}")
    for label, value in [("total", total), *rows]:
        print(f"{label:<52} {value:>9.0f} {value / total:>6.0%}")
    print("(indented: parts of the line above; the training step's rest is its forward passes and logging)")


def _rest(rows: list[tuple[str, float]]) -> float:
    """The latest unindented row's time not spent in the indented rows after it."""
    parts = []
    for label, value in reversed(rows):
        if not label.startswith(" "):
            return value - sum(parts)
        parts.append(value)
    raise ValueError("no unindented row")


if __name__ == "__main__":
    main()
