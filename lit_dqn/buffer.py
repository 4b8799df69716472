"""A fixed-capacity replay buffer in preallocated tensors, in the style of Stable-Baselines3's."""

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from lit_dqn.sampling import Sampler, UniformSampler, restore_generator


class Transitions(NamedTuple):
    """A batch of transitions; every field has the batch size as its first dimension.

    One-step (``n_step=1``): ``rewards`` is ``[B]`` and ``steps`` is ``None``. n-step: ``rewards`` is
    ``[B, n]``, the rewards of up to ``n`` consecutive steps of one episode (zero after the row's
    ``steps``), and ``next_obs``/``terminated`` belong to the last of those steps.
    """

    obs: Tensor  # [B, *obs_shape] in the buffer's obs_dtype (float32, or uint8 / bool frames)
    actions: Tensor  # [B] int64
    rewards: Tensor  # [B] or [B, n] float32
    next_obs: Tensor  # [B, *obs_shape] like obs
    terminated: Tensor  # [B] bool
    steps: Tensor | None = None  # [B] int64 in 1..n: rewards summed before bootstrapping
    indices: Tensor | None = None  # [B] int64 buffer slots, for prioritized replay's priority updates
    weights: Tensor | None = None  # [B] float32 importance-sampling weights of prioritized replay
    next_mask: Tensor | None = None  # [B, n_actions] bool: the actions valid in next_obs (action masks only)


def n_step_window(rewards: Tensor, next_index: Tensor, idx: Tensor, n_step: int) -> tuple[Tensor, Tensor, Tensor]:
    """Follow each start slot's ``next_index`` links for up to ``n_step - 1`` steps of its episode.

    Returns the window's rewards ``[B, n]`` (zero after its end), the slot of its last step ``[B]``
    (whose ``next_obs`` and ``terminated`` the target bootstraps from) and its length ``[B]`` in 1..n.
    """
    batch_size = idx.shape[0]
    window = rewards.new_zeros(batch_size, n_step)  # [B, n]
    window[:, 0] = rewards[idx]
    last = idx  # [B] slot of each window's latest step
    going = torch.ones(batch_size, dtype=torch.bool, device=idx.device)
    steps = torch.ones(batch_size, dtype=torch.long, device=idx.device)
    for k in range(1, n_step):
        following = next_index[last]
        going &= following >= 0
        last = torch.where(going, following, last)
        window[:, k] = torch.where(going, rewards[last], 0.0)
        steps += going
    return window, last, steps


class Replay(ABC):
    """The one replay interface: a storage layout (a subclass) and a ``sampler`` (``sampling``) chosen
    independently.

    Every layout keeps each transition's action, reward, ``terminated`` flag and, with action masks,
    the actions valid in its ``next_obs`` in preallocated columns on ``device``; it says how a slot's
    observations are stored (``_obs``, ``_next_obs``) and which slots hold transitions. Drawing a
    batch is shared: the sampler picks slots with the buffer's own ``torch.Generator`` (seeded, so
    replay is reproducible apart from any other randomness), then n-step windows follow
    ``next_index`` links.
    """

    def __init__(
        self,
        capacity: int,
        device: torch.device | str,
        seed: int | None,
        n_step: int,
        action_mask_size: int | None,
        sampler: Sampler | None,
        removals: bool,
    ) -> None:
        self.capacity = capacity
        self.n_step = n_step
        self.device = torch.device(device)
        self.actions = torch.zeros(capacity, dtype=torch.long, device=self.device)
        self.rewards = torch.zeros(capacity, dtype=torch.float32, device=self.device)
        self.terminated = torch.zeros(capacity, dtype=torch.bool, device=self.device)
        self.next_mask = (  # [capacity, n_actions]: the actions valid in each transition's next_obs
            torch.ones((capacity, action_mask_size), dtype=torch.bool, device=self.device) if action_mask_size else None
        )
        self.next_index: Tensor | None = None  # [capacity] the same episode's next transition (-1: none yet)
        self.size = 0  # sampleable transitions
        self.generator = torch.Generator(device=self.device)
        if seed is not None:
            self.generator.manual_seed(seed)
        self.sampler = sampler if sampler is not None else UniformSampler()
        # ``removals``: whether slots below the size can stop being transitions (the frame ring's).
        self.sampler.bind(capacity, self.device, removals=removals)

    def __len__(self) -> int:
        return self.size

    @abstractmethod
    def push(
        self,
        obs: Any,
        actions: Any,
        rewards: Any,
        next_obs: Any,
        terminated: Any,
        env_ids: Any = None,
        continues: Any = None,
        next_masks: Any = None,
    ) -> Tensor | slice:
        """Append ``N`` transitions; return the slots they went to."""

    @abstractmethod
    def end_episodes(self) -> None:
        """Forget every env's open episode (a resumed run starts fresh ones)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything exact resume needs."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> bool:
        """Restore what ``state_dict`` saved. False where the sampling stream was saved on another kind
        of device and starts anew from a seed taken from it (``sampling.restore_generator``)."""

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Bytes held for the whole capacity."""

    @abstractmethod
    def _obs(self, slots: Tensor) -> Tensor:
        """The ``obs`` of the transitions at ``slots`` ``[B]``: ``[B, *obs_shape]``."""

    @abstractmethod
    def _next_obs(self, slots: Tensor) -> Tensor:
        """The ``next_obs`` of the transitions at ``slots`` ``[B]``: ``[B, *obs_shape]``."""

    def sample(self, batch_size: int, beta: float = 1.0) -> Transitions:
        """Draw ``batch_size`` sampleable transitions with replacement (n-step windows if ``n_step > 1``),
        as the sampler picks them; a prioritized draw carries its slots and importance-sampling
        weights (exponent ``beta``)."""
        if batch_size > self.size:
            raise ValueError(f"cannot sample {batch_size} transitions from a buffer holding {self.size}")
        idx, weights = self.sampler.draw(batch_size, self.size, self.generator, beta)
        batch = self._gather(idx)
        return batch if weights is None else batch._replace(indices=idx, weights=weights)

    def _gather(self, idx: Tensor) -> Transitions:
        """The transitions (or n-step windows) starting at slots ``idx`` ``[B]``."""
        if self.n_step == 1:
            rewards, last, steps = self.rewards[idx], idx, None
        else:
            rewards, last, steps = n_step_window(self.rewards, self.next_index, idx, self.n_step)
        obs, next_obs = self._obs(idx), self._next_obs(last)
        batch = Transitions(obs, self.actions[idx], rewards, next_obs, self.terminated[last], steps)
        return batch if self.next_mask is None else batch._replace(next_mask=self.next_mask[last])


class ReplayBuffer(Replay):
    """Ring buffer of ``(obs, action, reward, next_obs, terminated)`` transitions.

    Storage is allocated once, on ``device``, so pushing and sampling are a few indexed copies with
    no Python containers of tensors. When full, each push overwrites the oldest transitions.
    ``sampler`` picks each batch's slots (``sampling.UniformSampler``, the default, or
    ``sampling.PrioritizedSampler``), drawn from the buffer's own ``torch.Generator`` so that a
    seed makes it reproducible independently of any other randomness.

    With ``n_step > 1`` each transition also stores where the same env's next transition of the same
    episode went (``next_index``, -1 if none yet), and sampling follows those links for up to
    ``n_step - 1`` steps: the n-step return is computed at sample time from one-step storage, so
    the stored data never depends on ``n_step`` or ``gamma``. Links only point to newer slots, which
    the ring overwrites after the slot linking to them, so a link never leads to another episode.

    With ``action_mask_size=n_actions`` each transition also keeps which actions are valid in its
    ``next_obs`` (``next_mask``), so the TD target's max runs over those only.
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
        action_mask_size: int | None = None,
        sampler: Sampler | None = None,
    ) -> None:
        if capacity <= 0:
            raise ValueError(f"ReplayBuffer capacity must be > 0, got {capacity}")
        if n_step > 1 and capacity < 2 * num_envs:
            raise ValueError(f"an n-step buffer needs capacity >= 2 * num_envs = {2 * num_envs}, got {capacity}")
        # Every slot below the size is a transition: the sampler never has to forget one.
        super().__init__(capacity, device, seed, n_step, action_mask_size, sampler, removals=False)
        # Observations keep the env's dtype where it is compact (uint8 or bool frames: 4× or more
        # smaller than float32); the Q-network makes them float on the device.
        self.obs = torch.zeros((capacity, *obs_shape), dtype=obs_dtype, device=self.device)
        self.next_obs = torch.zeros_like(self.obs)
        if n_step > 1:
            self.next_index = torch.full((capacity,), -1, dtype=torch.long, device=self.device)
            self.tail = np.full(num_envs, -1, dtype=np.int64)  # per env: slot of its open episode's last step
        self.pos = 0  # next slot to write

    @property
    def nbytes(self) -> int:
        """Bytes held by the storage tensors and the sampler: capacity × transition size, whatever is filled."""
        return sum(t.numel() * t.element_size() for t in self._storage().values()) + self.sampler.nbytes

    def push(
        self,
        obs: Any,
        actions: Any,
        rewards: Any,
        next_obs: Any,
        terminated: Any,
        env_ids: Any = None,
        continues: Any = None,
        next_masks: Any = None,
    ) -> Tensor | slice:
        """Append a batch of ``N`` transitions (tensors or arrays with leading dimension ``N``); return
        the slots they went to.

        For an n-step buffer, ``env_ids`` ``[N]`` says which sub-env each transition came from and
        ``continues`` ``[N]`` whether its episode goes on (neither terminated nor truncated), so the
        next push from that env links to it. They default to envs ``0..N-1`` and "goes on".
        ``next_masks`` ``[N, n_actions]``: the actions valid in each ``next_obs`` (a masked buffer only).
        """
        actions = torch.as_tensor(actions, device=self.device)
        n = actions.shape[0]
        if n > self.capacity:
            raise ValueError(f"cannot push {n} transitions into a buffer of capacity {self.capacity}")
        if self.n_step > 1 and n > len(self.tail):
            raise ValueError(f"an n-step push takes one transition per env ({len(self.tail)} envs), got {n}")
        if self.pos + n <= self.capacity:
            idx: slice | Tensor = slice(self.pos, self.pos + n)
        else:
            idx = torch.arange(self.pos, self.pos + n, device=self.device) % self.capacity
        self.obs[idx] = torch.as_tensor(obs, dtype=self.obs.dtype, device=self.device)
        self.actions[idx] = actions.long()
        self.rewards[idx] = torch.as_tensor(rewards, dtype=torch.float32, device=self.device)
        self.next_obs[idx] = torch.as_tensor(next_obs, dtype=self.obs.dtype, device=self.device)
        self.terminated[idx] = torch.as_tensor(terminated, dtype=torch.bool, device=self.device)
        if self.next_mask is not None:
            self.next_mask[idx] = torch.as_tensor(next_masks, dtype=torch.bool, device=self.device)
        if self.n_step > 1:
            self.next_index[idx] = -1
            self._link(np.arange(self.pos, self.pos + n) % self.capacity, env_ids, continues)
        self.sampler.added(idx)
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)
        return idx

    def _link(self, slots: np.ndarray, env_ids: Any, continues: Any) -> None:
        """Point each env's previous transition at its new one, unless that episode had ended.

        The bookkeeping (``tail``) lives on the host, so on a GPU the links cost one small copy and
        no sync (indexing a device tensor with a mask would sync to count the mask).
        """
        env_ids = np.arange(len(slots)) if env_ids is None else np.asarray(env_ids)
        continues = np.ones(len(slots), dtype=bool) if continues is None else np.asarray(continues, dtype=bool)
        previous = self.tail[env_ids]  # [N] the env's last slot, -1 if its episode ended there
        linked = previous >= 0
        if linked.any():
            self.next_index[torch.as_tensor(previous[linked], device=self.device)] = torch.as_tensor(
                slots[linked], device=self.device
            )
        self.tail[env_ids] = np.where(continues, slots, -1)

    def end_episodes(self) -> None:
        """Forget every env's open episode (a resumed run starts fresh ones): nothing links to it."""
        if self.n_step > 1:
            self.tail.fill(-1)

    def _obs(self, slots: Tensor) -> Tensor:
        return self.obs[slots]

    def _next_obs(self, slots: Tensor) -> Tensor:
        return self.next_obs[slots]

    def _storage(self) -> dict[str, Tensor]:
        storage = {
            "obs": self.obs,
            "actions": self.actions,
            "rewards": self.rewards,
            "next_obs": self.next_obs,
            "terminated": self.terminated,
        }
        if self.n_step > 1:
            storage["next_index"] = self.next_index
        if self.next_mask is not None:
            storage["next_mask"] = self.next_mask
        return storage

    def state_dict(self) -> dict[str, Any]:
        """Filled contents, write position and sampling RNG state, for exact resume (see ``_snapshot``).

        The per-env open episodes (``tail``) are not saved: a resumed run starts new episodes. A
        prioritized sampler's priorities are kept for the filled slots (8 bytes each).
        """
        state = {
            "capacity": self.capacity,
            "pos": self.pos,
            "size": self.size,
            "generator": self.generator.get_state(),
            "storage": {k: _snapshot(v, self.size) for k, v in self._storage().items()},
            **self.sampler.state_dict(),
        }
        if self.sampler.tree is not None:
            tree = self.sampler.tree
            state["priorities"] = tree.tree[tree.leaves : tree.leaves + self.size].cpu().clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> bool:
        """Restore a saved buffer. One saved with another ``n_step`` loads too: links are dropped,
        or missing ones read as "no next step", so old transitions sample as one-step windows. One
        saved with uniform replay loads into a prioritized sampler with every slot at priority 1."""
        if state["capacity"] != self.capacity:
            raise ValueError(
                f"replay buffer holds {state['capacity']} transitions; "
                f"data.buffer_capacity={self.capacity} must match it to resume"
            )
        for key, tensor in self._storage().items():
            if key == "next_index" and key not in state["storage"]:
                tensor.fill_(-1)  # a buffer saved one-step: no links
            elif key == "next_mask" and key not in state["storage"]:
                tensor.fill_(True)  # a buffer saved without masks: every action counted valid, as it was
            else:
                tensor[: state["size"]] = state["storage"][key][: state["size"]].to(self.device)
        self.end_episodes()
        self.pos, self.size = state["pos"], state["size"]
        continued = restore_generator(self.generator, state["generator"])
        if self.sampler.tree is not None:
            tree = self.sampler.tree
            leaves = tree.tree[tree.leaves :]
            leaves.zero_()
            leaves[: self.size] = state["priorities"].to(self.device) if "priorities" in state else 1.0
            tree.rebuild()
        self.sampler.load_state_dict(state)
        return continued


def _snapshot(storage: Tensor, size: int) -> Tensor:
    """What a checkpoint keeps of a storage tensor holding ``size`` filled rows.

    A full CPU buffer is handed over as it is, not copied: ``torch.save`` then streams it from the
    buffer's own memory into the file, so saving a multi-GB buffer does not double RAM. A partly
    filled one is cut to its rows (a copy of at most what it holds); a device buffer is copied to
    the host, which it must be anyway.
    """
    if storage.device.type == "cpu" and size == storage.shape[0]:
        return storage
    return storage[:size].cpu().clone()
