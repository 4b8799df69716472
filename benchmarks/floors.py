"""The costs a Lightning DQN step cannot go below, measured on this machine.

    python benchmarks/floors.py --steps 3000

- **Update alone**: lit_dqn's own pieces with no env, no acting and no framework: sample a batch of
  128 from a filled ``ReplayBuffer``, Q-values and TD targets, Huber loss, backward, gradient
  clipping by value, fused AdamW (amsgrad) step and the soft target update.
- **Collection alone**: stepping the env with ε-greedy actions from the Q-network and pushing
  each transition into the buffer, with no updates and no framework.
- **Lightning loop alone**: a ``Trainer`` with the tutorial config's callbacks (checkpointing,
  progress bar) and logger, running a manual-optimization ``training_step`` that does nothing on a
  stream of constant batches: fetching, hooks, progress tracking and the progress bar.

``benchmark.py`` times them in blocks that alternate with blocks of lit_dqn's training, inside
lit_dqn's process, so the gap between lit_dqn and the sum of its floors is read off pairs that saw
the same machine. This script times them one after another and also prints the first two **taking
turns** in one plain loop (``PlainLoop``), as any DQN must run them: the difference to their sum is
what interleaving itself costs (each evicts the other's data from the caches), part of every DQN
step's gap to the floors.
"""

import argparse
import copy
import tempfile
import time
from collections.abc import Callable, Iterator

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from lit_dqn.buffer import ReplayBuffer
from lit_dqn.callbacks import EpisodeProgressBar
from lit_dqn.losses import td_loss, td_targets
from lit_dqn.networks import QNetwork, soft_update

OBS_DIM, N_ACTIONS, BATCH_SIZE = 4, 2, 128  # CartPole-v1 on configs/cartpole_tutorial.yaml


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _plain_update(buffer: ReplayBuffer, policy_net: torch.nn.Module) -> Callable[[], None]:
    """lit_dqn's update written as plain torch calls, on ``policy_net`` and a copy of it as target."""
    target_net = copy.deepcopy(policy_net).requires_grad_(False)
    optimizer = torch.optim.AdamW(policy_net.parameters(), lr=1e-4, amsgrad=True, fused=True)
    pairs = (list(target_net.parameters()), list(policy_net.parameters()))

    def update() -> None:
        obs, actions, rewards, next_obs, terminated, *_ = buffer.sample(BATCH_SIZE)  # one-step: no window
        q_values = policy_net(obs)  # [B, n_actions]
        with torch.no_grad():
            targets = td_targets(rewards, target_net(next_obs), terminated, 0.99)
        loss = td_loss(q_values, actions, targets)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_value_(policy_net.parameters(), 100.0)
        optimizer.step()
        soft_update(*pairs, 0.005)

    return update


def _us_per_call(fn: Callable[[], object], n: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / n * 1e6


class UpdateFloor:
    """lit_dqn's update alone: a full buffer of random CartPole-shaped transitions, no env, no framework."""

    def __init__(self, warmup: int = 500, device: str = "cpu") -> None:
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):  # seeded, without moving the caller's generator
            torch.manual_seed(0)
            buffer = ReplayBuffer(10_000, (OBS_DIM,), device=self.device, seed=0)
            n = buffer.capacity
            buffer.push(torch.randn(n, OBS_DIM), torch.randint(N_ACTIONS, (n,)), torch.ones(n),
                        torch.randn(n, OBS_DIM), torch.rand(n) < 0.05)  # fmt: skip
            policy_net = QNetwork(OBS_DIM, N_ACTIONS).to(self.device)
        self.update = _plain_update(buffer, policy_net)
        self.time(warmup)

    def time(self, n: int) -> float:
        """µs per update over ``n`` updates."""
        return _us_per_call(self.update, n, self.device)


class CollectionFloor:
    """lit_dqn's collection alone: a CartPole vector env stepped by ``DQN.act`` (the tutorial config's
    ε schedule, so the greedy forward runs as often as in training), every transition pushed into
    the buffer, no updates and no framework."""

    def __init__(self, warmup: int = 500, device: str = "cpu") -> None:
        import gymnasium as gym

        from lit_dqn.module import DQN
        from lit_dqn.rollout import EnvRunner

        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.model = DQN(OBS_DIM, N_ACTIONS, eps_start=0.9, eps_end=0.05, eps_decay=1000).to(self.device)
        self.envs = gym.make_vec("CartPole-v1", num_envs=1, vectorization_mode="sync")
        self.runner = EnvRunner(self.envs, ReplayBuffer(10_000, (OBS_DIM,), device=self.device, seed=0), seed=0)
        while self.runner.env_steps < max(warmup, BATCH_SIZE):
            self.collect()

    def collect(self) -> None:
        self.runner.step(self.model.act)

    def time(self, n: int) -> float:
        """µs per env step over ``n`` stored transitions (an autoreset call stores none)."""
        _sync(self.device)
        start, target = time.perf_counter(), self.runner.env_steps + n
        while self.runner.env_steps < target:
            self.collect()
        _sync(self.device)
        return (time.perf_counter() - start) / n * 1e6

    def close(self) -> None:
        self.envs.close()


class PlainLoop(CollectionFloor):
    """The collection and the update taking turns on one buffer, as plain calls: what any DQN loop
    runs, with no framework. Not a floor: each evicts the other's data from the caches, a cost
    lit_dqn pays too."""

    def __init__(self, warmup: int = 500, device: str = "cpu") -> None:
        super().__init__(warmup, device)
        self.update = _plain_update(self.runner.buffer, self.model.policy_net)
        self.time(warmup)

    def time(self, n: int) -> float:
        """µs per update over ``n`` updates, each after the env stored one more transition (as in
        lit_dqn, an autoreset call, which stores none, is not followed by an update)."""
        _sync(self.device)
        start = time.perf_counter()
        for _ in range(n):
            target = self.runner.env_steps + 1
            while self.runner.env_steps < target:
                self.collect()
            self.update()
        _sync(self.device)
        return (time.perf_counter() - start) / n * 1e6


def update_alone(steps: int, warmup: int = 500, device: str = "cpu") -> dict[str, float]:
    """Updates per second of lit_dqn's update with nothing around it."""
    return {"updates_per_s": 1e6 / UpdateFloor(warmup, device).time(steps)}


def collection_alone(steps: int, warmup: int = 500, device: str = "cpu") -> dict[str, float]:
    """Env steps per second of lit_dqn's collection with no updates."""
    floor = CollectionFloor(warmup, device)
    us = floor.time(steps)
    floor.close()
    return {"env_steps_per_s": 1e6 / us}


def interleaved_alone(steps: int, warmup: int = 500, device: str = "cpu") -> dict[str, float]:
    """Steps per second of one env step and one plain update taking turns, with no framework: what
    the update and collection floors cost together once each evicts the other's data from the caches
    (not one of the three floors ``benchmark.py`` adds up; it shows how much of lit_dqn's gap to them
    any DQN loop pays)."""
    loop = PlainLoop(warmup, device)
    us = loop.time(steps)
    loop.close()
    return {"steps_per_s": 1e6 / us}


class ConstantBatches(IterableDataset):
    """The same tiny batch forever: the cheapest possible data for the loop to fetch."""

    def __len__(self) -> int:  # sized like lit_dqn's replay stream, so Lightning does not prefetch
        return 2**62

    def __iter__(self) -> Iterator[Tensor]:
        batch = torch.zeros(1)
        while True:
            yield batch


class EmptyStep(L.LightningModule):
    """Manual optimization (as lit_dqn's DQN) with a training step that does no work."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch: Tensor, batch_idx: int) -> None:
        return None

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


class _Timer(L.Callback):
    """Times ``steps`` whole loop iterations: from the start of batch ``warmup`` to the start of
    batch ``warmup + steps`` (so the end of fit, with its checkpoint save, is not counted)."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.start = self.elapsed = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()
        elif batch_idx == self.warmup + self.steps:
            self.elapsed = time.perf_counter() - self.start


def lightning_alone(steps: int, warmup: int = 500, device: str = "cpu") -> dict[str, float]:
    """Training steps per second of Lightning's loop around a step that does nothing."""
    timer = _Timer(warmup, steps)
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(
            accelerator=device,
            devices=1,
            max_steps=-1,
            max_epochs=1,
            limit_train_batches=warmup + steps + 1,
            limit_val_batches=0,
            log_every_n_steps=100,
            default_root_dir=root,
            logger=L.pytorch.loggers.TensorBoardLogger(root, name="lightning_logs", default_hp_metric=False),
            callbacks=[
                L.pytorch.callbacks.ModelCheckpoint(save_last=True),
                EpisodeProgressBar(refresh_rate=50),
                timer,
            ],
            enable_model_summary=False,
        )
        trainer.fit(EmptyStep(), DataLoader(ConstantBatches(), batch_size=None))
    return {"steps_per_s": timer.steps / timer.elapsed}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    update = update_alone(args.steps, args.warmup, args.device)["updates_per_s"]
    collect = collection_alone(args.steps, args.warmup, args.device)["env_steps_per_s"]
    loop = lightning_alone(args.steps, args.warmup, args.device)["steps_per_s"]
    both = interleaved_alone(args.steps, args.warmup, args.device)["steps_per_s"]
    print(f"update alone: {1e6 / update:.0f} us/update ({update:.0f} updates/s)")
    print(f"collection alone: {1e6 / collect:.0f} us/env step ({collect:.0f} env steps/s)")
    print(f"Lightning loop alone: {1e6 / loop:.0f} us/step ({loop:.0f} steps/s)")
    print(
        f"env step and update taking turns, no framework: {1e6 / both:.0f} us/step, "
        f"{1e6 / both - 1e6 / update - 1e6 / collect:.0f} more than the update and collection floors added"
    )
