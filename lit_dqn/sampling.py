"""Which stored transitions a replay batch draws: uniformly, or by priority (prioritized experience
replay, Schaul et al. 2016, proportional variant), on a tensor sum-tree.

A replay buffer (``buffer.Replay``) is two independent choices: its storage layout
(``buffer.ReplayBuffer``, each transition's observations; ``frames.FrameReplayBuffer``, a ring of
single frames) and its sampler (``UniformSampler`` or ``PrioritizedSampler``). The storage tells
its sampler which slots became sampleable or stopped being so; the sampler draws a batch's slots
(and its importance-sampling weights) from the storage's generator, and keeps the priorities.
"""

import hashlib
from typing import Any

import torch
from torch import Tensor


def restore_generator(generator: torch.Generator, state: Tensor) -> bool:
    """Continue the stream a checkpoint saved in ``state`` (``[S]`` uint8); False where it cannot.

    Each device kind has its own generator (the CPU's Mersenne Twister keeps 5,056 bytes of state,
    CUDA's Philox 16), so a run resumed on another kind of device cannot continue the saved stream.
    Rather than stop a resume the weights, replay and schedules all support, the generator is then
    seeded from the saved bytes: the resumed run repeats from one try to the next, though it is not
    bit for bit the uninterrupted run (another device's arithmetic would not be either).
    """
    if state.numel() == generator.get_state().numel():
        generator.set_state(state)  # anything else wrong with the state still raises
        return True
    digest = hashlib.blake2b(state.cpu().numpy().tobytes(), digest_size=8).digest()
    generator.manual_seed(int.from_bytes(digest, "little"))
    return False


def reseeded_notice(stream: str, device: torch.device) -> str:
    """The line a resume logs where ``restore_generator`` returned False for ``stream``."""
    return (
        f"Resuming on {device.type}: {stream} was saved on another kind of device, so it starts anew "
        "from a seed taken from it (the run goes on, not bit for bit)"
    )


class SumTree:
    """A binary tree of sums over ``capacity`` non-negative leaves, in one flat tensor on ``device``.

    Node ``i`` holds the sum of nodes ``2i`` and ``2i + 1``; the leaves start at ``self.leaves`` (a
    power of two) and the root, the total, is node 1. Updating a batch of leaves and finding the
    leaves at a batch of prefix sums both walk the ``depth`` levels once, each level one vectorised
    gather or scatter over the whole batch: O(B log N) work in ``log N`` tensor operations, with no
    Python loop over items and no host sync, so it runs where the buffer lives (CPU, CUDA or MPS).

    Sums are float64 (float32 on MPS, which has no float64): at a million leaves of priority ~1 the
    total is ~1e6, where float32's step is 0.06, coarser than a low-priority leaf.
    """

    def __init__(self, capacity: int, device: torch.device) -> None:
        self.depth = max(1, (capacity - 1).bit_length())
        self.leaves = 1 << self.depth
        dtype = torch.float32 if device.type == "mps" else torch.float64
        self.tree = torch.zeros(2 * self.leaves, dtype=dtype, device=device)

    @property
    def total(self) -> Tensor:
        """The sum of all leaves, a 0-d tensor (reading it as a number would sync with the device)."""
        return self.tree[1]

    def slots(self, slots: Tensor | slice) -> Tensor:
        """``slots`` as a tensor of leaf indices ``[N]`` (a slice ``start:stop`` becomes ``arange``)."""
        if isinstance(slots, slice):
            return torch.arange(slots.start, slots.stop, device=self.tree.device)
        return slots

    def get(self, slots: Tensor) -> Tensor:
        return self.tree[slots + self.leaves]

    def set(self, slots: Tensor, values: Tensor) -> None:
        """Set leaves ``slots`` ``[K]`` to ``values`` ``[K]`` and refresh their ancestors.

        Each level recomputes its touched nodes from their children, so repeated slots (or siblings
        in one batch) are harmless: every write at a level reads only the finished level below.
        """
        pairs = self.tree.view(-1, 2)  # row i: the children (2i, 2i + 1) of node i
        node = slots + self.leaves
        self.tree[node] = values.to(self.tree.dtype)
        for _ in range(self.depth):
            node = node // 2
            self.tree[node] = pairs[node].sum(dim=1)

    def find(self, prefix: Tensor) -> Tensor:
        """The leaf ``i`` where the running sum of leaves first exceeds ``prefix`` ``[B]``, for each entry.

        A subtree whose sum is zero is never entered, so float rounding at the edges of a segment
        cannot land on an empty slot.
        """
        pairs = self.tree.view(-1, 2)
        node = torch.ones_like(prefix, dtype=torch.long)
        for _ in range(self.depth):
            children = pairs[node]  # [B, 2] sums of the left and right subtrees
            left_sum = children[:, 0]
            right = (prefix >= left_sum) & (children[:, 1] > 0)
            prefix = prefix - left_sum * right
            node = 2 * node + right
        return node - self.leaves

    def rebuild(self) -> None:
        """Recompute every inner node from the leaves, level by level (after loading the leaves)."""
        for level in range(self.depth - 1, -1, -1):
            first, children = 1 << level, self.tree[2 << level : 4 << level]
            self.tree[first : 2 * first] = children[0::2] + children[1::2]


def stratified_draw(tree: SumTree, batch_size: int, generator: torch.Generator) -> Tensor:
    """Slots ``[B]`` drawn in proportion to their leaves, one in each of ``B`` equal slices of the total."""
    total = tree.total
    uniform = torch.rand(batch_size, dtype=total.dtype, device=total.device, generator=generator)
    prefix = (torch.arange(batch_size, device=total.device) + uniform) * (total / batch_size)  # [B]
    return tree.find(prefix)


def importance_weights(tree: SumTree, idx: Tensor, size: int, beta: float) -> Tensor:
    """``w_i = (N · P(i))^−β`` for slots ``idx`` ``[B]`` among ``size`` sampleable ones, divided by the largest."""
    probabilities = tree.get(idx) / tree.total  # [B]
    weights = (size * probabilities) ** -beta
    return (weights / weights.max()).float()


def priorities_of(td_errors: Tensor, eps: float, alpha: float, dtype: torch.dtype) -> Tensor:
    """``p^α = (|δ| + ε)^α`` ``[B]`` from the absolute TD errors ``[B]``."""
    return (td_errors.detach().to(dtype) + eps) ** alpha


class Sampler:
    """How a replay buffer picks a batch's slots; ``bind`` sizes it for the buffer it serves.

    ``removals``: the buffer may make written slots unsampleable again (``removed``), as the frame
    ring does when it overwrites a frame that older stacks read; otherwise every slot below the
    buffer's size is sampleable.
    """

    prioritized = False  # whether draws carry slots and weights, and the learner sends back priorities
    tree: SumTree | None = None  # each slot's sampling weight, where the sampler keeps one

    def bind(self, capacity: int, device: torch.device, removals: bool) -> None:
        raise NotImplementedError

    def added(self, slots: Tensor | slice, sampleable: Tensor | None = None) -> None:
        """Slots ``[N]`` (or a slice of them) were just written; only those ``sampleable`` ``[N]`` marks
        (all, if ``None``) may be drawn."""

    def removed(self, slots: Tensor) -> None:
        """Slots ``[N]`` may no longer be drawn."""
        self.tree.set(slots, torch.zeros(len(slots), dtype=self.tree.tree.dtype, device=slots.device))

    def draw(self, batch_size: int, size: int, generator: torch.Generator, beta: float) -> tuple[Tensor, Tensor | None]:
        """Slots ``[B]`` among ``size`` sampleable ones, and their importance-sampling weights ``[B]`` (or ``None``)."""
        raise NotImplementedError

    def update_priorities(self, indices: Tensor, td_errors: Tensor) -> None:
        raise TypeError("uniform replay keeps no priorities")

    @property
    def nbytes(self) -> int:
        return 0 if self.tree is None else self.tree.tree.numel() * self.tree.tree.element_size()

    def state_dict(self) -> dict[str, Any]:
        """What the sampler keeps besides its tree (whose leaves the storage saves with its slots)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class UniformSampler(Sampler):
    """Every sampleable slot equally likely, with replacement: one ``randint`` over the buffer's size,
    or, for a buffer with removals, one walk of a sum-tree of 0/1 weights (no rejection loop)."""

    def bind(self, capacity: int, device: torch.device, removals: bool) -> None:
        self.tree = SumTree(capacity, device) if removals else None

    def added(self, slots: Tensor | slice, sampleable: Tensor | None = None) -> None:
        if self.tree is not None:  # with no tree, every slot below the size is drawn: nothing to note
            slots = self.tree.slots(slots)
            ones = torch.ones(len(slots), dtype=self.tree.tree.dtype, device=slots.device)
            self.tree.set(slots, ones if sampleable is None else torch.where(sampleable, ones, 0.0))

    def draw(self, batch_size: int, size: int, generator: torch.Generator, beta: float) -> tuple[Tensor, None]:
        if self.tree is None:
            return torch.randint(size, (batch_size,), device=generator.device, generator=generator), None
        total = self.tree.total
        uniform = torch.rand(batch_size, dtype=total.dtype, device=total.device, generator=generator)
        return self.tree.find(uniform * total), None


class PrioritizedSampler(Sampler):
    """Slot ``i`` drawn with probability ``P(i) = p_i^α / Σ_k p_k^α``.

    ``p_i = |δ_i| + ε`` is the last TD error (or distributional loss) the learner sent for ``i``
    (``update_priorities``); new transitions enter with the largest priority so far, so each is
    likely to be replayed soon after it arrives. Sampling is stratified, one draw in each of ``B``
    equal slices of the total, as in the paper. The importance-sampling weights
    ``w_i = (N · P(i))^−β``, divided by the batch's largest, correct the loss for the skew; the
    caller anneals β to 1 over training. With n-step windows the priority belongs to the window's
    first transition, whose Q-value is updated.

    Args:
        alpha: how strongly priorities skew sampling: 0 is uniform, 1 fully proportional (the
            paper's 0.6; Rainbow's 0.5).
        eps: added to every ``|δ|``, so a transition whose error reached 0 stays sampleable.
    """

    prioritized = True

    def __init__(self, alpha: float = 0.6, eps: float = 1e-6) -> None:
        self.alpha = alpha
        self.eps = eps

    def bind(self, capacity: int, device: torch.device, removals: bool) -> None:
        self.tree = SumTree(capacity, device)
        self.max_priority = torch.ones((), dtype=self.tree.tree.dtype, device=device)  # largest p^α so far

    def added(self, slots: Tensor | slice, sampleable: Tensor | None = None) -> None:
        slots = self.tree.slots(slots)
        entry = self.max_priority.expand(len(slots))
        self.tree.set(slots, entry if sampleable is None else torch.where(sampleable, entry, 0.0))

    def draw(self, batch_size: int, size: int, generator: torch.Generator, beta: float) -> tuple[Tensor, Tensor]:
        idx = stratified_draw(self.tree, batch_size, generator)
        return idx, importance_weights(self.tree, idx, size, beta)

    def update_priorities(self, indices: Tensor, td_errors: Tensor) -> None:
        """Set the priorities of slots ``indices`` ``[B]`` from their new ``|δ|`` ``[B]`` (the batch just
        sampled: nothing is pushed between sampling a batch and learning from it)."""
        priorities = priorities_of(td_errors, self.eps, self.alpha, self.tree.tree.dtype)
        self.tree.set(indices, priorities)
        torch.maximum(self.max_priority, priorities.max(), out=self.max_priority)

    def state_dict(self) -> dict[str, Any]:
        return {"max_priority": self.max_priority.cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A state saved by uniform replay has no running maximum: its weights (0 or 1) are priorities 1."""
        self.max_priority.copy_(state.get("max_priority", torch.ones(())))
