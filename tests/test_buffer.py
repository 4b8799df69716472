import pytest
import torch

from lit_dqn import ReplayBuffer
from lit_dqn.sampling import PrioritizedSampler, UniformSampler


def push_range(buffer: ReplayBuffer, start: int, n: int) -> None:
    """Push ``n`` transitions whose every field encodes its index ``start + i``."""
    ids = torch.arange(start, start + n, dtype=torch.float32)
    buffer.push(ids[:, None].repeat(1, 3), ids.long(), ids, -ids[:, None].repeat(1, 3), ids.long() % 2 == 1)


def test_push_fills_in_order_and_counts() -> None:
    buffer = ReplayBuffer(5, (3,))
    push_range(buffer, 0, 3)
    assert len(buffer) == 3
    assert buffer.pos == 3
    assert buffer.rewards[:3].tolist() == [0.0, 1.0, 2.0]
    assert buffer.terminated[:3].tolist() == [False, True, False]
    assert torch.equal(buffer.next_obs[:3], -buffer.obs[:3])


def test_overwrites_oldest_at_capacity() -> None:
    buffer = ReplayBuffer(5, (3,))
    push_range(buffer, 0, 4)
    push_range(buffer, 4, 3)  # wraps: ids 5 and 6 replace 0 and 1
    assert len(buffer) == 5
    assert buffer.pos == 2
    assert buffer.rewards.tolist() == [5.0, 6.0, 2.0, 3.0, 4.0]
    assert buffer.actions.tolist() == [5, 6, 2, 3, 4]
    assert buffer.obs[:, 0].tolist() == [5.0, 6.0, 2.0, 3.0, 4.0]
    push_range(buffer, 7, 1)
    assert buffer.pos == 3 and buffer.rewards[2].item() == 7.0


def test_sample_shapes_dtypes_device_and_consistency() -> None:
    buffer = ReplayBuffer(100, (3,), device="cpu", seed=0)
    push_range(buffer, 0, 50)
    batch = buffer.sample(32)
    assert batch.obs.shape == (32, 3) and batch.next_obs.shape == (32, 3)
    assert batch.actions.shape == batch.rewards.shape == batch.terminated.shape == (32,)
    assert batch.obs.dtype == torch.float32 and batch.rewards.dtype == torch.float32
    assert batch.actions.dtype == torch.int64 and batch.terminated.dtype == torch.bool
    assert batch.steps is None  # one-step
    assert all(t.device.type == "cpu" for t in batch if t is not None)
    # every field of a sampled row comes from the same transition, and only filled slots are drawn
    assert torch.equal(batch.obs[:, 0], batch.rewards)
    assert torch.equal(batch.actions.float(), batch.rewards)
    assert batch.rewards.max() < 50


def test_seeded_sampling_is_reproducible() -> None:
    a, b, c = ReplayBuffer(100, (3,), seed=7), ReplayBuffer(100, (3,), seed=7), ReplayBuffer(100, (3,), seed=8)
    for buffer in (a, b, c):
        push_range(buffer, 0, 100)
    draws_a = [a.sample(16).rewards for _ in range(3)]
    draws_b = [b.sample(16).rewards for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(draws_a, draws_b, strict=True))
    assert not torch.equal(draws_a[0], c.sample(16).rewards)


def test_refuses_to_sample_more_than_it_holds() -> None:
    buffer = ReplayBuffer(100, (3,))
    push_range(buffer, 0, 10)
    with pytest.raises(ValueError, match="holding 10"):
        buffer.sample(11)


def test_storage_is_preallocated_capacity_times_transition() -> None:
    buffer = ReplayBuffer(1000, (4,))
    per_transition = 4 * 4 * 2 + 8 + 4 + 1  # obs + next_obs float32, int64 action, float32 reward, bool
    assert buffer.nbytes == 1000 * per_transition
    before = buffer.obs.data_ptr()
    push_range_4 = torch.ones(10, 4)
    buffer.push(push_range_4, torch.zeros(10), torch.zeros(10), push_range_4, torch.zeros(10))
    assert buffer.obs.data_ptr() == before


def test_state_dict_round_trip_continues_identically() -> None:
    source = ReplayBuffer(8, (3,), seed=3)
    push_range(source, 0, 8)
    push_range(source, 8, 3)
    source.sample(4)
    copy = ReplayBuffer(8, (3,), seed=99)
    copy.load_state_dict(source.state_dict())
    assert (copy.pos, len(copy)) == (source.pos, len(source))
    assert torch.equal(copy.sample(8).obs, source.sample(8).obs)


def n_step_reference(episodes_by_env: dict[int, list[list[int]]], start: int, n: int) -> list[int]:
    """Ids of the window starting at transition ``start``: it and the next n-1 of its episode pushed so far."""
    for episodes in episodes_by_env.values():
        for episode in episodes:
            if start in episode:
                at = episode.index(start)
                return episode[at : at + n]
    raise AssertionError(start)


@pytest.mark.parametrize("sampler", [UniformSampler, PrioritizedSampler], ids=["uniform", "prioritized"])
@pytest.mark.parametrize("capacity", [64, 23], ids=["no-wrap", "wrapped"])
def test_n_step_windows_follow_one_env_within_an_episode(capacity: int, sampler: type) -> None:
    """Two envs push interleaved; every sampled window must be the next steps of the same env's
    episode, end at a termination or truncation, and stop at the newest step pushed so far."""
    n, next_id = 3, 0
    buffer = ReplayBuffer(capacity, (1,), seed=0, n_step=n, num_envs=2, sampler=sampler())
    rng = torch.Generator().manual_seed(1)
    episodes_by_env: dict[int, list[list[int]]] = {0: [[]], 1: [[]]}
    terminated_ids = set()
    for _ in range(40):
        env_ids = [e for e in (0, 1) if torch.rand(1, generator=rng).item() < 0.8]  # an env may skip a step
        if not env_ids:
            continue
        ids = list(range(next_id, next_id + len(env_ids)))
        next_id += len(env_ids)
        ended = (torch.rand(len(env_ids), generator=rng) < 0.25).tolist()
        terminated = [e and torch.rand(1, generator=rng).item() < 0.5 for e in ended]  # else truncated
        for env, i, end, term in zip(env_ids, ids, ended, terminated, strict=True):
            episodes_by_env[env][-1].append(i)
            if end:
                episodes_by_env[env].append([])
            if term:
                terminated_ids.add(i)
        t = torch.tensor(ids, dtype=torch.float32)
        buffer.push(t[:, None], torch.zeros(len(ids)), t, t[:, None] + 0.5, torch.tensor(terminated),
                    env_ids=env_ids, continues=[not e for e in ended])  # fmt: skip
    if buffer.sampler.prioritized:  # skewed priorities: windows start anywhere, unevenly
        buffer.sampler.update_priorities(torch.arange(len(buffer)), torch.rand(len(buffer), generator=rng) * 10)
    held = set(buffer.obs[: len(buffer), 0].long().tolist())
    batches = [buffer.sample(len(buffer)) for _ in range(20)]
    batch = type(batches[0])(
        *(torch.cat(field) if field[0] is not None else None for field in zip(*batches, strict=True))
    )
    for obs, rewards, next_obs, terminated, steps in zip(
        batch.obs[:, 0], batch.rewards, batch.next_obs[:, 0], batch.terminated, batch.steps, strict=True
    ):
        window = n_step_reference(episodes_by_env, int(obs), n)
        assert set(window) <= held
        assert steps.item() == len(window)
        assert rewards.tolist() == [float(i) for i in window] + [0.0] * (n - len(window))
        assert next_obs.item() == window[-1] + 0.5 and terminated.item() == (window[-1] in terminated_ids)


def test_n_step_state_dict_round_trip_and_one_step_checkpoints_load() -> None:
    source = ReplayBuffer(16, (3,), seed=3, n_step=3)
    for i in range(20):  # one env, one step at a time, the episode going on
        push_range(source, i, 1)
    copy = ReplayBuffer(16, (3,), seed=99, n_step=3)
    push_range(copy, 100, 1)  # an episode open in the buffer before the restore
    copy.load_state_dict(source.state_dict())
    assert torch.equal(copy.next_index, source.next_index)
    a, b = copy.sample(8), source.sample(8)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True) if x is not None)
    # a resumed run starts a new episode: no episode open before the restore links to it
    new_slot = copy.pos
    push_range(copy, 20, 1)
    assert not (copy.next_index == new_slot).any()
    # a buffer saved one-step loads into an n-step one: its transitions sample as one-step windows
    one_step = ReplayBuffer(16, (3,), seed=3)
    push_range(one_step, 0, 16)
    copy.load_state_dict(one_step.state_dict())
    assert (copy.sample(8).steps == 1).all()


def test_n_step_push_of_more_rows_than_envs_fails_before_writing() -> None:
    buffer = ReplayBuffer(4, (3,), n_step=2, num_envs=2)
    push_range(buffer, 0, 2)
    push_range(buffer, 2, 2)
    before = buffer.obs.clone()
    with pytest.raises(ValueError, match="one transition per env"):
        push_range(buffer, 9, 3)
    assert torch.equal(buffer.obs, before) and buffer.pos == 0 and len(buffer) == 4


def test_a_full_cpu_buffer_is_saved_without_a_copy_and_a_partial_one_without_its_empty_rows() -> None:
    buffer = ReplayBuffer(8, (2,), seed=0)
    buffer.push(torch.ones(5, 2), torch.zeros(5), torch.ones(5), torch.ones(5, 2), torch.zeros(5))
    partial = buffer.state_dict()["storage"]["obs"]
    assert partial.shape == (5, 2) and partial.data_ptr() != buffer.obs.data_ptr()
    buffer.push(torch.ones(3, 2), torch.zeros(3), torch.ones(3), torch.ones(3, 2), torch.zeros(3))
    assert buffer.state_dict()["storage"]["obs"].data_ptr() == buffer.obs.data_ptr()  # streamed by torch.save
    copy = ReplayBuffer(8, (2,), seed=1)
    copy.load_state_dict(buffer.state_dict())
    assert torch.equal(copy.obs, buffer.obs) and len(copy) == 8
