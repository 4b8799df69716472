"""The Q-network: an MLP from a flat observation to one Q-value per discrete action."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class QNetwork(nn.Module):
    """MLP ``obs_dim -> hidden... -> n_actions`` with ReLU, as in the PyTorch DQN tutorial.

    Sizes come from the environment's spaces (see ``GymDataModule``), so one class serves every
    discrete-action env with a flat observation.
    """

    def __init__(self, obs_dim: int, n_actions: int, hidden_sizes: Sequence[int] = (128, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_features = obs_dim
        for width in hidden_sizes:
            layers += [nn.Linear(in_features, width), nn.ReLU()]
            in_features = width
        layers.append(nn.Linear(in_features, n_actions))
        self.net = nn.Sequential(*layers)

    def forward(self, obs: Tensor) -> Tensor:
        """Map observations ``[B, obs_dim]`` to Q-values ``[B, n_actions]``."""
        return self.net(obs)


def soft_update(target: Sequence[Tensor], source: Sequence[Tensor], tau: float) -> None:
    """Polyak-average ``source`` parameters into ``target`` parameters: θ′ ← τθ + (1−τ)θ′.

    One fused ``_foreach_lerp_`` over all parameters instead of a Python loop over a state dict: it
    runs after every optimizer step, so its cost is paid on every training step. It takes parameter
    lists rather than modules because ``Module.parameters()`` walks the module tree, which costs
    more than the lerp itself; callers collect the lists once.
    """
    with torch.no_grad():
        torch._foreach_lerp_(target, source, tau)
