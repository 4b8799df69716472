"""What a fit learns, as hashes: the check that a change which should not alter learning does not.

    python benchmarks/fingerprint.py configs/cartpole.yaml -- --trainer.max_steps 1000
    python benchmarks/fingerprint.py --all > after.jsonl     # every shipped config, budgets below
    git stash; python benchmarks/fingerprint.py --all > before.jsonl; git stash pop
    diff before.jsonl after.jsonl                             # no output: the same learning, bit for bit

Each run is a CPU ``fit`` of the config (no video), with every update's loss recorded (as
``training_step`` returns it: the TD loss, or a distributional head's). It prints one JSON line: the
number of updates, hashes of the per-update losses, of both networks' weights, of the optimizer state
and of the episode history, every validation's score, and the checkpoint names.
Two commits print the same line only if they learn the same numbers.

``--all`` runs ``RUNS``: each shipped config for a budget that includes at least one validation
where that stays cheap, plus prioritized replay, dueling and ``max_episodes`` variants; Atari with a
500-step warm-up, so its updates start at once.
"""

import argparse
import hashlib
import json
import multiprocessing as mp
import sys
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]

# (name, config, CLI overrides)
RUNS: list[tuple[str, str, list[str]]] = [
    ("cartpole", "cartpole", ["--trainer.max_steps=1000"]),
    (
        "cartpole_per_dueling",
        "cartpole",
        ["--trainer.max_steps=600", "--data.prioritized=true", "--model.dueling=true"],
    ),
    ("cartpole_tutorial", "cartpole_tutorial", ["--trainer.max_steps=1000"]),
    ("cartpole_tutorial_25_episodes", "cartpole_tutorial", ["--trainer.max_steps=1000", "--model.max_episodes=25"]),
    ("acrobot", "acrobot", ["--trainer.max_steps=1050"]),
    ("mountaincar", "mountaincar", ["--trainer.max_steps=1050"]),
    ("lunarlander", "lunarlander", ["--trainer.max_steps=330"]),
    ("minatar_breakout", "minatar_breakout", ["--trainer.max_steps=210"]),
    ("atari_pong_per", "atari_pong", ["--trainer.max_steps=60", "--data.warmup_steps=500", "--data.prioritized=true"]),
    ("atari_breakout", "atari_breakout", ["--trainer.max_steps=60", "--data.warmup_steps=500"]),
]


def digest(value: Any) -> str:
    """A short hash of tensors (dtype, shape and bytes), numbers and nested dicts and lists of them."""
    h = hashlib.sha256()

    def feed(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            h.update(repr((x.dtype, tuple(x.shape))).encode())
            h.update(x.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            for key in sorted(x, key=str):
                h.update(repr(key).encode())
                feed(x[key])
        elif isinstance(x, list | tuple):
            h.update(b"[")
            for item in x:
                feed(item)
            h.update(b"]")
        else:
            h.update(repr(x).encode())

    feed(value)
    return h.hexdigest()[:16]


class Losses(L.Callback):
    """Every update's loss, as ``training_step`` returns it: the TD loss, or a distributional head's."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self.values.append(float(outputs["loss"]))


class Validations(L.Callback):
    """Every validation's score during fit, at the updates done."""

    def __init__(self) -> None:
        self.scores: list[tuple[int, float]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.scores.append((trainer.global_step, float(trainer.callback_metrics["val/return_mean"])))


def fingerprint(config: str, overrides: list[str]) -> dict[str, Any]:
    """Fit ``config`` with ``overrides`` on the CPU, in this process, and hash what it learned."""
    from lit_dqn.cli import DQNCLI
    from lit_dqn.data import GymDataModule
    from lit_dqn.episodes import EpisodeStatistics
    from lit_dqn.module import DQN

    with tempfile.TemporaryDirectory() as root:
        args = ["--config", config, "--trainer.accelerator=cpu", f"--trainer.default_root_dir={root}"]
        args += ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", *overrides]
        with mock.patch.object(sys, "argv", ["lit_dqn"]):
            cli = DQNCLI(DQN, GymDataModule, args=args, run=False)
        losses, validations = Losses(), Validations()
        callbacks = [c for c in cli.trainer.callbacks if type(c).__name__ != "GreedyVideo"]
        cli.trainer.callbacks = [*callbacks, losses, validations]
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        checkpoints = sorted(p.name for p in Path(root).rglob("*.ckpt"))
    model, episodes = cli.model, EpisodeStatistics.of(cli.trainer)
    return {
        "updates": len(losses.values),
        "global_step": cli.trainer.global_step,
        "losses": digest(losses.values),
        "weights": digest(model.state_dict()),
        "optimizer": digest(cli.trainer.optimizers[0].state_dict()["state"]),
        "episodes": len(episodes.durations),
        "episode_history": digest([episodes.durations, episodes.returns]),
        "validations": validations.scores,
        "checkpoints": checkpoints,
    }


def _run(job: tuple[str, str, list[str]]) -> str:
    name, config, overrides = job
    result = fingerprint(str(ROOT / "configs" / f"{config}.yaml"), overrides)
    return json.dumps({"run": name, **result})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="a config file (or --all)")
    parser.add_argument("extra", nargs="*", help="lit_dqn CLI overrides, after --")
    parser.add_argument("--all", action="store_true", help="every run in RUNS, one JSON line each")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time with --all")
    args = parser.parse_args()
    if args.all == (args.config is not None):
        parser.error("give a config or --all")
    if args.config is not None:
        print(json.dumps(fingerprint(args.config, args.extra)))
        return
    # a fresh process per run, so no run inherits another's state
    with mp.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:
        for line in pool.imap(_run, RUNS, chunksize=1):
            print(line, flush=True)


if __name__ == "__main__":
    main()
