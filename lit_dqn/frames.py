"""Replay for stacked frames (Atari): every frame stored once, stacks rebuilt when a batch is sampled."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lit_dqn.buffer import Replay
from lit_dqn.sampling import Sampler, restore_generator


class FrameReplayBuffer(Replay):
    """A replay buffer for observations that stack the last ``K`` frames on their first axis.

    A plain buffer keeps ``obs`` and ``next_obs``: ``2K`` frames per transition (8 for Atari's four-frame
    stacks, 56 KB), although ``K - 1`` frames of ``next_obs`` are ``obs``'s and ``obs``'s are the
    previous transition's. Here each slot of one ring holds **one** frame, and a stack is a walk back
    along ``prev`` links:

    - a *transition slot* holds the newest frame of its ``next_obs`` with the action, reward and
      ``terminated`` flag; ``next_obs`` is the frames of the ``K`` slots ending at it, ``obs`` the
      ``K`` before that;
    - an episode's first stack is written as *start slots* (never sampled): a leading run of equal
      frames, such as ``FrameStackObservation``'s padding with the reset frame, takes one slot that
      links to itself, so walking past it repeats it exactly as the padding did.

    A transition costs one frame plus one start slot per episode, and the stacks come back exactly
    as the env gave them, across episode starts, truncations, ring wrap-around, several envs and
    n-step windows (``tests/test_frames.py`` checks this against a plain buffer). ``capacity``
    counts slots, so a ring of short episodes holds slightly fewer transitions.

    When the ring overwrites a slot, the transitions whose stacks read it stop being sampleable:
    the ring tells its ``sampler`` (``sampling.UniformSampler``, the default, or
    ``sampling.PrioritizedSampler``), whose sum-tree then gives those slots, and start slots, weight 0,
    so a draw is one vectorised tree walk with no rejection loop.
    Bookkeeping that decides which slots exist (links, write order) also lives on the host, in
    NumPy, so a push never waits for the device.
    """

    def __init__(
        self,
        capacity: int,
        obs_shape: Sequence[int],
        device: torch.device | str = "cpu",
        seed: int | None = None,
        n_step: int = 1,
        num_envs: int = 1,
        obs_dtype: torch.dtype = torch.uint8,
        action_mask_size: int | None = None,
        sampler: Sampler | None = None,
    ) -> None:
        self.stack = int(obs_shape[0])  # K frames per observation
        if capacity < 4 * num_envs * (self.stack + 1):
            raise ValueError(
                f"a frame buffer needs capacity >= 4 * num_envs * (frames per stack + 1) = "
                f"{4 * num_envs * (self.stack + 1)}, got {capacity}"
            )
        # The sampler's tree gives start slots and stale transitions weight 0.
        super().__init__(capacity, device, seed, n_step, action_mask_size, sampler, removals=True)
        self.frames = torch.zeros((capacity, *obs_shape[1:]), dtype=obs_dtype, device=self.device)
        self.prev = torch.arange(capacity, device=self.device)  # slot of the frame before this one
        self.next_index = torch.full((capacity,), -1, dtype=torch.long, device=self.device)  # next transition
        # Host bookkeeping, one entry per slot.
        self.host_prev = np.arange(capacity, dtype=np.int64)
        self.serial = np.full(capacity, -1, dtype=np.int64)  # write count when the slot was written
        self.oldest = np.full(capacity, -1, dtype=np.int64)  # serial of the earliest slot its stacks read
        self.sampleable = np.zeros(capacity, dtype=bool)
        self.head = np.full(num_envs, -1, dtype=np.int64)  # per env: slot of its open episode's newest frame
        self.last = np.full(num_envs, -1, dtype=np.int64)  # per env: its open episode's latest transition
        self.written = 0  # slots written so far; the next goes to ``written % capacity``
        self.span = 0  # the most slots any stored transition's stacks reach back

    @property
    def pos(self) -> int:
        return self.written % self.capacity

    @property
    def nbytes(self) -> int:
        """Bytes held for the whole capacity, on the device and on the host."""
        device = sum(t.numel() * t.element_size() for t in self._tensors().values())
        host = sum(a.nbytes for a in self._arrays().values())
        return device + host

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
    ) -> Tensor:
        """Append ``N`` transitions (one per env at most); return the slots they went to ``[N]``.

        ``obs`` and ``next_obs`` are ``[N, K, *frame]``; ``env_ids`` and ``continues`` as in
        ``ReplayBuffer.push``: which env each transition came from and whether its episode goes on;
        ``next_masks`` too.
        """
        obs, next_obs = np.asarray(obs), np.asarray(next_obs)
        n = len(obs)
        if n == 0:  # every sub-env spent the step on its autoreset
            return torch.zeros(0, dtype=torch.long, device=self.device)
        env_ids = np.arange(n) if env_ids is None else np.asarray(env_ids)
        continues = np.ones(n, dtype=bool) if continues is None else np.asarray(continues, dtype=bool)
        if n > len(self.head):
            raise ValueError(f"a frame buffer push takes one transition per env ({len(self.head)} envs), got {n}")
        frames: list[np.ndarray] = []
        slots: list[int] = []
        transitions = np.empty(n, dtype=np.int64)

        def write(frame: np.ndarray, prev: int | None) -> int:
            slot = self.written % self.capacity
            self._forget(slot)
            self.host_prev[slot] = slot if prev is None else prev
            self.serial[slot] = self.written
            self.written += 1
            frames.append(frame)
            slots.append(slot)
            return slot

        for i, env in enumerate(env_ids):
            head = self.head[env]
            if head < 0:  # a new episode: its first stack, a leading run of equal frames once
                stack = obs[i]
                run = 1
                while run < self.stack and np.array_equal(stack[run], stack[0]):
                    run += 1
                head = write(stack[0], None)
                for k in range(run, self.stack):
                    head = write(stack[k], head)
            slot = write(next_obs[i][-1], head)
            transitions[i] = slot
            walk = slot
            for _ in range(self.stack):
                walk = self.host_prev[walk]
            self.oldest[slot] = self.serial[walk]
            self.span = max(self.span, self.written - 1 - int(self.oldest[slot]))
            if self.last[env] >= 0:
                self.next_index[int(self.last[env])] = slot
            self.head[env] = slot if continues[i] else -1
            self.last[env] = slot if continues[i] else -1

        device_slots = torch.as_tensor(np.asarray(slots), device=self.device)
        at = torch.as_tensor(transitions, device=self.device)
        self.frames[device_slots] = torch.as_tensor(np.stack(frames), device=self.device).to(self.frames.dtype)
        self.prev[device_slots] = torch.as_tensor(self.host_prev[slots], device=self.device)
        self.next_index[device_slots] = -1
        self.actions[at] = torch.as_tensor(actions, device=self.device).long()
        self.rewards[at] = torch.as_tensor(rewards, dtype=torch.float32, device=self.device)
        self.terminated[at] = torch.as_tensor(terminated, dtype=torch.bool, device=self.device)
        if self.next_mask is not None:
            self.next_mask[at] = torch.as_tensor(next_masks, dtype=torch.bool, device=self.device)
        is_transition = torch.as_tensor(np.isin(slots, transitions), device=self.device)
        self.sampleable[transitions] = True
        self.size += n
        self.sampler.added(device_slots, sampleable=is_transition)  # start slots are never drawn
        self._drop_stale()
        return at

    def _forget(self, slot: int) -> None:
        """The slot is about to be overwritten: it stops being a sampleable transition."""
        if self.sampleable[slot]:
            self.sampleable[slot] = False
            self.size -= 1

    def _drop_stale(self) -> None:
        """Stop sampling transitions whose stacks read a slot the ring has overwritten.

        Only slots within ``span`` of the oldest can read one, so only those are checked.
        """
        gone = self.written - self.capacity  # serials below this are overwritten
        if gone <= 0:
            return
        window = np.arange(gone, gone + self.span + 1) % self.capacity
        stale = window[self.sampleable[window] & (self.oldest[window] < gone)]
        if len(stale):
            self.sampleable[stale] = False
            self.size -= len(stale)
            self.sampler.removed(torch.as_tensor(stale, device=self.device))

    def end_episodes(self) -> None:
        """Forget every env's open episode (a resumed run starts fresh ones)."""
        self.head.fill(-1)
        self.last.fill(-1)

    def _stacks(self, newest: Tensor) -> Tensor:
        """The ``K``-frame stacks ending at slots ``newest`` ``[B]``: ``[B, K, *frame]``, oldest frame first."""
        walk = [newest]
        for _ in range(self.stack - 1):
            walk.append(self.prev[walk[-1]])
        slots = torch.stack(walk[::-1], dim=1)  # [B, K]
        return self.frames.index_select(0, slots.flatten()).view(*slots.shape, *self.frames.shape[1:])

    def _obs(self, slots: Tensor) -> Tensor:
        return self._stacks(self.prev[slots])  # the stack one frame before the transition's newest

    def _next_obs(self, slots: Tensor) -> Tensor:
        return self._stacks(slots)

    def _tensors(self) -> dict[str, Tensor]:
        tensors = {
            "frames": self.frames,
            "prev": self.prev,
            "actions": self.actions,
            "rewards": self.rewards,
            "terminated": self.terminated,
            "next_index": self.next_index,
            "weights": self.sampler.tree.tree,
        }
        if self.next_mask is not None:
            tensors["next_mask"] = self.next_mask
        return tensors

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = (self.host_prev, self.serial, self.oldest, self.sampleable)
        return dict(zip(("host_prev", "serial", "oldest", "sampleable"), arrays, strict=True))

    def state_dict(self) -> dict[str, Any]:
        """The whole ring, write count and sampling RNG, for exact resume (open episodes are not kept).

        Tensors on the CPU are handed over as they are, not copied, so saving a multi-GB buffer
        streams it from its own memory into the checkpoint file instead of doubling RAM first.
        """
        return {
            "capacity": self.capacity,
            "stack": self.stack,
            "written": self.written,
            "span": self.span,
            "size": self.size,
            "generator": self.generator.get_state(),
            "storage": {k: v.cpu() for k, v in self._tensors().items()},
            "host": {k: torch.from_numpy(v) for k, v in self._arrays().items()},
            **self.sampler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> bool:
        if state.get("stack") != self.stack or state["capacity"] != self.capacity:
            raise ValueError(
                f"replay buffer holds {state['capacity']} frame slots of {state.get('stack')}-frame stacks; "
                f"data.buffer_capacity={self.capacity} and the env's {self.stack}-frame stacks must match it to resume"
            )
        for key, tensor in self._tensors().items():
            if key == "next_mask" and key not in state["storage"]:
                tensor.fill_(True)  # saved without masks: every action counted valid, as it was
            else:
                tensor.copy_(state["storage"][key])
        for key, array in self._arrays().items():
            array[:] = state["host"][key].numpy()
        self.written, self.span, self.size = state["written"], state["span"], state["size"]
        continued = restore_generator(self.generator, state["generator"])
        self.sampler.load_state_dict(state)
        self.end_episodes()
        return continued
