import pytest
import torch

from lit_dqn.losses import td_loss, td_targets


def test_td_targets_by_hand_with_terminal_masking() -> None:
    rewards = torch.tensor([1.0, 1.0, 0.5])
    next_q = torch.tensor([[2.0, 3.0], [10.0, -1.0], [4.0, 4.5]])
    terminated = torch.tensor([False, True, False])
    targets = td_targets(rewards, next_q, terminated, gamma=0.9)
    # 1 + 0.9*3 ; terminal: reward only ; 0.5 + 0.9*4.5
    assert torch.allclose(targets, torch.tensor([3.7, 1.0, 4.55]))


def test_truncated_step_is_bootstrapped() -> None:
    """A time-limit truncation is stored as terminated=False, so its target still bootstraps."""
    next_q = torch.tensor([[5.0, 7.0]])
    truncated_target = td_targets(torch.tensor([1.0]), next_q, torch.tensor([False]), gamma=0.99)
    terminated_target = td_targets(torch.tensor([1.0]), next_q, torch.tensor([True]), gamma=0.99)
    assert truncated_target.item() == pytest.approx(1.0 + 0.99 * 7.0)
    assert terminated_target.item() == pytest.approx(1.0)


def test_double_dqn_evaluates_online_argmax_with_target_net() -> None:
    next_q_target = torch.tensor([[1.0, 9.0], [3.0, 0.0]])
    next_q_online = torch.tensor([[5.0, 0.0], [0.0, 2.0]])  # online prefers action 0, then 1
    targets = td_targets(torch.zeros(2), next_q_target, torch.tensor([False, False]), 1.0, next_q_online)
    assert targets.tolist() == [1.0, 0.0]


def test_td_loss_is_huber_quadratic_then_linear() -> None:
    q = torch.tensor([[0.0, 0.2], [0.0, 3.0]])
    actions = torch.tensor([1, 1])
    small = td_loss(q[:1], actions[:1], torch.tensor([0.0]))  # |err| = 0.2 < 1: 0.5 * err^2
    large = td_loss(q[1:], actions[1:], torch.tensor([0.0]))  # |err| = 3 > 1: |err| - 0.5
    assert small.item() == pytest.approx(0.5 * 0.2**2)
    assert large.item() == pytest.approx(3.0 - 0.5)
    mse = torch.nn.functional.mse_loss(torch.tensor([3.0]), torch.tensor([0.0]))
    assert large.item() < mse.item()
    both = td_loss(q, actions, torch.tensor([0.0, 0.0]))
    assert both.item() == pytest.approx((0.5 * 0.2**2 + 2.5) / 2)


def test_gradient_flows_only_through_taken_action() -> None:
    q = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    targets = torch.tensor([0.0, 10.0], requires_grad=True)
    loss = td_loss(q, torch.tensor([0, 1]), targets)
    loss.backward()
    assert q.grad is not None and targets.grad is None
    assert q.grad[0, 1] == 0 and q.grad[1, 0] == 0
    assert q.grad[0, 0] > 0 and q.grad[1, 1] < 0  # pushes Q(s,a) towards its target


def test_td_targets_carry_no_gradient() -> None:
    next_q = torch.tensor([[1.0, 2.0]], requires_grad=True)
    targets = td_targets(torch.tensor([1.0]), next_q, torch.tensor([False]), 0.5)
    assert not targets.requires_grad


def test_n_step_targets_by_hand() -> None:
    rewards = torch.tensor([[1.0, 1.0, 1.0], [1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])  # zero after `steps`
    steps = torch.tensor([3, 2, 1])
    next_q = torch.tensor([[2.0, 4.0], [10.0, 0.0], [1.0, 0.0]])
    terminated = torch.tensor([False, True, False])
    targets = td_targets(rewards, next_q, terminated, 0.5, steps=steps)
    # 1 + .5 + .25 + .5^3 * 4 ; terminated after 2 steps: 1 + .5 * 2 ; one step: 3 + .5 * 1
    assert torch.allclose(targets, torch.tensor([2.25, 2.0, 3.5]))


def test_one_step_window_equals_the_one_step_target() -> None:
    rewards, next_q = torch.tensor([1.0, -2.0]), torch.tensor([[0.5, 3.0], [2.0, 1.0]])
    terminated = torch.tensor([False, True])
    one_step = td_targets(rewards, next_q, terminated, 0.9)
    window = td_targets(rewards[:, None], next_q, terminated, 0.9, steps=torch.ones(2, dtype=torch.long))
    assert torch.allclose(one_step, window)
