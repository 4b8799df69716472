"""The temporal-difference target and loss of DQN, as pure functions so tests can check them by hand."""

import torch
import torch.nn.functional as F
from torch import Tensor


def td_targets(
    rewards: Tensor,
    next_q_target: Tensor,
    terminated: Tensor,
    gamma: float,
    next_q_online: Tensor | None = None,
    steps: Tensor | None = None,
    next_mask: Tensor | None = None,
) -> Tensor:
    """TD targets ``Σ_k γ^k r_k + γ^m · (1 − terminated) · Q′(s′, a*)``, without gradient.

    One-step (``steps`` is ``None``): ``rewards`` ``[B]`` and ``m = 1``, the tutorial's
    ``r + γ · Q′(s′, a*)``. n-step: ``rewards`` ``[B, n]`` holds up to ``n`` rewards of one episode,
    zero after each row's ``steps`` ``[B]`` (= ``m``), and ``s′`` is the state after the last of them.

    Only *termination* zeroes the bootstrap: a time-limit truncation is not the end of the task, so
    its next state is still bootstrapped (the replay buffer stores ``terminated``, never ``truncated``).
    ``a*`` is the target network's argmax (DQN) or, when ``next_q_online`` is given, the online
    network's argmax evaluated by the target network (Double DQN).

    With action masks, ``next_mask`` ``[B, n_actions]`` (the actions valid in ``s′``) limits both
    the max and Double DQN's argmax to valid actions: an invalid action's value, which no policy
    can reach, would otherwise leak into every target. A state with no valid action bootstraps 0.

    Shapes: ``terminated`` ``[B]``; ``next_q_*`` ``[B, n_actions]``; returns ``[B]``.
    """
    with torch.no_grad():
        if next_mask is not None:
            next_q_target = next_q_target.masked_fill(~next_mask, -torch.inf)
            next_q_online = None if next_q_online is None else next_q_online.masked_fill(~next_mask, -torch.inf)
        if next_q_online is None:
            next_values = next_q_target.max(dim=1).values
        else:
            best = next_q_online.argmax(dim=1, keepdim=True)  # [B, 1]
            next_values = next_q_target.gather(1, best).squeeze(1)
        if next_mask is not None:
            next_values = torch.where(next_mask.any(dim=1), next_values, 0.0)
        bootstrap = next_values * (~terminated.bool()).to(next_values.dtype)
        if steps is None:
            return rewards + gamma * bootstrap
        powers = gamma ** torch.arange(rewards.shape[1], device=rewards.device, dtype=rewards.dtype)  # [n]
        return rewards @ powers + gamma**steps * bootstrap


def td_loss(q_values: Tensor, actions: Tensor, targets: Tensor, weights: Tensor | None = None) -> Tensor:
    """Huber (smooth L1) loss between ``Q(s, a)`` of the taken actions and the TD targets.

    Huber is quadratic for errors below 1 and linear above, so rare large TD errors do not dominate
    the gradient (the tutorial's choice). Gradient flows only through ``Q(s, a)``. ``weights`` ``[B]``
    are prioritized replay's importance-sampling weights: the loss is their weighted mean, which
    undoes the bias of sampling high-error transitions more often (Schaul et al., 2016).
    """
    q_taken = q_values.gather(1, actions.long().unsqueeze(1)).squeeze(1)  # [B]
    if weights is None:
        return F.smooth_l1_loss(q_taken, targets.detach())
    return (weights * F.smooth_l1_loss(q_taken, targets.detach(), reduction="none")).mean()


def td_errors(q_values: Tensor, actions: Tensor, targets: Tensor) -> Tensor:
    """``|Q(s, a) − target|`` ``[B]`` without gradient: the new priorities of prioritized replay."""
    with torch.no_grad():
        return (q_values.gather(1, actions.long().unsqueeze(1)).squeeze(1) - targets).abs()
