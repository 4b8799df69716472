import math

import torch

from lit_dqn.exploration import exponential_epsilon
from lit_dqn.networks import QNetwork, soft_update


def test_qnetwork_shapes_follow_arguments() -> None:
    net = QNetwork(6, 3, hidden_sizes=[32, 16, 8])
    assert net(torch.zeros(5, 6)).shape == (5, 3)
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(6, 32), (32, 16), (16, 8), (8, 3)]


def test_soft_update_tau_one_copies_and_zero_keeps() -> None:
    source, target = QNetwork(4, 2), QNetwork(4, 2)
    before = [p.clone() for p in target.parameters()]
    soft_update(list(target.parameters()), list(source.parameters()), tau=0.0)
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), before, strict=True))
    soft_update(list(target.parameters()), list(source.parameters()), tau=1.0)
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), source.parameters(), strict=True))


def test_soft_update_is_polyak_average() -> None:
    source, target = QNetwork(4, 2), QNetwork(4, 2)
    expected = [0.1 * s + 0.9 * t for s, t in zip(source.parameters(), target.parameters(), strict=True)]
    soft_update(list(target.parameters()), list(source.parameters()), tau=0.1)
    assert all(torch.allclose(a, b) for a, b in zip(target.parameters(), expected, strict=True))


def test_tutorial_epsilon_schedule() -> None:
    assert exponential_epsilon(0, 0.9, 0.05, 1000) == 0.9
    assert math.isclose(exponential_epsilon(1000, 0.9, 0.05, 1000), 0.05 + 0.85 / math.e)
    assert math.isclose(exponential_epsilon(10**7, 0.9, 0.05, 1000), 0.05)
    values = [exponential_epsilon(s, 0.9, 0.05, 1000) for s in range(0, 5000, 500)]
    assert values == sorted(values, reverse=True)
