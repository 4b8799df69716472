import pytest
import torch

from lit_dqn import ReplayBuffer


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
    assert all(t.device.type == "cpu" for t in batch)
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
