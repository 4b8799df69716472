"""Where one update's time goes, on ``configs/cartpole_tutorial.yaml`` (1 env step + 1 update).

    python benchmarks/profile_step.py --steps 3000
    python benchmarks/profile_step.py -- --data.updates_per_training_step 1   # one update per training step

Wraps the functions a step calls with wall-clock timers (a few hundred ns each, unlike a tracing
profiler's per-call overhead) and prints the time per step spent in each part after ``--warmup``
updates (figures are per update). "Lightning loop" is the rest: hooks, the dataloader/fetcher and
the progress bar, paid once per training step, which holds ``data.updates_per_training_step`` updates.
"""

import argparse
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from benchmark import build_cli
from lightning.pytorch.core.optimizer import LightningOptimizer

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
    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = 0.0
        self.elapsed = 0.0
        self.steps = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:  # time from the end of step `warmup` to the end of fit
            ACTIVE["on"] = True
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self.elapsed = time.perf_counter() - self.start
        self.steps = trainer.global_step - self.warmup
        ACTIVE["on"] = False


def main() -> None:
    from lit_dqn import module
    from lit_dqn.buffer import ReplayBuffer
    from lit_dqn.module import DQN

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
        import gymnasium as gym

        timed(gym.vector.SyncVectorEnv, "step", "env step (gymnasium)")
        timed(DQN, "act", "action selection (ε-greedy, forward)")
        timed(ReplayBuffer, "push", "buffer push")
        timed(ReplayBuffer, "sample", "buffer sample")
        timed(DQN, "training_step", "training_step total")
        timed(module, "td_targets", "  TD targets")
        timed(module, "td_loss", "  Huber loss")
        timed(torch.autograd, "backward", "  backward")
        timed(torch.nn.utils, "clip_grad_value_", "  gradient clipping")
        timed(LightningOptimizer, "step", "  AdamW step (fused)")
        timed(DQN, "_after_collection", "stop checks (_after_collection)")
        timed(DQN, "_after_burst", "episode logging (_after_burst)")
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)

    per_step = {k: v / window.steps * 1e6 for k, v in TOTALS.items()}
    total = window.elapsed / window.steps * 1e6
    top_level = [
        "env step (gymnasium)",
        "action selection (ε-greedy, forward)",
        "buffer push",
        "buffer sample",
        "training_step total",
        "stop checks (_after_collection)",
        "episode logging (_after_burst)",
    ]
    inner = [k for k in per_step if k.startswith("  ")]
    per_step["  forward passes and the rest"] = per_step["training_step total"] - sum(per_step[k] for k in inner)
    accounted = sum(per_step.get(k, 0.0) for k in top_level)
    print(f"{args.steps} steps of {Path(args.config).name} after {args.warmup}: {total:.0f} us/step")
    print(f"{'part':<42} {'us/step':>8} {'share':>6}")
    for key, value in per_step.items():
        print(f"{key:<42} {value:>8.0f} {value / total:>6.0%}")
    rest = total - accounted
    print(f"{'Lightning loop (hooks, fetcher, progress bar)':<42} {rest:>8.0f} {rest / total:>6.0%}")
    print("(indented: inside training_step; the forward passes of the online and target nets are in the rest)")


if __name__ == "__main__":
    main()
