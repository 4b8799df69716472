"""Prioritized experience replay (Schaul et al., 2016, proportional variant) on a tensor sum-tree."""

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lit_dqn.buffer import ReplayBuffer, Transitions


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


class PrioritizedReplayBuffer(ReplayBuffer):
    """A replay buffer that samples transition ``i`` with probability ``P(i) = p_i^α / Σ_k p_k^α``.

    ``p_i = |δ_i| + ε`` is the last TD error seen for ``i`` (``update_priorities``); new transitions
    enter with the largest priority so far, so each is likely to be replayed soon after it arrives.
    Sampling is stratified, one draw in each of ``B`` equal slices of the total, as in the paper. The
    importance-sampling weights ``w_i = (N · P(i))^−β``, divided by the batch's largest, correct the
    loss for the skew; β is annealed to 1 by the caller over training (``sample(..., beta)``). With
    ``n_step > 1`` the priority belongs to the window's first transition, whose Q-value is updated.

    Args mirror ``ReplayBuffer``, plus ``alpha`` (0: uniform, 1: fully proportional; the paper's 0.6)
    and ``eps`` (keeps every stored transition sampleable once its error is 0).
    """

    def __init__(
        self,
        capacity: int,
        obs_shape: Sequence[int],
        device: torch.device | str = "cpu",
        seed: int | None = None,
        n_step: int = 1,
        num_envs: int = 1,
        obs_dtype: torch.dtype = torch.float32,
        alpha: float = 0.6,
        eps: float = 1e-6,
        action_mask_size: int | None = None,
    ) -> None:
        super().__init__(
            capacity,
            obs_shape,
            device=device,
            seed=seed,
            n_step=n_step,
            num_envs=num_envs,
            obs_dtype=obs_dtype,
            action_mask_size=action_mask_size,
        )
        self.alpha = alpha
        self.eps = eps
        self.tree = SumTree(capacity, self.device)
        self.max_priority = torch.ones((), dtype=self.tree.tree.dtype, device=self.device)  # largest p^α so far

    @property
    def nbytes(self) -> int:
        return super().nbytes + self.tree.tree.numel() * self.tree.tree.element_size()

    def push(self, obs: Any, actions: Any, rewards: Any, next_obs: Any, terminated: Any, **links: Any) -> None:
        n = len(actions)
        slots = torch.arange(self.pos, self.pos + n, device=self.device) % self.capacity
        super().push(obs, actions, rewards, next_obs, terminated, **links)
        self.tree.set(slots, self.max_priority.expand(n))

    def sample(self, batch_size: int, beta: float = 1.0) -> Transitions:
        """Draw ``batch_size`` transitions by priority; they carry their slots and IS weights."""
        self._check_can_sample(batch_size)
        idx = stratified_draw(self.tree, batch_size, self.generator)
        weights = importance_weights(self.tree, idx, self.size, beta)
        return self._gather(idx)._replace(indices=idx, weights=weights)

    def update_priorities(self, indices: Tensor, td_errors: Tensor) -> None:
        """Set the priorities of slots ``indices`` ``[B]`` from their new ``|δ|`` ``[B]``."""
        priorities = priorities_of(td_errors, self.eps, self.alpha, self.tree.tree.dtype)
        self.tree.set(indices, priorities)
        torch.maximum(self.max_priority, priorities.max(), out=self.max_priority)

    def state_dict(self) -> dict[str, Any]:
        """The uniform buffer's state plus the priorities of the filled slots and the running maximum."""
        state = super().state_dict()
        state["priorities"] = self.tree.tree[self.tree.leaves : self.tree.leaves + self.size].cpu().clone()  # 8 B each
        state["max_priority"] = self.max_priority.cpu().clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a saved buffer; one saved without priorities (uniform) gets every slot at priority 1."""
        super().load_state_dict(state)
        leaves = self.tree.tree[self.tree.leaves :]
        leaves.zero_()
        if "priorities" in state:
            leaves[: self.size] = state["priorities"].to(self.device)
            self.max_priority.copy_(state["max_priority"])
        else:
            leaves[: self.size] = 1.0
            self.max_priority.fill_(1.0)
        self.tree.rebuild()
