"""What each kind of Q-value costs per update, beside the plain head's, on the same network.

    python benchmarks/heads.py                      # LunarLander's sizes: 8 -> 256 -> 256 -> 4, batch 128
    python benchmarks/heads.py --net minatar        # MinAtar Breakout's Rainbow net: 10x10x4 -> conv -> 128 -> 3
    python benchmarks/heads.py --threads 2 --steps 500

Each head trains ``DQN.training_step`` (the real update: outputs, targets, loss, backward, clipping,
fused AdamW, and the target update in ``on_train_batch_end``) in a real ``Trainer.fit``, on one
fixed replay batch of 3-step windows served over and over, so no env or sampling is timed; Double
DQN on, as in the Rainbow configs. The heads take turns in every round, each in a fresh model, so
all see the same machine load; the table gives the median over rounds of the time per update and
its ratio to the plain head's. Lightning's loop around each step (tens of µs) is in every row.

How much a head costs depends on how much of the network its output layer is: on LunarLander's MLP
the 256 x (4 actions x 51 atoms) layer is as large as the hidden 256 x 256 one; on MinAtar's CNN the
128 x (3 x 51) layer is small beside the convolution and its 1024 x 128 layer.
"""

import argparse
import math
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from lit_dqn.buffer import ReplayBuffer, Transitions
from lit_dqn.data import ReplayBatch
from lit_dqn.module import DQN

N_STEP = 3


@dataclass(frozen=True)
class Net:
    """A shipped config's network and batch: the observation (shape, dtype) and what the model needs."""

    obs_shape: tuple[int, ...]
    obs_dtype: torch.dtype
    n_actions: int
    hidden: list[int]
    batch_size: int
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # the image keywords ``data`` links into the model


NETS = {
    "lunarlander": Net((8,), torch.float32, 4, [256, 256], 128),  # lunarlander_rainbow.yaml
    "minatar": Net(  # minatar_breakout_rainbow.yaml (MinAtar/Breakout-v1: 10x10x4 bool frames, 3 actions)
        (10, 10, 4), torch.bool, 3, [128], 32, {"obs_shape": [10, 10, 4], "obs_layout": "channels_last"}
    ),
}

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

    def __init__(self, transitions, batch_size: int) -> None:
        self.batch = ReplayBatch(transitions, [], 0, 0, 0.0, batch_size, None)

    def __len__(self) -> int:
        return sys.maxsize

    def __iter__(self) -> Iterator[ReplayBatch]:
        while True:
            yield self.batch


class SameBatchData(L.LightningDataModule):
    """Serves ``SameBatch``; the batch is already on the CPU, where the model is (as ``GymDataModule``)."""

    def __init__(self, transitions, batch_size: int) -> None:
        super().__init__()
        self.dataset = SameBatch(transitions, batch_size)

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


def transitions(net: Net) -> Transitions:
    """A batch of 3-step windows from a buffer of random transitions of ``net``'s sizes."""
    generator = torch.Generator().manual_seed(0)
    buffer = ReplayBuffer(4096, net.obs_shape, seed=0, n_step=N_STEP, obs_dtype=net.obs_dtype)
    for _ in range(4096):
        if net.obs_dtype == torch.bool:
            obs = torch.rand(1, *net.obs_shape, generator=generator) < 0.1  # sparse frames, as MinAtar's
            next_obs = torch.rand(1, *net.obs_shape, generator=generator) < 0.1
        else:
            obs = torch.randn(1, *net.obs_shape, generator=generator)
            next_obs = obs + 0.1
        action = torch.randint(net.n_actions, (1,), generator=generator)
        reward = torch.randn(1, generator=generator)
        buffer.push(obs, action, reward, next_obs, torch.rand(1, generator=generator) < 0.01)
    return buffer.sample(net.batch_size)


def ms_per_update(net: Net, kwargs: dict, batch, warmup: int, steps: int) -> float:
    model = DQN(
        math.prod(net.obs_shape),  # as data.obs_dim
        net.n_actions,
        net.hidden,
        lr=6.3e-4,
        gamma=0.99,
        double_dqn=True,
        **net.model_kwargs,
        **kwargs,
    )
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
    trainer.fit(model, datamodule=SameBatchData(batch, net.batch_size))
    return timer.seconds / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="timed updates per head and round")
    parser.add_argument("--warmup", type=int, default=30, help="untimed updates first")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--net", choices=sorted(NETS), default="lunarlander", help="whose network and batch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    L.seed_everything(0, verbose=False)
    net = NETS[args.net]
    batch = transitions(net)
    times: dict[str, list[float]] = {name: [] for name, _ in HEADS}
    for _ in range(args.rounds):
        for name, kwargs in HEADS:
            times[name].append(ms_per_update(net, kwargs, batch, args.warmup, args.steps))
    print(
        f"## One update, in a real fit ({args.net}): {'x'.join(map(str, net.obs_shape))} -> "
        f"{' -> '.join(map(str, net.hidden))} -> {net.n_actions} actions, batch {net.batch_size}, {N_STEP}-step, "
        f"Double DQN; {args.threads} torch thread(s), {args.steps} updates "
        f"after {args.warmup}, median of {args.rounds} rounds"
    )
    plain = statistics.median(times[HEADS[0][0]])
    print(f"{'head':<34} {'ms/update':>9} {'x plain':>7}")
    for name, _ in HEADS:
        ms = statistics.median(times[name])
        print(f"{name:<34} {ms:>9.2f} {ms / plain:>7.2f}")


if __name__ == "__main__":
    main()
