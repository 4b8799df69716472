"""The Q-network: an MLP from a flat observation to one Q-value per discrete action, plain or dueling."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def mlp(in_features: int, hidden_sizes: Sequence[int]) -> tuple[list[nn.Module], int]:
    """``Linear + ReLU`` layers of the given widths, and the width they end with."""
    layers: list[nn.Module] = []
    for width in hidden_sizes:
        layers += [nn.Linear(in_features, width), nn.ReLU()]
        in_features = width
    return layers, in_features


class QNetwork(nn.Module):
    """MLP ``obs_dim -> hidden... -> n_actions`` with ReLU, as in the PyTorch DQN tutorial.

    Sizes come from the environment's spaces (see ``GymDataModule``), so one class serves every
    discrete-action env with a flat observation.
    """

    def __init__(self, obs_dim: int, n_actions: int, hidden_sizes: Sequence[int] = (128, 128)) -> None:
        super().__init__()
        layers, width = mlp(obs_dim, hidden_sizes)
        self.net = nn.Sequential(*layers, nn.Linear(width, n_actions))

    def forward(self, obs: Tensor) -> Tensor:
        """Map observations ``[B, obs_dim]`` to Q-values ``[B, n_actions]``."""
        return self.net(obs)


class DuelingQNetwork(nn.Module):
    """Dueling architecture (Wang et al., 2016): a shared MLP torso, then two streams, a state value
    ``V(s)`` and action advantages ``A(s, a)``, combined as ``Q = V + A − mean_a A``.

    As in the paper, each stream has a hidden layer of its own: the last of ``hidden_sizes`` is built
    twice, once per stream, and the layers before it are shared. Subtracting the mean makes the
    split identifiable (V and A could otherwise trade a constant) and is the paper's choice over
    the max. V learns from every transition, whatever action it took, which helps where many
    actions have similar values.
    """

    def __init__(self, obs_dim: int, n_actions: int, hidden_sizes: Sequence[int] = (128, 128)) -> None:
        super().__init__()
        if not hidden_sizes:
            raise ValueError("a dueling Q-network needs at least one hidden layer for its streams")
        layers, width = mlp(obs_dim, hidden_sizes[:-1])
        self.torso = nn.Sequential(*layers)
        stream = hidden_sizes[-1]
        self.value = nn.Sequential(nn.Linear(width, stream), nn.ReLU(), nn.Linear(stream, 1))
        self.advantage = nn.Sequential(nn.Linear(width, stream), nn.ReLU(), nn.Linear(stream, n_actions))

    def forward(self, obs: Tensor) -> Tensor:
        """Map observations ``[B, obs_dim]`` to Q-values ``[B, n_actions]``."""
        features = self.torso(obs)  # [B, width]
        advantage = self.advantage(features)  # [B, n_actions]
        return self.value(features) + advantage - advantage.mean(dim=1, keepdim=True)


def soft_update(target: Sequence[Tensor], source: Sequence[Tensor], tau: float) -> None:
    """Polyak-average ``source`` parameters into ``target`` parameters: θ′ ← τθ + (1−τ)θ′.

    With ``tau=1`` it is the hard update of the Nature DQN paper (a copy). One fused
    ``_foreach_lerp_`` over all parameters instead of a Python loop over a state dict: with soft
    updates it runs after every optimizer step, so its cost is paid on every training step. It takes parameter lists
    rather than modules because ``Module.parameters()`` walks the module tree, which costs more
    than the lerp itself; callers collect the lists once.
    """
    with torch.no_grad():
        torch._foreach_lerp_(target, source, tau)
