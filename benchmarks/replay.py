"""What prioritized replay costs: sampling and priority updates against uniform sampling.

    python benchmarks/replay.py                                  # 50k and 1M transitions, batch 256, CPU
    python benchmarks/replay.py --capacities 50000 --device cuda

Each buffer is filled to capacity with CartPole-sized transitions (4 floats; 3-step windows as in the
default config), then timed over ``--iters`` batches, alternating uniform and prioritized in each
round so both see the same machine. Both samples gather the same 3-step windows; on top of that,
prioritized costs a stratified sum-tree descent for the sample and a leaf write plus ancestor
refresh for the priority update, each ``log2(capacity)`` vectorised levels, where uniform draws one
``randint``. Medians of ``--rounds`` rounds, in µs per batch.
"""

import argparse
import statistics
import time

import torch

from lit_dqn.buffer import ReplayBuffer
from lit_dqn.sampling import PrioritizedSampler


def filled(buffer: ReplayBuffer) -> ReplayBuffer:
    """Fill ``buffer`` to capacity with one long episode of random transitions (slot i links to i + 1)."""
    obs = torch.randn(buffer.capacity, 4, device=buffer.device)
    buffer.obs.copy_(obs)
    buffer.next_obs.copy_(obs)
    buffer.rewards.fill_(1.0)
    if buffer.n_step > 1:
        buffer.next_index.copy_(torch.arange(1, buffer.capacity + 1, device=buffer.device))
        buffer.next_index[-1] = -1
    buffer.size, buffer.pos = buffer.capacity, 0
    if buffer.sampler.prioritized:
        slots = torch.arange(buffer.capacity, device=buffer.device)
        buffer.sampler.update_priorities(slots, torch.rand(buffer.capacity, device=buffer.device))
    return buffer


def _sync(device: torch.device) -> None:
    """Wait for queued kernels, so a timer measures work done rather than work launched."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def time_us(fn, iters: int, device: torch.device) -> float:
    for _ in range(10):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters * 1e6


def replay_costs(capacity: int, args: argparse.Namespace, device: torch.device) -> tuple[float, float, float]:
    """Median µs per batch: uniform sample, prioritized sample, prioritized priority update."""
    kwargs = {"device": device, "seed": 0, "n_step": args.n_step}
    uniform = filled(ReplayBuffer(capacity, (4,), **kwargs))
    prioritized = filled(ReplayBuffer(capacity, (4,), sampler=PrioritizedSampler(), **kwargs))
    errors = torch.rand(args.batch_size, device=device)
    indices = prioritized.sample(args.batch_size).indices
    calls = {
        "uniform": lambda: uniform.sample(args.batch_size),
        "sample": lambda: prioritized.sample(args.batch_size, beta=0.5),
        "update": lambda: prioritized.sampler.update_priorities(indices, errors),
    }
    rows = {name: [] for name in calls}
    for _ in range(args.rounds):  # alternate, so each sees the same machine
        for name, call in calls.items():
            rows[name].append(time_us(call, args.iters, device))
    return tuple(statistics.median(rows[name]) for name in calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capacities", type=int, nargs="+", default=[50_000, 1_000_000])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--n-step", type=int, default=3)
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {device}, batch {args.batch_size}")
    header = ("capacity", "uniform sample", "PER sample", "PER update", "PER total", "ratio")
    print("".join(f"{h:>16}" for h in header))
    for capacity in args.capacities:
        u, s, p = replay_costs(capacity, args, device)
        print(f"{capacity:>16}" + "".join(f"{us:>13.0f} us" for us in (u, s, p, s + p)) + f"{(s + p) / u:>15.1f}x")


if __name__ == "__main__":
    main()
