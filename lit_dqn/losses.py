"""The temporal-difference targets and losses of DQN, one short pure function each, so tests can check
them by hand: the expected Q-value (DQN), the categorical distribution (C51) and quantiles (QR-DQN)."""

import torch
import torch.nn.functional as F
from torch import Tensor


def next_actions(next_q: Tensor, next_q_online: Tensor | None = None, next_mask: Tensor | None = None) -> Tensor:
    """The action ``a*`` ``[B]`` each target bootstraps from: the argmax of ``next_q`` ``[B, n_actions]``
    (the target network's Q-values), or of ``next_q_online`` (Double DQN, van Hasselt et al. 2016:
    the online network picks, the target network evaluates).

    With action masks, ``next_mask`` ``[B, n_actions]`` (the actions valid in ``s′``) limits the argmax
    to valid actions: an invalid action's value, which no policy can reach, would otherwise leak into
    every target. For the distributional heads the Q-values are their distributions' means.
    """
    chooser = next_q if next_q_online is None else next_q_online
    if next_mask is not None:
        chooser = chooser.masked_fill(~next_mask, -torch.inf)
    return chooser.argmax(dim=1)


def discounted_returns(
    rewards: Tensor, terminated: Tensor, gamma: float, steps: Tensor | None = None, next_mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The reward part ``Σ_k γ^k r_k`` ``[B]`` of each target and the discount ``γ^m · (1 − terminated)``
    ``[B]`` of its bootstrap, so that every head's target is ``returns + discounts · Z(s′, a*)``.

    One-step (``steps`` is ``None``): ``rewards`` ``[B]`` and ``m = 1``, the tutorial's ``r + γ · Q′``.
    n-step: ``rewards`` ``[B, n]`` holds up to ``n`` rewards of one episode, zero after each row's
    ``steps`` ``[B]`` (= ``m``), and ``s′`` is the state after the last of them.

    Only *termination* zeroes the bootstrap: a time-limit truncation is not the end of the task, so
    its next state is still bootstrapped (the replay buffer stores ``terminated``, never ``truncated``).
    With action masks, a next state with no valid action (``next_mask`` all false) bootstraps 0.
    """
    live = (~terminated.bool()).to(rewards.dtype)  # [B]
    if next_mask is not None:
        live = live * next_mask.any(dim=1).to(rewards.dtype)
    if steps is None:
        return rewards, gamma * live
    powers = gamma ** torch.arange(rewards.shape[1], device=rewards.device, dtype=rewards.dtype)  # [n]
    return rewards @ powers, gamma**steps * live


def td_targets(
    rewards: Tensor,
    next_q_target: Tensor,
    terminated: Tensor,
    gamma: float,
    next_q_online: Tensor | None = None,
    steps: Tensor | None = None,
    next_mask: Tensor | None = None,
) -> Tensor:
    """TD targets ``Σ_k γ^k r_k + γ^m · (1 − terminated) · Q′(s′, a*)`` ``[B]``, without gradient.

    ``a*`` is ``next_actions``' choice (the target's argmax, or Double DQN's online argmax, over the
    valid actions); the rewards and discount are ``discounted_returns``'. Shapes: ``rewards`` ``[B]``
    or ``[B, n]``; ``terminated`` ``[B]``; ``next_q_*`` ``[B, n_actions]``.
    """
    with torch.no_grad():
        best = next_actions(next_q_target, next_q_online, next_mask)  # [B]
        next_values = next_q_target.gather(1, best.unsqueeze(1)).squeeze(1)  # [B]
        if next_mask is not None:
            next_values = torch.where(next_mask.any(dim=1), next_values, 0.0)  # no valid action: not -inf
        returns, discounts = discounted_returns(rewards, terminated, gamma, steps, next_mask)
        return returns + discounts * next_values


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


def taken(outputs: Tensor, actions: Tensor) -> Tensor:
    """The rows ``[B, K]`` of ``outputs`` ``[B, n_actions, K]`` at each sample's action ``[B]``."""
    index = actions.long().view(-1, 1, 1).expand(-1, 1, outputs.shape[2])  # [B, 1, K]
    return outputs.gather(1, index).squeeze(1)


def categorical_targets(returns: Tensor, discounts: Tensor, next_probs: Tensor, support: Tensor) -> Tensor:
    """C51's target distribution (Bellemare et al. 2017): ``returns + discounts · z`` for each atom
    ``z`` of ``support`` ``[K]``, clipped to ``[v_min, v_max]`` and projected onto the atoms.

    Each shifted atom's probability ``next_probs`` ``[B, K]`` (``Z′(s′, a*)``) is split between the
    two atoms around it, in proportion to how close it lands to each; one that lands on an atom keeps
    all of it. Returns the target probabilities ``[B, K]``, which sum to 1, without gradient.
    """
    with torch.no_grad():
        v_min, v_max, atoms = support[0], support[-1], support.shape[0]
        delta = (v_max - v_min) / (atoms - 1)
        shifted = (returns[:, None] + discounts[:, None] * support).clamp(v_min, v_max)  # [B, K]
        position = (shifted - v_min) / delta  # [B, K] in 0..K-1
        lower = position.floor().long().clamp(0, atoms - 1)
        upper = position.ceil().long().clamp(0, atoms - 1)
        upper_share = position - lower  # 0 where the atom lands exactly on one: all to ``lower``
        projected = torch.zeros_like(next_probs)
        projected.scatter_add_(1, lower, next_probs * (1 - upper_share))
        projected.scatter_add_(1, upper, next_probs * upper_share)
        return projected


def categorical_loss(logits: Tensor, actions: Tensor, target_probs: Tensor) -> Tensor:
    """Cross-entropy ``−Σ_i m_i log p_i(s, a)`` ``[B]`` between the projected target ``m`` ``[B, K]``
    and the online distribution of the taken actions (``logits`` ``[B, n_actions, K]``)."""
    return -(target_probs * F.log_softmax(taken(logits, actions), dim=1)).sum(dim=1)


def quantile_targets(returns: Tensor, discounts: Tensor, next_quantiles: Tensor) -> Tensor:
    """QR-DQN's target quantiles ``returns + discounts · θ′_j(s′, a*)`` ``[B, N]`` (Dabney et al. 2018)."""
    with torch.no_grad():
        return returns[:, None] + discounts[:, None] * next_quantiles


def quantile_huber_loss(quantiles: Tensor, actions: Tensor, targets: Tensor, kappa: float = 1.0) -> Tensor:
    """QR-DQN's quantile Huber loss ``[B]``: for the taken action's quantiles ``θ_i`` (``quantiles``
    ``[B, n_actions, N]``) at the midpoints ``τ̂_i = (2i + 1) / 2N`` and every target ``T_j``
    (``targets`` ``[B, N′]``), ``|τ̂_i − 1{u < 0}| · Huber_κ(u) / κ`` with ``u = T_j − θ_i``, summed
    over ``i`` and averaged over ``j`` (the paper's Eq. 10, κ = 1).

    The asymmetric weight pulls ``θ_i`` to the ``τ̂_i``-quantile of the targets; Huber keeps the
    gradient bounded near 0 where the plain quantile loss's is not smooth.
    """
    n, n_targets = quantiles.shape[2], targets.shape[1]
    tau = (2 * torch.arange(n, device=quantiles.device, dtype=quantiles.dtype) + 1) / (2 * n)  # [N]
    theta = taken(quantiles, actions)[:, :, None].expand(-1, -1, n_targets)  # [B, N, N′], θ_i along j
    target = targets.detach()[:, None, :].expand_as(theta)  # [B, N, N′], T_j along i
    # Huber_κ(u) is even, so Huber of (θ, T) is Huber_κ(T − θ); one fused op, with no tensor of u
    huber = F.huber_loss(theta, target, reduction="none", delta=kappa)  # [B, N, N′]
    weight = (tau[None, :, None] - (target < theta).to(theta.dtype)).abs()  # |τ̂_i − 1{u < 0}|
    return (weight * huber).sum(dim=1).mean(dim=1) / kappa
