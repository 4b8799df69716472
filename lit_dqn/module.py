"""DQN as a LightningModule: Q-networks, ε-greedy acting, the TD update and its logging."""

import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import Tensor
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from lit_dqn.buffer import Transitions
from lit_dqn.checks import (
    ConfigError,
    check_at_most,
    check_interval,
    check_max_steps_for,
    check_positive,
    check_sizes,
)
from lit_dqn.data import ReplayBatch
from lit_dqn.distributed import world
from lit_dqn.envs import EnvSpec
from lit_dqn.exploration import exponential_epsilon, linear_epsilon
from lit_dqn.losses import (
    categorical_loss,
    categorical_targets,
    discounted_returns,
    next_actions,
    quantile_huber_loss,
    quantile_targets,
    taken,
    td_errors,
    td_loss,
    td_targets,
)
from lit_dqn.networks import (
    Categorical,
    DuelingQNetwork,
    ImageLayout,
    NoisyLinear,
    QNetwork,
    Quantiles,
    greedy_actions,
    is_image,
    soft_update,
)
from lit_dqn.optimization import StepCounter, plain_calls_are_exact
from lit_dqn.sampling import reseeded_notice, restore_generator
from lit_dqn.scalars import is_logging_step, write_scalars


class NonFiniteLossError(RuntimeError):
    """The TD loss became NaN or infinite: the weights are ruined, so training stops before saving them."""


# Share of a logging interval's mean TD targets outside C51's atoms that means a range too narrow:
# with a fitting range they leave it only at its edges, rarely.
C51_OUTSIDE_WARNING = 0.5


class DQN(L.LightningModule):
    """Deep Q-learning with a target network (the PyTorch DQN tutorial's agent, plus the standard toolbox).

    Args:
        obs_dim: observation length; linked from ``data.obs_dim`` by the CLI.
        n_actions: number of discrete actions; linked from ``data.n_actions`` by the CLI.
        hidden_sizes: widths of the Q-network's hidden layers.
        lr: AdamW learning rate (amsgrad, as in the tutorial).
        gamma: discount factor.
        tau: target update rate, θ′ ← τθ + (1−τ)θ′ every ``target_update_interval`` updates: the
            tutorial's soft update is 0.005 every update; 1.0 is a hard copy (the Nature paper).
        target_update_interval: updates between target updates: 1 for soft updates; with ``tau=1``
            the Nature paper's hard update every K updates (Stable-Baselines3 and CleanRL count K in
            env steps; here it counts updates).
        grad_clip_value: clip each gradient element to ``[-value, value]`` before the optimizer
            step (the tutorial's ``clip_grad_value_``); ``None`` turns clipping off.
        eps_start: ε at the first env step.
        eps_end: ε at the end of the schedule.
        eps_schedule: ``exponential`` (the tutorial's: ε = end + (start − end)·exp(−env_steps / eps_decay))
            or ``linear`` (Stable-Baselines3's and CleanRL's: from start to end over the first
            ``eps_fraction`` of the env steps that ``trainer.max_steps`` updates take, then flat).
        eps_decay: time constant of the exponential schedule, in env steps.
        eps_fraction: share of training the linear schedule spans (SB3's ``exploration_fraction``).
            Under DDP both schedules follow each rank's own env steps, so each rank explores as one
            process would over the same updates.
        double_dqn: pick the next action with the online network and evaluate it with the target
            network (van Hasselt et al., 2016), which curbs Q-value over-estimation.
        dueling: a dueling Q-network, Q = V + A − mean(A) (Wang et al., 2016), instead of a plain MLP.
        distributional: learn each action's return distribution, not only its mean: ``c51``
            (Bellemare et al. 2017: probabilities over ``num_atoms`` fixed atoms from ``v_min`` to
            ``v_max``, cross-entropy to the target projected onto them) or ``qr_dqn`` (Dabney et al.
            2018: ``num_quantiles`` quantiles, quantile Huber loss with κ = 1). Acting, evaluation and
            Double DQN's argmax use the distribution's mean; prioritized replay takes each sample's
            own loss as its priority, as Rainbow does. ``None``: the expected Q-value and the Huber
            TD loss (the tutorial's).
        num_atoms: C51's atoms: 51, the paper's (and its name).
        v_min: C51's lowest atom, in units of return. C51 cannot represent returns outside
            ``[v_min, v_max]`` (targets are clipped there): ±10 is the paper's Atari range, for
            rewards clipped to ±1; set it to cover the env's discounted returns.
        v_max: C51's highest atom, in units of return.
        num_quantiles: QR-DQN's quantiles: 50 here; sb3-contrib's default and the paper's Atari setting are 200.
            The loss compares every pair of quantiles, so its cost grows as N² per sample: its
            forward and backward for a batch of 256 took 2.3 ms at 50 and 250 ms at 200 (one CPU thread).
        noisy: noisy nets (Fortunato et al. 2018): the Q-head's layers (the last hidden layer and the
            output layer; a dueling net's streams) are ``networks.NoisyLinear``, whose learned weight
            noise explores, so ε can be 0 once the warm-up is over. The noise is zero until the
            first update draws it, so the warm-up acts with the means: keep ``eps_start`` above 0
            (the shipped configs use 1.0, a random warm-up). Both nets draw new noise at every
            update, before its loss (the online and the target net independently, from the module's
            own generator, seeded from the global seed and kept in checkpoints); the env steps up to
            the next update act with the online net's latest noise. Greedy evaluation, videos,
            ``record`` and ``greedy_actions`` use the noise-free means.
        noisy_sigma0: σ₀ of the noisy layers' initial noise scale σ = σ₀/√fan_in: 0.5, the paper's
            factorised-noise value.
        max_episodes: stop training after this many episodes, counted over all DDP ranks (``None``:
            stop on the Trainer's limits).
        obs_shape: the observation's shape, linked from ``data.obs_shape`` by the CLI: an image's
            three dimensions put a CNN before the MLP (``networks.ImageEncoder``); ``None`` or
            ``[obs_dim]`` is the flat MLP.
        obs_layout: where an image observation's channels are, linked from ``data.obs_layout`` by
            the CLI (the env spec decides it, ``data.image_layout`` overrides): ``channels_first`` or
            ``channels_last``; ``None`` for a flat observation.
        obs_high: what uint8 image frames are divided by, so their pixels reach the CNN in [0, 1]:
            the image Box's ``high``, linked from ``data.obs_high`` by the CLI (255 for Atari's
            frames, and the default, as checkpoints written before it existed were trained; 1 for
            an env whose uint8 pixels are 0 or 1). Bool frames and flat observations do not use it.
    """

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        hidden_sizes: Sequence[int] = (128, 128),
        lr: float = 1e-4,
        gamma: float = 0.99,
        tau: float = 0.005,
        target_update_interval: int = 1,
        grad_clip_value: float | None = 100.0,
        eps_start: float = 0.9,
        eps_end: float = 0.05,
        eps_schedule: Literal["exponential", "linear"] = "exponential",
        eps_decay: float = 1000.0,
        eps_fraction: float = 0.1,
        double_dqn: bool = False,
        dueling: bool = False,
        distributional: Literal["c51", "qr_dqn"] | None = None,
        num_atoms: int = 51,
        v_min: float = -10.0,
        v_max: float = 10.0,
        num_quantiles: int = 50,
        noisy: bool = False,
        noisy_sigma0: float = 0.5,
        max_episodes: int | None = None,
        obs_shape: Sequence[int] | None = None,
        obs_layout: ImageLayout | None = None,
        obs_high: float = 255.0,
    ) -> None:
        super().__init__()
        check_sizes("model.hidden_sizes", hidden_sizes)
        check_positive("model.lr", lr)
        check_interval("model.gamma", gamma, 0, 1, low_open=True)
        check_interval("model.tau", tau, 0, 1, low_open=True)
        check_interval("model.target_update_interval", target_update_interval, 1, math.inf)
        if grad_clip_value is not None:
            check_positive("model.grad_clip_value", grad_clip_value)
        check_interval("model.eps_start", eps_start, 0, 1)
        check_interval("model.eps_end", eps_end, 0, 1)
        check_at_most("model.eps_end", eps_end, "model.eps_start", eps_start)
        check_positive("model.eps_decay", eps_decay)
        check_interval("model.eps_fraction", eps_fraction, 0, 1, low_open=True)
        if max_episodes is not None:
            check_interval("model.max_episodes", max_episodes, 1, math.inf)
        check_interval("model.num_atoms", num_atoms, 2, math.inf)
        if distributional not in (None, "c51", "qr_dqn"):  # the CLI's Literal refuses it; Python calls reach here
            raise ConfigError(f"model.distributional={distributional!r} is not allowed: c51, qr_dqn or null")
        atom_bound = torch.finfo(torch.float32).max / 2  # the atoms and their spacing are float32
        check_interval("model.v_min", v_min, -atom_bound, atom_bound)
        check_interval("model.v_max", v_max, -atom_bound, atom_bound)
        if not v_min < v_max:
            raise ConfigError(f"model.v_min={v_min!r} is not allowed: it must be below model.v_max={v_max!r}")
        check_interval("model.num_quantiles", num_quantiles, 1, math.inf)
        check_positive("model.noisy_sigma0", noisy_sigma0)
        check_positive("model.obs_high", obs_high)
        self.save_hyperparameters()
        # The update is written out in training_step (zero_grad, backward, clip, step), which reads
        # top to bottom like the tutorial and skips the closure machinery of automatic optimization.
        self.automatic_optimization = False
        if dueling and not hidden_sizes:
            raise ConfigError("model.dueling=true needs at least one layer in model.hidden_sizes to share")
        if obs_shape is not None and is_image(obs_shape) and obs_layout is None:
            raise ConfigError(
                f"model.obs_layout must say where the channels of image observations {tuple(obs_shape)} are: "
                "channels_first or channels_last (the CLI links it from the env)"
            )
        network = DuelingQNetwork if dueling else QNetwork
        distribution = None
        if distributional == "c51":
            distribution = Categorical(num_atoms, v_min, v_max)
        elif distributional == "qr_dqn":
            distribution = Quantiles(num_quantiles)
        self.policy_net = network(
            obs_dim,
            n_actions,
            hidden_sizes,
            obs_shape=obs_shape,
            image_layout=obs_layout,
            distribution=distribution,
            noisy_sigma0=noisy_sigma0 if noisy else None,
            image_high=obs_high,
        )
        self.target_net = copy.deepcopy(self.policy_net).requires_grad_(False)
        # Noisy nets: both nets' noisy layers, and the seed of the generator that draws their noise
        # (one draw from the global RNG, after the weights', so a seed fixes the noise too).
        self._noisy_layers = [m for m in self.modules() if isinstance(m, NoisyLinear)]
        self._noise_seed = int(torch.randint(2**62, ())) if noisy else 0
        self._noise: torch.Generator | None = None  # on the model's device, from on_train_start
        self._noise_state: Tensor | None = None  # a checkpoint's generator state, applied in on_train_start
        self._acting_noise_state: Tensor | None = None  # a DDP checkpoint's acting noise per rank, likewise
        self._eps_span = math.inf  # env steps the linear ε schedule spans, from trainer.max_steps (setup)
        self._schedule_max_steps: int | None = None  # the trainer.max_steps the run started with (setup)
        self._soft_update_pairs: tuple[list[Tensor], list[Tensor]] = ([], [])  # (target, online), see on_train_start
        self._loss_sum: Tensor | None = None  # the TD losses since the last check, summed (see _check_loss_finite)
        self._outside_range: Tensor | None = None  # C51: share of mean targets outside the atoms, summed per update
        self._range_checked = 0  # the update of the last range check
        self._updates_checked = 0  # updates whose loss is known to be finite
        self._world_size = 1  # processes training together (DDP ranks), from on_train_start
        self._count_step: StepCounter | None = None  # set when plain torch calls are exact, from on_train_start
        # The env a loaded checkpoint was trained on (``DQN.load_from_checkpoint(path).env_spec.make()``).
        self.env_spec: EnvSpec | None = None
        # Several ranks (DDP): the job's totals over all ranks, agreed every update (see _sync_ranks).
        self.job_episodes = self.job_env_steps = 0

    def forward(self, obs: Tensor) -> Tensor:
        """Q-values ``[B, n_actions]`` of observations ``[B, *obs_shape]``."""
        return self.policy_net(obs)

    def epsilon(self, env_step: int) -> float:
        hp = self.hparams
        if hp.eps_schedule == "linear":
            return linear_epsilon(env_step, hp.eps_start, hp.eps_end, self._eps_span)
        return exponential_epsilon(env_step, hp.eps_start, hp.eps_end, hp.eps_decay)

    def setup(self, stage: str) -> None:
        """Size the linear ε schedule: a share of the env steps the run's ``trainer.max_steps`` updates
        take. A resumed run keeps the span it started with (``on_load_checkpoint``, which runs next)."""
        if stage != "fit":
            return
        max_steps = self.trainer.max_steps
        self._schedule_max_steps = max_steps if max_steps > 0 else None
        if self.hparams.eps_schedule != "linear":
            return
        check_max_steps_for("model.eps_schedule", "linear", max_steps)
        datamodule = self.trainer.datamodule
        if not hasattr(datamodule, "env_steps_at"):
            raise ConfigError("model.eps_schedule=linear needs a GymDataModule to count the env steps of training")
        self._eps_span = self.hparams.eps_fraction * datamodule.env_steps_at(max_steps)

    @torch.inference_mode()
    def greedy_actions(self, obs: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """argmax_a Q(s, a) for observations ``[N, *obs_shape]`` from the env (on the CPU), over the
        valid actions ``mask`` ``[N, n_actions]`` if given (``networks.greedy_actions``). Noisy layers
        use their means: greedy is the policy without its exploration noise."""
        if not (self._noisy_layers and self.policy_net.training):
            return greedy_actions(self.policy_net, obs, mask, self.device)
        self.policy_net.eval()
        try:
            return greedy_actions(self.policy_net, obs, mask, self.device)
        finally:
            self.policy_net.train()

    def act(
        self, obs: np.ndarray, env_step: int, rng: np.random.Generator, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, float]:
        """ε-greedy actions ``[N]`` for observations ``[N, obs_dim]``; also returns the ε used. With
        ``mask`` ``[N, n_actions]``, both the random and the greedy action are valid ones.

        Both random draws are taken every call, whatever they decide, so the RNG stream, and with it
        the whole run, depends only on the seed.
        """
        eps = self.epsilon(env_step)
        n = obs.shape[0]
        explore = rng.random(n) < eps
        if mask is None:
            actions = rng.integers(self.hparams.n_actions, size=n)
        else:  # uniform over each row's valid actions: the largest of one uniform draw per valid action
            actions = np.where(mask, rng.random(mask.shape), -1.0).argmax(axis=1)
        if not explore.all():  # the online net as it is: with its noise, if noisy
            actions = np.where(explore, actions, greedy_actions(self.policy_net, obs, mask, self.device))
        return actions, eps

    def on_train_batch_start(self, batch: ReplayBatch, batch_idx: int) -> None:
        """Stop after this update once ``max_episodes`` episodes ended. With several ranks, the job's
        episode and env-step counts and any stop request (Ctrl-C, SIGTERM, ``max_episodes``) are
        agreed first (``_sync_ranks``), so every rank stops after the same update. (The episodes
        themselves are ``episodes.EpisodeStatistics``' to record.)"""
        if self._world_size > 1:
            self._sync_ranks(batch.episodes, batch.env_steps)
        elif self.hparams.max_episodes is not None and batch.episodes >= self.hparams.max_episodes:
            self.trainer.should_stop = True  # Lightning ends the fit after this update

    def training_step(self, batch: ReplayBatch, batch_idx: int) -> Tensor:
        """One DQN update, the tutorial's ``optimize_model``: TD targets from the target network,
        Huber loss (or a distributional head's loss, ``_distributional_losses``), then zero_grad,
        backward, gradient clipping and the AdamW step. The target network follows in
        ``on_train_batch_end``."""
        obs, actions, rewards, next_obs, terminated, steps, indices, weights, next_mask = batch.transitions
        hp = self.hparams
        distribution = self.policy_net.distribution
        for layer in self._noisy_layers:  # noisy nets: new noise for this update, online and target nets
            layer.reset_noise(self._noise)
        outputs = self.policy_net.outputs(obs)  # [B, n_actions] Q-values, or [B, n_actions, K] distributions
        with torch.no_grad():
            next_outputs = self.target_net.outputs(next_obs)  # like outputs
            next_q_online = self.policy_net(next_obs) if hp.double_dqn else None  # [B, n_actions]
        if distribution is None:
            targets = td_targets(rewards, next_outputs, terminated, hp.gamma, next_q_online, steps, next_mask)  # [B]
            loss = td_loss(outputs, actions, targets, weights)
        else:
            losses = self._distributional_losses(outputs, next_outputs, next_q_online, batch.transitions)  # [B]
            loss = losses.mean() if weights is None else (weights * losses).mean()
        self._loss_sum.add_(loss.detach())  # read on logging steps and before saves

        optimizer = self.optimizers()
        optimizer.zero_grad()
        if self._count_step is not None:  # what Lightning's wrappers do here, without their hook calls
            loss.backward()
            if hp.grad_clip_value is not None:
                torch.nn.utils.clip_grad_value_(self._soft_update_pairs[1], hp.grad_clip_value)
            optimizer.optimizer.step()
            self._count_step()  # global_step, as LightningOptimizer.step counts it
        else:
            self.manual_backward(loss)
            if hp.grad_clip_value is not None:
                self.clip_gradients(optimizer, hp.grad_clip_value, gradient_clip_algorithm="value")
            optimizer.step()  # Lightning's step: it counts global_step and calls on_before_optimizer_step
        if batch.update_priorities is not None:  # prioritized replay: the TD errors (or losses) are the new priorities
            errors = td_errors(outputs, actions, targets) if distribution is None else losses.detach()
            batch.update_priorities(indices, errors)

        if is_logging_step(self.trainer, self.global_step):  # global_step counts this update already
            self._check_loss_finite()
            self._check_c51_range()
            write_scalars(
                self.trainer,
                {
                    "train/loss": loss.item(),
                    "train/q_mean": self.policy_net.q_values(outputs).detach().mean().item(),
                    "train/epsilon": batch.epsilon,
                    "train/replay_size": float(batch.replay_size),
                    "train/env_steps": float(batch.env_steps if self._world_size == 1 else self.job_env_steps),
                    "train/episodes": float(batch.episodes if self._world_size == 1 else self.job_episodes),
                },
                step=self.global_step,  # x axis: the updates done
            )
        return loss.detach()

    def _distributional_losses(
        self, outputs: Tensor, next_outputs: Tensor, next_q_online: Tensor | None, batch: Transitions
    ) -> Tensor:
        """Each sample's loss ``[B]`` for the C51 or QR-DQN head: the target network's distribution
        (``next_outputs`` ``[B, n_actions, K]``) at ``a*`` (``next_actions``: the best valid action by
        mean Q, the online net's with Double DQN), shifted by the (n-step) rewards and discount,
        against the online distribution (``outputs``) of the taken action."""
        hp, distribution = self.hparams, self.policy_net.distribution
        with torch.no_grad():
            best = next_actions(distribution.q_values(next_outputs), next_q_online, batch.next_mask)  # [B]
            returns, discounts = discounted_returns(
                batch.rewards, batch.terminated, hp.gamma, batch.steps, batch.next_mask
            )
            next_distribution = taken(next_outputs, best)  # [B, K]
        if hp.distributional == "c51":
            next_probs = next_distribution.softmax(dim=1)  # [B, K]
            if self._outside_range is not None:  # the mean targets C51's atoms cannot hold (see _check_c51_range)
                mean_targets = returns + discounts * (next_probs @ distribution.support)  # [B]
                self._outside_range.add_(((mean_targets < hp.v_min) | (mean_targets > hp.v_max)).float().mean())
            target = categorical_targets(returns, discounts, next_probs, distribution.support)
            return categorical_loss(outputs, batch.actions, target)
        return quantile_huber_loss(outputs, batch.actions, quantile_targets(returns, discounts, next_distribution))

    def on_train_batch_end(self, outputs: STEP_OUTPUT, batch: ReplayBatch, batch_idx: int) -> None:
        """The target update θ′ ← τθ + (1−τ)θ′ after every ``target_update_interval``-th optimizer step:
        the tutorial's soft update every step with ``tau=0.005``, the Nature paper's hard copy every K
        updates with ``tau=1``."""
        if self.global_step % self.hparams.target_update_interval == 0:
            soft_update(*self._soft_update_pairs, self.hparams.tau)

    def _check_c51_range(self) -> None:
        """Warn once when most mean TD targets ``r + γ·E[Z′]`` fell outside ``[v_min, v_max]`` since the
        last logging step: the atoms cannot hold the env's returns (C51's default ±10 on an env whose
        returns reach −100, say), every target is squashed onto an end atom, and the net learns little,
        silently. Read on logging steps only, like the loss check: reading is a host sync."""
        if self._outside_range is None:
            return
        updates = max(self.global_step - self._range_checked, 1)
        share = self._outside_range.item() / updates
        self._outside_range.zero_()
        self._range_checked = self.global_step
        if share > C51_OUTSIDE_WARNING:
            hp = self.hparams
            rank_zero_warn(
                f"C51: {share:.0%} of the mean TD targets of the last {updates} updates fell outside "
                f"[model.v_min, model.v_max] = [{hp.v_min:g}, {hp.v_max:g}]: the atoms cannot hold these "
                "returns; set model.v_min and model.v_max to cover the env's discounted returns"
            )
            self._outside_range = None  # once a run

    def _check_loss_finite(self) -> None:
        """Stop if any TD loss since the last check was NaN or infinite.

        Each update adds its loss to a sum on the model's device (one op; ``torch.isfinite`` and a
        running flag were four, 15 µs per update on a CPU), read only on logging steps, before each
        validation, before every checkpoint and at the end of training: reading it is a host sync,
        which on a GPU would add one per step. Every head's loss is ≥ 0, so the sum is finite exactly
        when each loss was (NaN and inf stay; no inf − inf), short of a float32 overflow that only
        losses of 1e36 each, long diverged, could reach. Ruined weights are never saved: every save
        checks first.
        """
        if self._loss_sum is None or torch.isfinite(self._loss_sum).item():
            if self._loss_sum is not None:
                self._loss_sum.zero_()
            self._updates_checked = self.global_step
            return
        raise NonFiniteLossError(
            f"the TD loss became NaN or infinite at a step between {self._updates_checked} and "
            f"{self.global_step - 1}: training stopped without saving; the last good checkpoint is "
            f"{self._last_checkpoint() or 'none (none was written yet)'} (try a lower model.lr)"
        )

    def _last_checkpoint(self) -> str | None:
        """The newest checkpoint on disk; a path Lightning chose for a save that was refused is not."""
        callback = self.trainer.checkpoint_callback
        if callback is None:
            return None
        return next((p for p in (callback.last_model_path, callback.best_model_path) if p and Path(p).is_file()), None)

    def on_train_start(self) -> None:
        """Set up what training steps use, once the model is on its device and a checkpoint (if
        any) is restored.

        The target and online parameters are paired once: ``parameters()`` walks the module tree,
        which would cost more than the soft update itself on every step. The loss is watched from
        the step training starts (or resumes) at. The learning rate is set from ``model.lr``: a
        restored optimizer state carries the one it was saved with, which would silently win.
        """
        self._soft_update_pairs = (list(self.target_net.parameters()), list(self.policy_net.parameters()))
        self._world_size = world()[1]
        self._count_step = StepCounter(self.trainer) if plain_calls_are_exact(self.trainer) else None
        self._loss_sum = torch.zeros((), device=self.device)
        if self.hparams.distributional == "c51":
            self._outside_range = torch.zeros((), device=self.device)
            self._range_checked = self.global_step
        self._updates_checked = self.global_step
        if self._noisy_layers:  # each rank draws its own noise
            rank, world_size = world()
            self._noise = torch.Generator(device=self.device).manual_seed(self._noise_seed + rank)
            state, acting = self._noise_state, self._acting_noise_state  # [S] or [ranks, S]; [ranks, N]
            self._noise_state = self._acting_noise_state = None
            # A checkpoint's streams continue only in a job of as many processes (a resume; the data
            # module refuses any other). Its weights fitted in another job keep the fresh streams.
            saved_ranks = 1 if state is None or state.dim() == 1 else state.shape[0]
            if state is not None and saved_ranks == world_size:
                # The rank's row is cloned into a tensor of its own: handed rank 1's row, a view into
                # the gathered states, Generator.set_state crashed the process (segfault, torch 2.13).
                row = state[rank].clone() if state.dim() == 2 else state  # [S]
                if not restore_generator(self._noise, row):
                    rank_zero_info(reseeded_notice("the noisy nets' noise stream", self.device))
            if acting is not None and acting.shape[0] == world_size:  # DDP: this rank's, not rank 0's
                noise = self._policy_noise()
                row = acting[rank].to(self.device)  # [N]
                for buffer, saved in zip(noise, row.split([b.numel() for b in noise]), strict=True):
                    buffer.copy_(saved)
        for group in self.optimizers(use_pl_optimizer=False).param_groups:
            group["lr"] = self.hparams.lr

    def _sync_ranks(self, episodes: int, env_steps: int) -> None:
        """The job's episodes and env steps (summed over the ranks with the strategy's ``reduce``), and
        whether any rank must stop (Ctrl-C, SIGTERM, ``max_episodes``: ``reduce_boolean_decision``),
        at every update's start (DDP). Stop requests take effect here, before the update, so every
        rank stops after the same update: a rank that stopped alone would leave the others waiting
        in DDP's gradient all-reduce."""
        trainer, strategy = self.trainer, self.trainer.strategy
        counts = torch.tensor([episodes, env_steps], dtype=torch.float64, device=self.device)  # float64: exact
        self.job_episodes, self.job_env_steps = (int(n) for n in strategy.reduce(counts, reduce_op="sum").tolist())
        max_episodes = self.hparams.max_episodes
        stop = trainer.should_stop or (max_episodes is not None and self.job_episodes >= max_episodes)
        trainer.should_stop = strategy.reduce_boolean_decision(stop, all=False)

    def on_train_end(self) -> None:
        """Report a loss that went non-finite, or C51 targets outside the atoms, after the last check."""
        self._check_loss_finite()
        self._check_c51_range()

    def on_validation_start(self) -> None:
        """Stop before scoring ruined weights: with logging off, validation is the regular check."""
        self._check_loss_finite()

    def validation_step(self, returns: Tensor, batch_idx: int) -> None:
        self._log_returns("val", returns)

    def test_step(self, returns: Tensor, batch_idx: int) -> None:
        self._log_returns("test", returns)

    def _log_returns(self, stage: str, returns: Tensor) -> None:
        """Mean and std of the greedy returns ``[episodes]``; with several ranks, of every rank's share
        of the episodes, gathered in episode order, so each rank's EarlyStopping and ModelCheckpoint
        see the job's value, the one a single process computes from the same episodes."""
        returns = self._gather_returns(returns)  # [job's episodes]
        self.log_dict(
            {f"{stage}/return_mean": returns.mean(), f"{stage}/return_std": returns.std(unbiased=False)},
            prog_bar=True,
            batch_size=returns.numel(),
        )
        if self.trainer.state.fn == "fit":  # x axis: the updates done
            self.log("step", float(self.global_step), batch_size=returns.numel())

    def _gather_returns(self, returns: Tensor) -> Tensor:
        """Every rank's ``returns``, rank after rank (``distributed.episode_share`` gives rank r the
        episodes after rank r − 1's). ``all_gather`` needs one shape and the shares differ by at most
        one episode, so each share is padded to the largest and the padding dropped."""
        if self.trainer.world_size == 1:
            return returns
        counts = self.all_gather(torch.tensor(returns.numel(), device=self.device)).tolist()  # [ranks]
        padded = returns.new_zeros(max(counts))
        padded[: returns.numel()] = returns
        gathered = self.all_gather(padded)  # [ranks, max(counts)]
        return torch.cat([share[:count] for share, count in zip(gathered, counts, strict=True)])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # The fused kernel updates all parameters in one call instead of a Python loop over
        # tensors, several times faster for a net this small; it exists on CPU, CUDA and MPS.
        # Mixed precision's gradient clipping needs the unscaled gradients a fused step never shows.
        mixed = self._trainer is not None and self.trainer.precision.endswith("-mixed")
        fused = self.device.type in _get_fused_kernels_supported_devices() and not mixed
        return torch.optim.AdamW(self.policy_net.parameters(), lr=self.hparams.lr, amsgrad=True, fused=fused)

    def _keep_schedules(self, schedules: dict[str, Any], prioritized: bool) -> None:
        """A resumed run goes on with the schedules its first ``trainer.max_steps`` sized: the linear ε
        span here, prioritized replay's β in the data module (``GymDataModule._restore``). Another
        ``trainer.max_steps`` only moves where the run stops, and one line says so."""
        started, now = schedules["max_steps"], self._schedule_max_steps
        linear = self.hparams.eps_schedule == "linear"
        if linear:
            self._eps_span = schedules["eps_span"]
        named = (("the linear ε schedule", linear), ("prioritized replay's β", prioritized))
        kept = [name for name, used in named if used]
        if kept and started is not None and started != now:
            rank_zero_info(
                f"Resuming with trainer.max_steps={now}: {' and '.join(kept)} keep the pace of the "
                f"{started} updates the run started with (trainer.max_steps now only moves where it stops)"
            )
        if started is not None:
            self._schedule_max_steps = started  # and the next checkpoint keeps it

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to save non-finite weights; keep the schedules' pace, the noise generator and (DDP)
        each rank's acting noise."""
        self._check_loss_finite()
        checkpoint["schedules"] = {"max_steps": self._schedule_max_steps, "eps_span": self._eps_span}
        if self._noise is not None:  # noisy nets: where each rank's noise stream is, for an exact resume
            state = self._noise.get_state()  # [S] uint8, on the host
            if self._world_size > 1:
                state = self.all_gather(state.to(self.device)).cpu()  # [ranks, S]
                # The online net's noise acts until the next update; the weights hold rank 0's only.
                checkpoint["acting_noise"] = self.all_gather(torch.cat(self._policy_noise())).cpu()  # [ranks, N]
            checkpoint["noise_generator"] = state

    def _policy_noise(self) -> list[Tensor]:
        """The online net's noise, f(ε_in) and f(ε_out) of each noisy layer: what acts until the next
        update. Each rank draws its own, so under DDP the checkpoint keeps every rank's."""
        layers = [m for m in self.policy_net.modules() if isinstance(m, NoisyLinear)]
        return [b for layer in layers for b in (layer.noise_in, layer.noise_out)]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the linear ε span the run started with, the noise generator and (DDP) each rank's
        acting noise, and the env spec the checkpoint's data module was made with."""
        data = checkpoint.get("datamodule_hyper_parameters")
        if isinstance(data, dict) and "env_id" in data:
            self.env_spec = EnvSpec.from_hparams(data)
        schedules = checkpoint.get("schedules")
        if schedules is not None and self._trainer is not None and self.trainer.state.fn == "fit":
            self._keep_schedules(schedules, prioritized=isinstance(data, dict) and bool(data.get("prioritized")))
        self._noise_state = checkpoint.get("noise_generator")
        self._acting_noise_state = checkpoint.get("acting_noise")
