"""What several DDP processes (ranks) share and what each owns: seeds, evaluation episodes, replay state.

Each rank steps its own envs into its own replay buffer and samples its own batches; DDP all-reduces
the gradients, so one update learns from ``world_size × batch_size`` transitions. With one process
every function here is the identity, and a run is bit for bit what it was before DDP support.
"""

from typing import Any

import numpy as np
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process: ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_seed(seed: int, rank: int, world_size: int) -> int:
    """The seed of one rank's envs, exploration and sampling: the run's seed itself with one process,
    otherwise an independent stream per rank (NumPy's ``SeedSequence`` spawn keys), so ranks never
    collect the same transitions."""
    if world_size == 1:
        return seed
    return int(np.random.SeedSequence(seed, spawn_key=(rank,)).generate_state(1)[0])


def episode_share(episodes: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(offset, count)`` of one rank's evaluation episodes: the ranks split ``episodes`` in rank
    order, counts differing by at most one, so together they play the single-process episodes once."""
    base, extra = divmod(episodes, world_size)
    count = base + (rank < extra)
    offset = rank * base + min(rank, extra)
    return offset, count


def gather_to_rank_zero(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on rank 0 only (``[]`` elsewhere): rank 0 writes checkpoints,
    and only it needs to hold every rank's replay buffer."""
    rank, world_size = world()
    if world_size == 1:
        return [obj]
    gathered: list[Any] | None = [None] * world_size if rank == 0 else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered if gathered is not None else []
