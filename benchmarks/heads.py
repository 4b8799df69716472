"""What each kind of Q-value costs per update, beside the plain head's, on the same network.

    python benchmarks/heads.py                      # LunarLander's sizes: 8 -> 256 -> 256 -> 4, batch 128
    python benchmarks/heads.py --threads 2 --steps 500

Each head trains ``DQN.training_step`` (the real update: outputs, targets, loss, backward, clipping,
fused AdamW, and the target update in ``on_train_batch_end``) in a real ``Trainer.fit``, on one
fixed replay batch of 3-step windows served over and over, so no env or sampling is timed; Double
DQN on, as in the Rainbow configs. The heads take turns in every round, each in a fresh model, so
all see the same machine load; the table gives the median over rounds of the time per update and
its ratio to the plain head's. Lightning's loop around each step (tens of µs) is in every row.
"""

import argparse
import statistics
import sys
import time
from collections.abc import Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from lit_dqn.buffer import ReplayBuffer
from lit_dqn.data import ReplayBatch
from lit_dqn.module import DQN

OBS_DIM, N_ACTIONS, HIDDEN, BATCH_SIZE, N_STEP = 8, 4, [256, 256], 128, 3  # LunarLander-v3's sizes

# (row, DQN keyword arguments); every row adds to the shared ones below
HEADS: list[tuple[str, dict]] = [
    ("DQN (expected Q, Huber)", {}),
    ("C51, 51 atoms", {"distributional": "c51", "v_min": -200.0, "v_max": 200.0}),
    ("QR-DQN, 50 quantiles", {"distributional": "qr_dqn"}),
    ("DQN + dueling + noisy", {"dueling": True, "noisy": True}),
    ("C51 + dueling + noisy (Rainbow)", {"distributional": "c51", "dueling": True, "noisy": True}),
]


class SameBatch(IterableDataset):
    """One replay batch, endlessly (sized, as ``ReplayDataset`` is, so Lightning does not prefetch)."""

    def __init__(self, transitions) -> None:
        self.batch = ReplayBatch(transitions, [], 0, 0, 0.0, BATCH_SIZE, None)

    def __len__(self) -> int:
        return sys.maxsize

    def __iter__(self) -> Iterator[ReplayBatch]:
        while True:
            yield self.batch


class SameBatchData(L.LightningDataModule):
    """Serves ``SameBatch``; the batch is already on the CPU, where the model is (as ``GymDataModule``)."""

    def __init__(self, transitions) -> None:
        super().__init__()
        self.dataset = SameBatch(transitions)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=None)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch


class Timer(L.Callback):
    """Wall time of the updates after the first ``warmup``."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.seconds = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self.seconds = time.perf_counter() - self.start


def transitions():
    """A batch of 3-step windows from a buffer of random LunarLander-sized transitions."""
    generator = torch.Generator().manual_seed(0)
    buffer = ReplayBuffer(4096, (OBS_DIM,), seed=0, n_step=N_STEP)
    for _ in range(4096):
        obs = torch.randn(1, OBS_DIM, generator=generator)
        action = torch.randint(N_ACTIONS, (1,), generator=generator)
        reward = torch.randn(1, generator=generator)
        buffer.push(obs, action, reward, obs + 0.1, torch.rand(1, generator=generator) < 0.01)
    return buffer.sample(BATCH_SIZE)


def ms_per_update(kwargs: dict, batch, warmup: int, steps: int) -> float:
    model = DQN(OBS_DIM, N_ACTIONS, HIDDEN, lr=6.3e-4, gamma=0.99, double_dqn=True, **kwargs)
    timer = Timer(warmup)
    trainer = L.Trainer(
        max_steps=warmup + steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(model, datamodule=SameBatchData(batch))
    return timer.seconds / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="timed updates per head and round")
    parser.add_argument("--warmup", type=int, default=30, help="untimed updates first")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    L.seed_everything(0, verbose=False)
    batch = transitions()
    times: dict[str, list[float]] = {name: [] for name, _ in HEADS}
    for _ in range(args.rounds):
        for name, kwargs in HEADS:
            times[name].append(ms_per_update(kwargs, batch, args.warmup, args.steps))
    print(
        f"## One update, in a real fit: {OBS_DIM} -> {' -> '.join(map(str, HIDDEN))} -> {N_ACTIONS} actions, "
        f"batch {BATCH_SIZE}, {N_STEP}-step, Double DQN; {args.threads} torch thread(s), {args.steps} updates "
        f"after {args.warmup}, median of {args.rounds} rounds"
    )
    plain = statistics.median(times[HEADS[0][0]])
    print(f"{'head':<34} {'ms/update':>9} {'x plain':>7}")
    for name, _ in HEADS:
        ms = statistics.median(times[name])
        print(f"{name:<34} {ms:>9.2f} {ms / plain:>7.2f}")


if __name__ == "__main__":
    main()
