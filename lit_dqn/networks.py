"""The Q-network: observation to one Q-value per discrete action, plain or dueling, and optionally
a whole return distribution per action (C51's categorical atoms or QR-DQN's quantiles).

A flat observation goes straight into an MLP; an image first through a CNN (``ImageEncoder``),
chosen from the observation's shape, so no flag selects it. Where an image keeps its channels
is the env's to say (``lit_dqn.envs.EnvSpec``), never guessed from the shape.

Every network's ``forward`` gives Q-values ``[B, n_actions]``, so acting, evaluation, videos and
``record`` are the same for every head; ``outputs`` gives what the loss trains: the Q-values
themselves, or ``[B, n_actions, K]`` logits (C51) or quantiles (QR-DQN).
"""

from collections.abc import Callable, Sequence
from functools import partial
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
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
    stores compact frames: uint8 divided by ``high``, the image Box's high (255 for Atari's frames,
    1 for an env whose uint8 pixels are 0 or 1), so every env's pixels reach the CNN in [0, 1];
    bool as 0/1.
    """

    def __init__(self, obs_shape: Sequence[int], layout: ImageLayout, high: float = 255.0) -> None:
        super().__init__()
        if layout not in ("channels_first", "channels_last"):
            raise ValueError(f"image layout must be channels_first or channels_last, got {layout!r}")
        self.channels_last = layout == "channels_last"
        self.high = float(high)  # a plain attribute, not a buffer: checkpoints' state dicts are unchanged
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
        x = obs.float() / self.high if obs.dtype == torch.uint8 else obs.float()
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)  # [B, C, H, W]
        return self.convs(x)


def torso(
    obs_shape: Sequence[int], image_layout: ImageLayout | None, image_high: float = 255.0
) -> tuple[nn.Module | None, int]:
    """The image encoder (``None`` for a flat observation) and the width it hands to the MLP."""
    if is_image(obs_shape):
        if image_layout is None:
            raise ValueError(
                f"an image observation {tuple(obs_shape)} needs its layout: channels_first or channels_last"
            )
        encoder = ImageEncoder(obs_shape, image_layout, image_high)
        return encoder, encoder.out_features
    return None, int(torch.tensor(obs_shape).prod())


def features(encoder: nn.Module | None, obs: Tensor) -> Tensor:
    """The MLP's float input ``[B, width]``: an image's CNN features, or the flat observation as
    float (an env's uint8 or one-hot int64 vectors exactly; float32 as it is, ``Tensor.float``
    returns it untouched)."""
    return obs.float() if encoder is None else encoder(obs)


def mlp(
    in_features: int, hidden_sizes: Sequence[int], linear: Callable[[int, int], nn.Module] = nn.Linear
) -> tuple[list[nn.Module], int]:
    """``Linear + ReLU`` layers of the given widths (``linear`` makes each), and the width they end with."""
    layers: list[nn.Module] = []
    for width in hidden_sizes:
        layers += [linear(in_features, width), nn.ReLU()]
        in_features = width
    return layers, in_features


class NoisyLinear(nn.Module):
    """A linear layer with learned, factorised Gaussian noise on its weights (Fortunato et al. 2018):
    ``y = (μ_w + σ_w ⊙ ε_w) x + μ_b + σ_b ⊙ ε_b``, with ``ε_w = f(ε_out) f(ε_in)ᵀ``, ``ε_b = f(ε_out)``,
    ``f(x) = sgn(x)·√|x|`` of standard normal draws (``in + out`` of them, not ``in × out``).

    The net learns how much noise to keep, so exploration adapts per state instead of following an
    ε schedule. ``μ`` starts uniform in ``±1/√in`` and ``σ`` at ``sigma0/√in`` (the paper's σ₀ = 0.5).
    The noise is a buffer, drawn by ``reset_noise`` from the caller's generator and kept in the
    state dict, so a resumed run acts with the same noise; in eval mode (greedy evaluation) the layer
    uses ``μ`` alone.
    """

    def __init__(self, in_features: int, out_features: int, sigma0: float = 0.5) -> None:
        super().__init__()
        bound = in_features**-0.5
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        self.weight_sigma = nn.Parameter(torch.full((out_features, in_features), sigma0 * bound))
        self.bias_mu = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        self.bias_sigma = nn.Parameter(torch.full((out_features,), sigma0 * bound))
        self.register_buffer("noise_in", torch.zeros(in_features))  # f(ε_in) [in]
        self.register_buffer("noise_out", torch.zeros(out_features))  # f(ε_out) [out]

    @torch.no_grad()
    def reset_noise(self, generator: torch.Generator | None = None) -> None:
        """Draw new noise, ``f(x) = sgn(x)·√|x|`` of standard normals, on the layer's device."""
        for noise in (self.noise_in, self.noise_out):
            draw = torch.randn(noise.shape, generator=generator, device=noise.device)
            noise.copy_(draw.sign() * draw.abs().sqrt())

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return F.linear(x, self.weight_mu, self.bias_mu)
        weight = self.weight_mu + self.weight_sigma * torch.outer(self.noise_out, self.noise_in)
        return F.linear(x, weight, self.bias_mu + self.bias_sigma * self.noise_out)


def head_linear(noisy_sigma0: float | None) -> Callable[[int, int], nn.Module]:
    """The Q-head's layer: ``nn.Linear``, or a ``NoisyLinear`` with σ₀ = ``noisy_sigma0``."""
    return nn.Linear if noisy_sigma0 is None else partial(NoisyLinear, sigma0=noisy_sigma0)


class Categorical(nn.Module):
    """C51's return distribution (Bellemare et al. 2017): ``K`` logits per action over fixed atoms
    ``z_i``, evenly spaced from ``v_min`` to ``v_max``; Q is the mean ``Σ_i softmax(logits)_i · z_i``.
    The atoms are a buffer, so they travel with the weights to the device and into checkpoints."""

    def __init__(self, atoms: int, v_min: float, v_max: float) -> None:
        super().__init__()
        self.size = atoms
        self.register_buffer("support", torch.linspace(v_min, v_max, atoms))  # [K]

    def q_values(self, logits: Tensor) -> Tensor:
        """Q-values ``[B, n_actions]`` of logits ``[B, n_actions, K]``."""
        return torch.softmax(logits, dim=2) @ self.support


class Quantiles(nn.Module):
    """QR-DQN's return distribution (Dabney et al. 2018): ``N`` quantiles per action, at the midpoints
    ``(2i + 1) / 2N``, each an equal share of probability; Q is their mean."""

    def __init__(self, quantiles: int) -> None:
        super().__init__()
        self.size = quantiles

    def q_values(self, quantiles: Tensor) -> Tensor:
        """Q-values ``[B, n_actions]`` of quantiles ``[B, n_actions, N]``."""
        return quantiles.mean(dim=2)


Distribution = Categorical | Quantiles


class QHead(nn.Module):
    """What every Q-network has: ``outputs`` (what the loss trains) and, from them, the Q-values."""

    distribution: Distribution | None

    def outputs(self, obs: Tensor) -> Tensor:
        """What the loss trains: Q-values ``[B, n_actions]``, or ``[B, n_actions, K]`` with a distribution."""
        raise NotImplementedError

    def q_values(self, outputs: Tensor) -> Tensor:
        """Q-values ``[B, n_actions]`` of ``outputs``: themselves, or the distribution's mean."""
        return outputs if self.distribution is None else self.distribution.q_values(outputs)

    def forward(self, obs: Tensor) -> Tensor:
        """Map observations ``[B, *obs_shape]`` to Q-values ``[B, n_actions]``."""
        return self.q_values(self.outputs(obs))


class QNetwork(QHead):
    """MLP ``obs_dim -> hidden... -> n_actions`` with ReLU, as in the PyTorch DQN tutorial; for
    images (``obs_shape`` of three dimensions) an ``ImageEncoder`` comes first.

    Sizes come from the environment's spaces (see ``GymDataModule``), so one class serves every
    discrete-action env. With a ``distribution`` the last layer emits ``K`` values per action. With
    ``noisy_sigma0`` the Q-head (the last hidden layer and the output layer) is ``NoisyLinear``.
    """

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        hidden_sizes: Sequence[int] = (128, 128),
        obs_shape: Sequence[int] | None = None,
        image_layout: ImageLayout | None = None,
        distribution: Distribution | None = None,
        noisy_sigma0: float | None = None,
        image_high: float = 255.0,
    ) -> None:
        super().__init__()
        self.n_actions = n_actions
        self.encoder, width = torso(obs_shape or (obs_dim,), image_layout, image_high)
        linear = head_linear(noisy_sigma0)
        layers, width = mlp(width, hidden_sizes[:-1])
        head, width = mlp(width, hidden_sizes[-1:], linear)
        size = 1 if distribution is None else distribution.size
        self.net = nn.Sequential(*layers, *head, linear(width, n_actions * size))
        self.distribution = distribution

    def outputs(self, obs: Tensor) -> Tensor:
        out = self.net(features(self.encoder, obs))
        return out if self.distribution is None else out.view(out.shape[0], self.n_actions, -1)


class DuelingQNetwork(QHead):
    """Dueling architecture (Wang et al., 2016): a shared torso (the ``ImageEncoder`` for images,
    then MLP layers), then two streams, a state value
    ``V(s)`` and action advantages ``A(s, a)``, combined as ``Q = V + A − mean_a A``.

    As in the paper, each stream has a hidden layer of its own: the last of ``hidden_sizes`` is built
    twice, once per stream, and the layers before it are shared. Subtracting the mean makes the
    split identifiable (V and A could otherwise trade a constant) and is the paper's choice over
    the max. V learns from every transition, whatever action it took, which helps where many
    actions have similar values. With a ``distribution`` the streams emit ``K`` values each (per
    action for ``A``) and combine atom by atom, as in Rainbow (Hessel et al. 2018). With
    ``noisy_sigma0`` both streams' layers are ``NoisyLinear`` (Rainbow's noisy head).
    """

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        hidden_sizes: Sequence[int] = (128, 128),
        obs_shape: Sequence[int] | None = None,
        image_layout: ImageLayout | None = None,
        distribution: Distribution | None = None,
        noisy_sigma0: float | None = None,
        image_high: float = 255.0,
    ) -> None:
        super().__init__()
        if not hidden_sizes:
            raise ValueError("a dueling Q-network needs at least one hidden layer for its streams")
        self.n_actions = n_actions
        self.encoder, width = torso(obs_shape or (obs_dim,), image_layout, image_high)
        layers, width = mlp(width, hidden_sizes[:-1])
        self.torso = nn.Sequential(*layers)
        stream, size = hidden_sizes[-1], 1 if distribution is None else distribution.size
        linear = head_linear(noisy_sigma0)
        self.value = nn.Sequential(linear(width, stream), nn.ReLU(), linear(stream, size))
        self.advantage = nn.Sequential(linear(width, stream), nn.ReLU(), linear(stream, n_actions * size))
        self.distribution = distribution

    def outputs(self, obs: Tensor) -> Tensor:
        shared = self.torso(features(self.encoder, obs))  # [B, width]
        value, advantage = self.value(shared), self.advantage(shared)  # [B, K], [B, n_actions * K]
        if self.distribution is not None:
            value, advantage = value.unsqueeze(1), advantage.view(shared.shape[0], self.n_actions, -1)
        return value + advantage - advantage.mean(dim=1, keepdim=True)


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


@torch.no_grad()
def greedy_actions(
    q_net: nn.Module, obs: np.ndarray, mask: np.ndarray | None = None, device: torch.device | None = None
) -> np.ndarray:
    """argmax_a Q(s, a) ``[N]`` for observations ``[N, *obs_shape]`` from the env, over the valid
    actions ``mask`` ``[N, n_actions]`` if given: training, evaluation, videos and ``record`` all
    act through it. Frames stay uint8 or bool, as replay stores them, and the network makes them
    float; ``device`` is the network's. No autograd graph: the replay stream acts where gradients
    are on (Lightning draws the batch outside ``training_step``), and recording one cost a quarter
    of a small net's forward pass."""
    obs_t = torch.as_tensor(obs, device=device)
    if obs_t.dtype not in (torch.uint8, torch.bool):
        obs_t = obs_t.float()
    q_values = q_net(obs_t)  # [N, n_actions]
    if mask is not None:
        q_values = q_values.masked_fill(~torch.as_tensor(mask, device=device), -torch.inf)
    return q_values.argmax(dim=1).cpu().numpy()  # the one host sync per env step
