"""The Q-network: observation to one Q-value per discrete action, plain or dueling.

A flat observation goes straight into an MLP; an image first through a CNN (``ImageEncoder``),
chosen from the observation's shape, so no flag selects it. Where an image keeps its channels
is the env's to say (``lit_dqn.envs.EnvSpec``), never guessed from the shape.
"""

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn


def is_image(obs_shape: Sequence[int]) -> bool:
    """Three dimensions: an image, channel-first ``(C, H, W)`` or channel-last ``(H, W, C)``."""
    return len(obs_shape) == 3


ImageLayout = Literal["channels_first", "channels_last"]


class ImageEncoder(nn.Module):
    """Images ``[B, C, H, W]`` or ``[B, H, W, C]``, stored as uint8 or bool, to a feature vector.

    - Frames of 36 pixels a side or more (Atari's 84×84): the Nature DQN CNN (Mnih et al. 2015):
      32 8×8 filters of stride 4, 64 4×4 of stride 2, 64 3×3 of stride 1.
    - Smaller grids (MinAtar's 10×10): the MinAtar paper's one 3×3 convolution with 16 channels
      (Young & Tian 2019).

    ``layout`` says where the channels are: Atari's stacked frames ``(4, 84, 84)`` are channels
    first, MinAtar's grids ``(10, 10, C)`` channels last (``(10, 10, 10)`` for Seaquest, which no
    rule on the shape could tell). Inputs become float here, on the model's device, so replay
    stores compact frames: uint8 scaled to [0, 1], bool as 0/1.
    """

    def __init__(self, obs_shape: Sequence[int], layout: ImageLayout) -> None:
        super().__init__()
        if layout not in ("channels_first", "channels_last"):
            raise ValueError(f"image layout must be channels_first or channels_last, got {layout!r}")
        self.channels_last = layout == "channels_last"
        channels, height, width = (obs_shape[2], obs_shape[0], obs_shape[1]) if self.channels_last else tuple(obs_shape)
        if min(height, width) >= 36:
            layers = [
                nn.Conv2d(channels, 32, 8, stride=4), nn.ReLU(),
                nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
                nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            ]  # fmt: skip
        else:
            layers = [nn.Conv2d(channels, 16, 3, stride=1), nn.ReLU()]
        self.convs = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            self.out_features = self.convs(torch.zeros(1, channels, height, width)).shape[1]

    def forward(self, obs: Tensor) -> Tensor:
        """Features ``[B, out_features]`` of images ``[B, *obs_shape]``."""
        x = obs.float() / 255.0 if obs.dtype == torch.uint8 else obs.float()
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)  # [B, C, H, W]
        return self.convs(x)


def torso(obs_shape: Sequence[int], image_layout: ImageLayout | None) -> tuple[nn.Module | None, int]:
    """The image encoder (``None`` for a flat observation) and the width it hands to the MLP."""
    if is_image(obs_shape):
        if image_layout is None:
            raise ValueError(
                f"an image observation {tuple(obs_shape)} needs its layout: channels_first or channels_last"
            )
        encoder = ImageEncoder(obs_shape, image_layout)
        return encoder, encoder.out_features
    return None, int(torch.tensor(obs_shape).prod())


def features(encoder: nn.Module | None, obs: Tensor) -> Tensor:
    """The MLP's float input ``[B, width]``: an image's CNN features, or the flat observation as
    float (an env's uint8 or one-hot int64 vectors exactly; float32 as it is, ``Tensor.float``
    returns it untouched)."""
    return obs.float() if encoder is None else encoder(obs)


def mlp(in_features: int, hidden_sizes: Sequence[int]) -> tuple[list[nn.Module], int]:
    """``Linear + ReLU`` layers of the given widths, and the width they end with."""
    layers: list[nn.Module] = []
    for width in hidden_sizes:
        layers += [nn.Linear(in_features, width), nn.ReLU()]
        in_features = width
    return layers, in_features


class QNetwork(nn.Module):
    """MLP ``obs_dim -> hidden... -> n_actions`` with ReLU, as in the PyTorch DQN tutorial; for
    images (``obs_shape`` of three dimensions) an ``ImageEncoder`` comes first.

    Sizes come from the environment's spaces (see ``GymDataModule``), so one class serves every
    discrete-action env.
    """

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        hidden_sizes: Sequence[int] = (128, 128),
        obs_shape: Sequence[int] | None = None,
        image_layout: ImageLayout | None = None,
    ) -> None:
        super().__init__()
        self.encoder, width = torso(obs_shape or (obs_dim,), image_layout)
        layers, width = mlp(width, hidden_sizes)
        self.net = nn.Sequential(*layers, nn.Linear(width, n_actions))

    def forward(self, obs: Tensor) -> Tensor:
        """Map observations ``[B, *obs_shape]`` to Q-values ``[B, n_actions]``."""
        return self.net(features(self.encoder, obs))


class DuelingQNetwork(nn.Module):
    """Dueling architecture (Wang et al., 2016): a shared torso (the ``ImageEncoder`` for images,
    then MLP layers), then two streams, a state value
    ``V(s)`` and action advantages ``A(s, a)``, combined as ``Q = V + A − mean_a A``.

    As in the paper, each stream has a hidden layer of its own: the last of ``hidden_sizes`` is built
    twice, once per stream, and the layers before it are shared. Subtracting the mean makes the
    split identifiable (V and A could otherwise trade a constant) and is the paper's choice over
    the max. V learns from every transition, whatever action it took, which helps where many
    actions have similar values.
    """

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        hidden_sizes: Sequence[int] = (128, 128),
        obs_shape: Sequence[int] | None = None,
        image_layout: ImageLayout | None = None,
    ) -> None:
        super().__init__()
        if not hidden_sizes:
            raise ValueError("a dueling Q-network needs at least one hidden layer for its streams")
        self.encoder, width = torso(obs_shape or (obs_dim,), image_layout)
        layers, width = mlp(width, hidden_sizes[:-1])
        self.torso = nn.Sequential(*layers)
        stream = hidden_sizes[-1]
        self.value = nn.Sequential(nn.Linear(width, stream), nn.ReLU(), nn.Linear(stream, 1))
        self.advantage = nn.Sequential(nn.Linear(width, stream), nn.ReLU(), nn.Linear(stream, n_actions))

    def forward(self, obs: Tensor) -> Tensor:
        """Map observations ``[B, *obs_shape]`` to Q-values ``[B, n_actions]``."""
        shared = self.torso(features(self.encoder, obs))  # [B, width]
        advantage = self.advantage(shared)  # [B, n_actions]
        return self.value(shared) + advantage - advantage.mean(dim=1, keepdim=True)


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


def greedy_actions(
    q_net: nn.Module, obs: np.ndarray, mask: np.ndarray | None = None, device: torch.device | None = None
) -> np.ndarray:
    """argmax_a Q(s, a) ``[N]`` for observations ``[N, *obs_shape]`` from the env, over the valid
    actions ``mask`` ``[N, n_actions]`` if given: training, evaluation, videos and ``record`` all
    act through it. Frames stay uint8 or bool, as replay stores them, and the network makes them
    float; ``device`` is the network's."""
    obs_t = torch.as_tensor(obs, device=device)
    if obs_t.dtype not in (torch.uint8, torch.bool):
        obs_t = obs_t.float()
    q_values = q_net(obs_t)  # [N, n_actions]
    if mask is not None:
        q_values = q_values.masked_fill(~torch.as_tensor(mask, device=device), -torch.inf)
    return q_values.argmax(dim=1).cpu().numpy()  # the one host sync per env step
