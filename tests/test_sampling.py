"""Replay sampling: the sum-tree, prioritized sampling in proportion to priority, IS weights, and save/load."""

import pytest
import torch

from lit_dqn.buffer import ReplayBuffer
from lit_dqn.sampling import PrioritizedSampler, SumTree, restore_generator

from .conftest import cuda_generator_state
from .test_buffer import push_range


def prioritized(capacity: int, shape: tuple[int, ...], alpha: float = 0.6, eps: float = 1e-6, **kwargs) -> ReplayBuffer:
    return ReplayBuffer(capacity, shape, sampler=PrioritizedSampler(alpha, eps), **kwargs)


def test_sum_tree_sums_and_finds_by_hand() -> None:
    tree = SumTree(5, torch.device("cpu"))  # 8 leaves, depth 3
    assert tree.leaves == 8 and tree.depth == 3
    tree.set(torch.tensor([0, 1, 2, 3, 4]), torch.tensor([1.0, 2.0, 3.0, 0.0, 4.0]))
    assert tree.total.item() == 10.0
    assert tree.tree[2].item() == 6.0 and tree.tree[3].item() == 4.0  # the two halves
    # leaf i covers [sum of leaves before i, that + p_i); the empty leaf 3 is never found
    prefixes = torch.tensor([0.0, 0.99, 1.0, 2.99, 3.0, 5.99, 6.0, 9.99, 10.5])
    assert tree.find(prefixes).tolist() == [0, 0, 1, 1, 2, 2, 4, 4, 4]


def test_sum_tree_repeated_slots_and_rebuild_agree() -> None:
    tree = SumTree(100, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        slots = torch.randint(100, (32,), generator=generator)  # with repeats
        values = torch.rand(32, generator=generator)
        tree.set(slots, values)
    incremental = tree.tree.clone()
    tree.rebuild()
    assert torch.equal(tree.tree, incremental)
    assert tree.total.item() == pytest.approx(tree.tree[tree.leaves :].sum().item(), rel=1e-5)


def test_samples_in_proportion_to_priority_to_the_alpha() -> None:
    buffer = prioritized(8, (3,), seed=0, alpha=0.5)
    push_range(buffer, 0, 4)  # slots 0..3; 4..7 stay empty
    buffer.sampler.update_priorities(torch.arange(4), torch.tensor([1.0, 4.0, 9.0, 16.0]))
    counts = torch.zeros(8)
    for _ in range(3000):
        batch = buffer.sample(4)
        counts += torch.bincount(batch.indices, minlength=8)
        assert torch.equal(batch.rewards, batch.indices.float())  # rows are the transitions at those slots
    expected = torch.tensor([1.0, 2.0, 3.0, 4.0]) / 10  # p^0.5 = |δ| ** 0.5 (eps is negligible)
    assert counts[4:].sum() == 0
    assert torch.allclose(counts[:4] / counts.sum(), expected, atol=0.01)


def test_importance_weights_by_hand() -> None:
    buffer = prioritized(4, (3,), seed=1, alpha=1.0, eps=0.0)
    push_range(buffer, 0, 4)
    buffer.sampler.update_priorities(torch.arange(4), torch.tensor([1.0, 1.0, 2.0, 4.0]))
    batch = buffer.sample(4, beta=0.5)
    probabilities = torch.tensor([1.0, 1.0, 2.0, 4.0])[batch.indices] / 8
    raw = (4 * probabilities) ** -0.5
    assert torch.allclose(batch.weights, raw / raw.max())
    assert batch.weights.max().item() == 1.0
    assert torch.allclose(buffer.sample(4, beta=0.0).weights, torch.ones(4))  # β = 0: no correction


def test_new_transitions_enter_at_the_largest_priority_so_far() -> None:
    buffer = prioritized(6, (3,), seed=0, alpha=1.0, eps=0.0)
    push_range(buffer, 0, 2)
    assert buffer.sampler.tree.get(torch.arange(2)).tolist() == [1.0, 1.0]  # the first max priority is 1
    buffer.sampler.update_priorities(torch.tensor([0, 1]), torch.tensor([5.0, 0.5]))
    push_range(buffer, 2, 4)  # fills 2..5
    assert buffer.sampler.tree.get(torch.arange(6)).tolist() == [5.0, 0.5, 5.0, 5.0, 5.0, 5.0]
    buffer.sampler.update_priorities(torch.tensor([2]), torch.tensor([0.1]))  # lowering one keeps the maximum
    push_range(buffer, 6, 1)  # wraps onto slot 0
    assert buffer.sampler.tree.get(torch.tensor([0])).item() == 5.0
    assert buffer.sampler.tree.total.item() == pytest.approx(5 + 0.5 + 0.1 + 5 * 3)


def test_state_dict_round_trip_samples_identically() -> None:
    source = prioritized(16, (3,), seed=3, n_step=3)
    for i in range(20):  # wraps
        push_range(source, i, 1)
    source.sampler.update_priorities(torch.arange(16), torch.linspace(0.0, 3.0, 16))
    copy = prioritized(16, (3,), seed=99, n_step=3)
    copy.load_state_dict(source.state_dict())
    assert torch.equal(copy.sampler.tree.tree, source.sampler.tree.tree) and torch.equal(
        copy.sampler.max_priority, source.sampler.max_priority
    )
    for _ in range(3):
        a, b = copy.sample(8, beta=0.7), source.sample(8, beta=0.7)
        assert all(x is y is None or torch.equal(x, y) for x, y in zip(a, b, strict=True))
    push_range(copy, 50, 1)
    push_range(source, 50, 1)
    assert torch.equal(copy.sampler.tree.tree, source.sampler.tree.tree)


def test_a_uniform_buffer_loads_into_a_prioritized_one_at_equal_priority() -> None:
    uniform = ReplayBuffer(8, (3,), seed=0)
    push_range(uniform, 0, 5)
    buffer = prioritized(8, (3,))
    buffer.load_state_dict(uniform.state_dict())
    assert buffer.sampler.tree.get(torch.arange(8)).tolist() == [1.0] * 5 + [0.0] * 3
    assert (buffer.sample(5).indices < 5).all()


def test_restore_generator_continues_a_stream_or_reseeds_from_another_device_kind() -> None:
    """A state of this device kind continues exactly; one of another kind (a CUDA checkpoint resumed
    on a CPU) cannot be set, so the generator is seeded from its bytes: the same for the same state,
    different for another."""
    saved = torch.Generator().manual_seed(3)
    torch.rand(5, generator=saved)
    state = saved.get_state()
    expected = torch.rand(4, generator=saved)
    restored = torch.Generator()
    assert restore_generator(restored, state)
    assert torch.equal(torch.rand(4, generator=restored), expected)

    draws = []
    for foreign in (cuda_generator_state(3, 20), cuda_generator_state(3, 20), cuda_generator_state(3, 24)):
        generator = torch.Generator()
        assert not restore_generator(generator, foreign)
        draws.append(torch.rand(4, generator=generator))
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    assert not torch.equal(draws[0], torch.rand(4, generator=torch.Generator()))  # not the default seed
