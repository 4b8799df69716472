"""The frame-lean replay buffer returns exactly what a plain buffer of whole stacks stores."""

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from lit_dqn.frames import FrameReplayBuffer
from lit_dqn.sampling import PrioritizedSampler


@dataclass
class Stored:
    """One transition as a plain buffer keeps it, with where it sits in its episode."""

    obs: np.ndarray
    action: int
    reward: float
    next_obs: np.ndarray
    terminated: bool
    episode: list[int] = field(default_factory=list)  # ids of its episode's transitions, shared
    step: int = 0


def first_stack(rng: np.random.Generator, stack: int, frame: tuple[int, ...]) -> np.ndarray:
    """An episode's first observation, padded as FrameStackObservation pads it or not at all."""
    new = rng.integers(0, 4, (stack, *frame), dtype=np.uint8)  # few values: equal frames happen by chance
    kind = rng.integers(3)
    if kind == 0:  # padding_type="reset": the reset frame repeated
        return np.repeat(new[-1:], stack, axis=0)
    if kind == 1:  # padding_type="zero"
        new[:-1] = 0
        return new
    if stack > 2:
        new[1:-1] = new[1]  # any stack, with a repeated frame in the middle
    return new


def stream(
    buffer: FrameReplayBuffer, steps: int, num_envs: int, seed: int, end_probability: float = 0.15
) -> tuple[list[Stored], dict[int, int]]:
    """Push a random multi-env stream; return every transition and which transition each slot holds."""
    rng = np.random.default_rng(seed)
    stack, frame = buffer.stack, tuple(buffer.frames.shape[1:])
    obs = [first_stack(rng, stack, frame) for _ in range(num_envs)]
    episodes: list[list[int]] = [[] for _ in range(num_envs)]
    stored: list[Stored] = []
    at_slot: dict[int, int] = {}
    for _ in range(steps):
        envs = np.flatnonzero(rng.random(num_envs) < 0.8)  # some sub-envs spend the step on an autoreset
        if len(envs) == 0:
            continue
        batch = {"obs": [], "actions": [], "rewards": [], "next_obs": [], "terminated": [], "continues": []}
        for env in envs:
            new_frame = rng.integers(0, 4, (1, *frame), dtype=np.uint8)
            next_obs = np.concatenate([obs[env][1:], new_frame])
            ended = rng.random() < end_probability
            terminated = ended and rng.random() < 0.5  # else truncated: next_obs is bootstrapped from
            record = Stored(obs[env], int(rng.integers(6)), float(rng.normal()), next_obs, terminated)
            record.episode, record.step = episodes[env], len(episodes[env])
            episodes[env].append(len(stored))
            stored.append(record)
            values = (obs[env], record.action, record.reward, next_obs, terminated, not ended)
            for key, value in zip(batch, values, strict=True):
                batch[key].append(value)
            if ended:
                episodes[env] = []
                obs[env] = first_stack(rng, stack, frame)
            else:
                obs[env] = next_obs
        first = len(stored) - len(envs)
        continues = batch.pop("continues")
        slots = buffer.push(**{k: np.asarray(v) for k, v in batch.items()}, env_ids=envs, continues=continues)
        for offset, slot in enumerate(slots.tolist()):
            at_slot[slot] = first + offset
    return stored, at_slot


def expected(stored: list[Stored], ids: list[int], n_step: int) -> dict[str, np.ndarray]:
    """What a plain buffer returns for transitions ``ids``: one-step, or n-step windows within the episode."""
    obs, actions, rewards, next_obs, terminated, steps = [], [], [], [], [], []
    for t in ids:
        record = stored[t]
        window = record.episode[record.step : record.step + n_step]
        last = stored[window[-1]]
        obs.append(record.obs)
        actions.append(record.action)
        rewards.append([stored[w].reward for w in window] + [0.0] * (n_step - len(window)))
        next_obs.append(last.next_obs)
        terminated.append(last.terminated)
        steps.append(len(window))
    return {
        "obs": np.stack(obs),
        "actions": np.array(actions),
        "rewards": np.array(rewards, dtype=np.float32),
        "next_obs": np.stack(next_obs),
        "terminated": np.array(terminated),
        "steps": np.array(steps),
    }


@pytest.mark.parametrize(
    ("stack", "num_envs", "n_step", "capacity"),
    [(4, 1, 1, 64), (4, 3, 1, 97), (4, 4, 3, 160), (1, 2, 1, 40), (3, 2, 5, 128)],
)
def test_stacks_are_rebuilt_exactly(stack: int, num_envs: int, n_step: int, capacity: int) -> None:
    buffer = FrameReplayBuffer(capacity, (stack, 2, 3), seed=0, n_step=n_step, num_envs=num_envs)
    stored, at_slot = stream(buffer, steps=4 * capacity // num_envs, num_envs=num_envs, seed=stack + n_step)
    assert buffer.written > 2 * capacity  # the ring wrapped around at least twice
    slots = np.flatnonzero(buffer.sampleable)
    assert len(slots) == len(buffer)
    assert len(slots) >= capacity // 2  # the rest: episode start slots and a few stale transitions
    ids = [at_slot[s] for s in slots.tolist()]
    assert ids and min(ids) >= len(stored) - capacity  # only recent transitions, none from an old lap
    batch = buffer._gather(torch.as_tensor(slots))
    want = expected(stored, ids, n_step)
    np.testing.assert_array_equal(batch.obs.numpy(), want["obs"])
    np.testing.assert_array_equal(batch.next_obs.numpy(), want["next_obs"])
    np.testing.assert_array_equal(batch.actions.numpy(), want["actions"])
    np.testing.assert_array_equal(batch.terminated.numpy(), want["terminated"])
    if n_step == 1:
        np.testing.assert_array_equal(batch.rewards.numpy(), want["rewards"][:, 0])
    else:
        np.testing.assert_array_equal(batch.rewards.numpy(), want["rewards"])
        np.testing.assert_array_equal(batch.steps.numpy(), want["steps"])


def test_the_newest_transitions_are_all_sampleable() -> None:
    """Every transition whose frames are still in the ring can be drawn, the latest one included."""
    buffer = FrameReplayBuffer(64, (4, 2, 2), seed=0, num_envs=2)
    _, at_slot = stream(buffer, steps=200, num_envs=2, seed=3)
    newest = sorted(at_slot.items(), key=lambda item: item[1])[-10:]
    assert all(buffer.sampleable[slot] for slot, _ in newest)


def test_sampling_is_uniform_over_sampleable_transitions() -> None:
    buffer = FrameReplayBuffer(48, (4, 1, 1), seed=1)
    stream(buffer, steps=300, num_envs=1, seed=4)
    counts = np.zeros(buffer.capacity)
    for _ in range(200):
        total = buffer.sampler.tree.total
        idx = buffer.sampler.tree.find(torch.rand(256, dtype=total.dtype, generator=buffer.generator) * total)
        np.add.at(counts, idx.numpy(), 1)
    assert set(np.flatnonzero(counts)) <= set(np.flatnonzero(buffer.sampleable))  # never a start or stale slot
    live = counts[buffer.sampleable]
    expected_count = counts.sum() / len(live)
    assert np.all(np.abs(live - expected_count) < 5 * np.sqrt(expected_count))


def test_a_million_atari_transitions_fit_in_8_gib() -> None:
    """The memory goal, from the per-slot sizes (allocating 7 GB is left to the benchmark)."""
    small = FrameReplayBuffer(1024, (4, 84, 84), num_envs=1)
    per_slot = small.nbytes / small.capacity
    plain_stacks = 4 * 84 * 84  # the stacked-uint8 layout of SB3 and CleanRL, without a next_obs copy
    assert per_slot < 1.02 * 84 * 84 + 64  # one frame plus a few words of links and weights
    assert 1_000_000 * per_slot < 8 * 2**30 < 1_000_000 * plain_stacks


def test_state_dict_round_trip_continues_exactly() -> None:
    buffer = FrameReplayBuffer(80, (4, 2, 2), seed=5, n_step=3, num_envs=2)
    stream(buffer, steps=150, num_envs=2, seed=6)
    state = buffer.state_dict()
    copy = FrameReplayBuffer(80, (4, 2, 2), seed=99, n_step=3, num_envs=2)
    copy.load_state_dict(state)
    for _ in range(3):
        a, b = buffer.sample(16), copy.sample(16)
        for x, y in zip(a, b, strict=True):
            assert (x is None and y is None) or torch.equal(x, y)
    with pytest.raises(ValueError, match=r"data\.buffer_capacity=81"):
        FrameReplayBuffer(81, (4, 2, 2), num_envs=2).load_state_dict(state)


def test_prioritized_frames_sample_by_priority() -> None:
    buffer = FrameReplayBuffer(64, (4, 2, 2), seed=0, num_envs=1, sampler=PrioritizedSampler(alpha=1.0, eps=0.0))
    stream(buffer, steps=150, num_envs=1, seed=7)
    batch = buffer.sample(32, beta=1.0)
    assert batch.weights is not None and bool(buffer.sampleable[batch.indices.numpy()].all())
    slots = torch.as_tensor(np.flatnonzero(buffer.sampleable))
    errors = torch.zeros(len(slots), dtype=torch.float64)
    errors[0] = 3.0  # all priority on one transition
    buffer.sampler.update_priorities(slots, errors)
    assert torch.equal(buffer.sample(32).indices, slots[:1].expand(32))
    stream(buffer, steps=1, num_envs=1, seed=8)  # a new transition enters at the largest priority, 3
    assert buffer.sampler.tree.total.item() == pytest.approx(6.0)


def test_saving_hands_over_the_cpu_storage_without_copying_it() -> None:
    """A multi-GB ring must not double RAM when saved: its state shares the buffer's memory, and
    ``torch.save`` streams it from there into the checkpoint file."""
    buffer = FrameReplayBuffer(64, (4, 2, 2), seed=0)
    stream(buffer, steps=40, num_envs=1, seed=9)
    state = buffer.state_dict()
    assert state["storage"]["frames"].data_ptr() == buffer.frames.data_ptr()
    assert state["host"]["oldest"].data_ptr() == buffer.oldest.ctypes.data
