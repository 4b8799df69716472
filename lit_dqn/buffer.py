"""A fixed-capacity replay buffer in preallocated tensors, in the style of Stable-Baselines3's."""

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor


class Transitions(NamedTuple):
    """A batch of transitions; every field has the batch size as its first dimension."""

    obs: Tensor  # [B, *obs_shape] float32
    actions: Tensor  # [B] int64
    rewards: Tensor  # [B] float32
    next_obs: Tensor  # [B, *obs_shape] float32
    terminated: Tensor  # [B] bool


class ReplayBuffer:
    """Ring buffer of ``(obs, action, reward, next_obs, terminated)`` transitions.

    Storage is allocated once, on ``device``, so pushing and sampling are a few indexed copies with
    no Python containers of tensors. When full, each push overwrites the oldest transitions.
    Sampling is uniform with replacement, drawn from the buffer's own ``torch.Generator`` so that a
    seed makes it reproducible independently of any other randomness.
    """

    def __init__(
        self,
        capacity: int,
        obs_shape: Sequence[int],
        device: torch.device | str = "cpu",
        seed: int | None = None,
    ) -> None:
        if capacity <= 0:
            raise ValueError(f"ReplayBuffer capacity must be > 0, got {capacity}")
        self.capacity = capacity
        self.device = torch.device(device)
        self.obs = torch.zeros((capacity, *obs_shape), dtype=torch.float32, device=self.device)
        self.next_obs = torch.zeros_like(self.obs)
        self.actions = torch.zeros(capacity, dtype=torch.long, device=self.device)
        self.rewards = torch.zeros(capacity, dtype=torch.float32, device=self.device)
        self.terminated = torch.zeros(capacity, dtype=torch.bool, device=self.device)
        self.pos = 0  # next slot to write
        self.size = 0
        self.generator = torch.Generator(device=self.device)
        if seed is not None:
            self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        """Bytes held by the storage tensors: capacity × transition size, whatever is filled."""
        return sum(t.numel() * t.element_size() for t in self._storage().values())

    def push(self, obs: Any, actions: Any, rewards: Any, next_obs: Any, terminated: Any) -> None:
        """Append a batch of ``N`` transitions (tensors or arrays with leading dimension ``N``)."""
        actions = torch.as_tensor(actions, device=self.device)
        n = actions.shape[0]
        if n > self.capacity:
            raise ValueError(f"cannot push {n} transitions into a buffer of capacity {self.capacity}")
        if self.pos + n <= self.capacity:
            idx: slice | Tensor = slice(self.pos, self.pos + n)
        else:
            idx = torch.arange(self.pos, self.pos + n, device=self.device) % self.capacity
        self.obs[idx] = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        self.actions[idx] = actions.long()
        self.rewards[idx] = torch.as_tensor(rewards, dtype=torch.float32, device=self.device)
        self.next_obs[idx] = torch.as_tensor(next_obs, dtype=torch.float32, device=self.device)
        self.terminated[idx] = torch.as_tensor(terminated, dtype=torch.bool, device=self.device)
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int) -> Transitions:
        """Draw ``batch_size`` transitions uniformly, with replacement."""
        if batch_size > self.size:
            raise ValueError(f"cannot sample {batch_size} transitions from a buffer holding {self.size}")
        idx = torch.randint(self.size, (batch_size,), device=self.device, generator=self.generator)
        return Transitions(
            self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.terminated[idx]
        )

    def _storage(self) -> dict[str, Tensor]:
        return {
            "obs": self.obs,
            "actions": self.actions,
            "rewards": self.rewards,
            "next_obs": self.next_obs,
            "terminated": self.terminated,
        }

    def state_dict(self) -> dict[str, Any]:
        """Filled contents, write position and sampling RNG state, for exact resume."""
        return {
            "capacity": self.capacity,
            "pos": self.pos,
            "size": self.size,
            "generator": self.generator.get_state(),
            "storage": {k: v[: self.size].cpu().clone() for k, v in self._storage().items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(
                f"replay buffer capacity mismatch: checkpoint has {state['capacity']}, config has {self.capacity}"
            )
        for key, value in state["storage"].items():
            self._storage()[key][: state["size"]] = value.to(self.device)
        self.pos, self.size = state["pos"], state["size"]
        self.generator.set_state(state["generator"])
