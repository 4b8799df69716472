"""lit_dqn against the plain DQN loop, paired in one process: what Lightning and lit_dqn add per update.

    python benchmarks/paired.py --updates 5000 --block 200

``benchmark.py`` times lit_dqn and its floors in separate processes, one after the other; on a shared
machine whose speed drifts within seconds, their ratio moves by ±25% from run to run. Here one
process alternates blocks: ``--block`` updates of lit_dqn's ``fit`` on
``configs/cartpole_tutorial.yaml`` (bursts as shipped), then, from a callback, the same number of
plain-torch steps (env step, ε-greedy action, push, update: ``floors.PlainLoop``, as in ``floors.interleaved_alone``),
of plain updates alone and of plain collection alone. Each block pair sees the same machine, so
the median of the per-block differences is steady where the absolute times are not.

- ``lit - interleaved``: what Lightning and lit_dqn cost per update beyond any DQN loop.
- ``interleave``: what the env step and the update cost taking turns beyond the two run apart.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
from benchmark import build_cli
from floors import PlainLoop

ROOT = Path(__file__).resolve().parents[1]


class Paired(L.Callback):
    """After every ``block`` updates of lit_dqn past ``warmup``, times the plain loop's blocks."""

    def __init__(self, plain: PlainLoop, block: int, warmup: int) -> None:
        self.plain, self.block, self.warmup = plain, block, warmup
        self.start: float | None = None
        self.start_updates = 0
        self.rows: list[tuple[float, float, float, float]] = []  # (lit, interleaved, update, collect) µs

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.start is None and trainer.global_step >= self.warmup:
            self.start, self.start_updates = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        updates = trainer.global_step - self.start_updates
        if self.start is None or updates < self.block:
            return
        lit = (time.perf_counter() - self.start) / updates * 1e6
        n = self.block
        both, alone, collect = (self.plain.time(n, True, True), self.plain.time(n, False, True),
                                self.plain.time(n, True, False))  # fmt: skip
        self.rows.append((lit, both, alone, collect))
        self.start, self.start_updates = time.perf_counter(), trainer.global_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=5000, help="lit_dqn updates, blocks included")
    parser.add_argument("--block", type=int, default=200, help="updates per timed block")
    parser.add_argument("--warmup", type=int, default=600, help="untimed lit_dqn updates first")
    parser.add_argument("extra", nargs="*", help="lit_dqn CLI overrides, after --")
    args = parser.parse_args()

    plain = PlainLoop(warmup=1000)
    plain.time(args.block, True, True)
    paired = Paired(plain, args.block, args.warmup)
    with tempfile.TemporaryDirectory() as root:
        config = str(ROOT / "configs" / "cartpole_tutorial.yaml")
        overrides = [f"--trainer.max_steps={args.updates}", "--trainer.enable_progress_bar=false", *args.extra]
        cli = build_cli(config, root, "cpu", overrides)
        cli.trainer.callbacks = [c for c in cli.trainer.callbacks if type(c).__name__ != "GreedyVideo"]
        cli.trainer.callbacks.append(paired)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    if not paired.rows:
        sys.exit(f"no block of {args.block} updates after the {args.warmup}-update warm-up: raise --updates")
    lit, both, alone, collect = (statistics.median(column) for column in zip(*paired.rows, strict=True))
    gaps = [row[0] - row[1] for row in paired.rows]
    k = cli.datamodule.hparams.updates_per_training_step
    print(f"{len(paired.rows)} paired blocks of {args.block} updates ({k} per training step), median us per update:")
    print(f"lit_dqn {lit:.0f}  plain interleaved {both:.0f}  plain update {alone:.0f}  plain collection {collect:.0f}")
    print(
        f"lit - interleaved {statistics.median(gaps):.0f} us (blocks: {min(gaps):.0f} to {max(gaps):.0f}); "
        f"interleave {both - alone - collect:.0f} us; lit_dqn / (update + collection) {lit / (alone + collect):.2f}x"
    )


if __name__ == "__main__":
    main()
