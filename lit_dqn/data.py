"""The data side of DQN: a replay buffer filled by stepping a Gymnasium env, served as batches."""

import contextlib
import math
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from lit_dqn.atari import is_atari
from lit_dqn.buffer import Replay, ReplayBuffer, Transitions
from lit_dqn.checks import (
    ConfigError,
    check_at_least,
    check_at_most,
    check_interval,
    check_max_steps_for,
    check_positive,
)
from lit_dqn.distributed import episode_share, gather_to_rank_zero, rank_seed, world
from lit_dqn.envs import ActionMasks, EnvSpec, ImageLayout, WrapperSpec
from lit_dqn.frames import FrameReplayBuffer
from lit_dqn.rollout import EnvRunner, ExplorationPolicy, GreedyPolicy, evaluate
from lit_dqn.sampling import PrioritizedSampler, UniformSampler, reseeded_notice


@dataclass(frozen=True, slots=True)
class ReplayBatch:
    """What one training step (one DQN update) receives: a replay batch, drawn after the env took its
    steps with the current weights, and what happened in those steps.

    Its tensors are sampled on the model's device, so ``GymDataModule.transfer_batch_to_device``
    hands it on as it is.
    """

    transitions: Transitions
    finished: list[tuple[float, int]]  # (return, length) of the episodes that ended while it was collected
    episodes: int  # episodes ended so far (by this process's envs)
    env_steps: int  # transitions collected so far
    epsilon: float  # ε of the latest action
    replay_size: int  # transitions the buffer holds
    # Prioritized replay: where the learner sends the batch's new |TD errors| (slots [B], errors [B]).
    update_priorities: Callable[[Tensor, Tensor], None] | None


class ReplayDataset(IterableDataset):
    """Endless stream of replay batches, each drawn after the env was stepped with the current policy.

    The env runs ahead of the updates at a fixed replay ratio: before batch ``k`` (counting from 0)
    the buffer has received ``warmup_steps + ceil((k + 1) * num_envs / updates_per_step)``
    transitions. With the default ``updates_per_step=1`` that is one step of every sub-env before
    each batch, like the tutorial; below 1 the env takes several steps per update, above 1 one step
    feeds several updates. Counting transitions rather than calls keeps the ratio exact when a
    sub-env spends a call on its autoreset.

    With a prioritized sampler (``sampling.PrioritizedSampler``), each batch is sampled with the
    importance-sampling exponent ``beta()`` gives at that moment (1, no annealing, if none is given),
    and carries where the learner sends its new priorities.
    """

    def __init__(
        self,
        runner: EnvRunner,
        policy: ExplorationPolicy,
        batch_size: int,
        warmup_steps: int,
        updates_per_step: float = 1.0,
        batches: int = 0,
        beta: Callable[[], float] | None = None,
    ) -> None:
        self.runner = runner
        self.policy = policy
        self.batch_size = batch_size
        self.warmup_steps = warmup_steps
        self.updates_per_step = updates_per_step
        self.batches = batches  # drawn so far; part of the state an exact resume restores
        self.beta = beta or (lambda: 1.0)

    def __len__(self) -> int:
        """Endless, but sized: Lightning prefetches one batch from a stream of unknown length (to spot
        its end), which would step the env with the weights from before the latest update; sized,
        each batch is drawn only when the learner asks for it."""
        return sys.maxsize

    def __iter__(self) -> Iterator[ReplayBatch]:
        runner, buffer = self.runner, self.runner.buffer
        sampler = buffer.sampler
        update_priorities = sampler.update_priorities if sampler.prioritized else None
        while True:
            finished: list[tuple[float, int]] = []
            due = self.warmup_steps + math.ceil((self.batches + 1) * runner.num_envs / self.updates_per_step)
            while runner.env_steps < due:
                finished += runner.step(self.policy)
            self.batches += 1
            transitions = buffer.sample(self.batch_size, beta=self.beta())
            yield ReplayBatch(
                transitions, finished, runner.episodes, runner.env_steps, runner.epsilon, len(buffer), update_priorities
            )


# Most env copies one evaluation steps side by side; more episodes are played in rounds of equal size.
# Memory, not speed, sets it: each copy of Taxi holds its own transition table (about 1 MB), so 2000
# side by side took 2.3 GB.
EVAL_ENVS_MAX = 256


def eval_copies(episodes: int) -> int:
    """Env copies that play ``episodes`` episodes in rounds of equal size, at most ``EVAL_ENVS_MAX``
    each; the last round may play a few episodes more than needed, which are not counted."""
    return math.ceil(episodes / math.ceil(episodes / EVAL_ENVS_MAX))


class EvaluationDataset(IterableDataset):
    """One item: the returns ``[n_episodes]`` of greedy episodes from env seeds ``seed, seed + 1, ...``.

    Fixed seeds make every validation run score the policy on the same start states, so scores of
    different checkpoints are comparable. The episodes are played in rounds of ``envs.num_envs``,
    each episode from its own seed, so the rounds do not change which episodes are played.
    """

    def __init__(
        self,
        envs: gym.vector.VectorEnv,
        policy: GreedyPolicy,
        seed: int,
        episodes: int,
        masks: ActionMasks | None = None,
        max_steps: int | None = None,
    ) -> None:
        self.envs = envs
        self.policy = policy
        self.seed = seed
        self.episodes = episodes
        self.masks = masks
        self.max_steps = max_steps

    def __len__(self) -> int:
        """One batch, sized: Lightning then draws it in the evaluation loop, after ``on_validation_start``
        or ``on_test_start`` (``callbacks.GracefulStop`` sets its signal handlers there); unsized, it
        would be prefetched before those hooks, and every episode played first."""
        return 1

    def __iter__(self) -> Iterator[Tensor]:
        n = self.envs.num_envs
        returns = [
            evaluate(self.envs, self.policy, self.seed + start, self.masks, self.max_steps)[: self.episodes - start]
            for start in range(0, self.episodes, n)
        ]
        yield torch.as_tensor(np.concatenate(returns), dtype=torch.float32)


class GymDataModule(L.LightningDataModule):
    """Gymnasium env, replay buffer and evaluation episodes for DQN.

    Args:
        env_id: any registered Gymnasium env with ``Discrete`` actions and a flat ``Box`` or a
            ``Discrete`` observation (one-hot encoded), or an image one (uint8 or bool, e.g.
            ``MinAtar/Breakout-v1`` with the minatar extra). A user's own env as ``module:id``:
            Gymnasium imports ``module``, which registers ``id`` (``examples/`` shows one).
        env_kwargs: keyword arguments of ``gym.make(env_id, ...)``, for every env lit_dqn makes
            (training, evaluation, videos).
        wrappers: Gymnasium wrappers by class path with their ``init_args``, applied in order around
            every env lit_dqn makes (after Atari's preprocessing), e.g. ``gymnasium.wrappers.FlattenObservation``
            for a Dict observation.
        image_layout: where an image observation's channels are, ``channels_first`` (C, H, W) or
            ``channels_last`` (H, W, C); ``None`` takes the env family's (MinAtar: last; Atari's
            stacked frames: first). An image env of another family must set it: a shape such as
            MinAtar Seaquest's (10, 10, 10) cannot tell.
        action_masks: act among the actions the env says are valid, ``info["action_mask"]``
            (Gymnasium's convention, e.g. Taxi) or an ``action_masks()`` method (sb3-contrib's):
            ε-greedy explores valid actions only, the greedy action is the best valid one, and the
            TD target's max (and Double DQN's argmax) runs over the next state's valid actions.
        num_envs: sub-envs stepped together (each vector step adds ``num_envs`` transitions).
        batch_size: transitions per sampled batch.
        buffer_capacity: replay buffer size; the oldest transitions are overwritten.
        warmup_steps: transitions collected before the first batch (at least ``batch_size``).
        updates_per_step: the replay ratio, in updates per vector env step: 1 is the tutorial's
            one update per step; 0.25 updates once every 4 steps; 2 updates twice per step.
        n_step: rewards summed per TD target before bootstrapping (n-step returns, computed when
            a batch is sampled); 1 is the tutorial's one-step target. Larger values carry rewards
            back faster at the cost of some bias from the older, more exploratory actions.
        seed: seeds env resets, exploration and buffer sampling; ``None`` takes the run's
            ``seed_everything`` seed (``torch.initial_seed()``). Under DDP each rank derives its own
            from it and its rank, and owns its envs and buffer (``lit_dqn.distributed``).
        eval_episodes: greedy episodes per validation or test run; under DDP the ranks share them.
        test_episodes: greedy episodes per test run where it differs; ``None`` plays ``eval_episodes``
            (Taxi validates on 2000 episodes, which start from all of its start states, and is
            scored, as Gymnasium's threshold means, on 100).
        val_seed: first env seed of the validation episodes.
        test_seed: first env seed of the test episodes, distinct from validation so a checkpoint
            chosen on validation is tested on start states it was not chosen for.
        vectorization_mode: how Gymnasium vectorises the training env: ``sync``, ``async`` or
            ``vector_entry_point`` (the env's own batched implementation where it has one).
        save_replay_buffer: store the buffer's contents in checkpoints so a resumed run continues
            exactly; turn off for huge buffers (a resumed run then refills it from scratch).
        prioritized: sample transitions in proportion to their last TD error (prioritized experience
            replay, Schaul et al. 2016) instead of uniformly.
        priority_alpha: how strongly priorities skew sampling, P(i) ∝ p_i^α: 0 is uniform; 0.6 is
            the paper's value for the proportional variant.
        priority_beta: importance-sampling exponent at the first update, annealed linearly to 1 at
            ``trainer.max_steps`` updates (the paper's 0.4), so late updates are unbiased; a run that
            early stopping ends sooner stops short of 1.
        priority_eps: added to each |TD error| so no stored transition gets probability 0 (the
            paper's small positive constant ε; 1e-6 here).
    """

    def __init__(
        self,
        env_id: str = "CartPole-v1",
        env_kwargs: dict[str, Any] | None = None,
        wrappers: list[WrapperSpec] | None = None,
        image_layout: ImageLayout | None = None,
        action_masks: bool = False,
        num_envs: int = 1,
        batch_size: int = 128,
        buffer_capacity: int = 10_000,
        warmup_steps: int = 128,
        updates_per_step: float = 1.0,
        n_step: int = 1,
        seed: int | None = None,
        eval_episodes: int = 100,
        test_episodes: int | None = None,
        val_seed: int = 1_000_000,
        test_seed: int = 2_000_000,
        vectorization_mode: Literal["sync", "async", "vector_entry_point"] = "sync",
        save_replay_buffer: bool = True,
        prioritized: bool = False,
        priority_alpha: float = 0.6,
        priority_beta: float = 0.4,
        priority_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        check_interval("data.num_envs", num_envs, 1, math.inf)
        check_interval("data.buffer_capacity", buffer_capacity, 1, math.inf)
        check_interval("data.batch_size", batch_size, 1, math.inf)
        check_at_most("data.batch_size", batch_size, "data.buffer_capacity", buffer_capacity)
        check_at_least("data.warmup_steps", warmup_steps, "data.batch_size", batch_size)
        check_at_most("data.warmup_steps", warmup_steps, "data.buffer_capacity", buffer_capacity)
        check_positive("data.updates_per_step", updates_per_step)
        check_interval("data.n_step", n_step, 1, math.inf)
        if n_step > 1:
            check_at_least("data.buffer_capacity", buffer_capacity, "2 * data.num_envs", 2 * num_envs)
        for field, seed_value in (("data.seed", seed), ("data.val_seed", val_seed), ("data.test_seed", test_seed)):
            if seed_value is not None:  # NumPy's SeedSequence, which seeds the envs and the buffer, takes no negative
                check_interval(field, seed_value, 0, math.inf)
        check_interval("data.eval_episodes", eval_episodes, 1, math.inf)
        if test_episodes is not None:
            check_interval("data.test_episodes", test_episodes, 1, math.inf)
        check_interval("data.priority_alpha", priority_alpha, 0, 1)
        check_interval("data.priority_beta", priority_beta, 0, 1)
        check_positive("data.priority_eps", priority_eps)
        self.save_hyperparameters()
        self.env_spec = EnvSpec(env_id, dict(env_kwargs or {}), tuple(wrappers or ()), image_layout, action_masks)
        self.observation_space, self._n_actions, self.obs_layout = self.env_spec.check()
        if vectorization_mode == "vector_entry_point":  # refused now, if it will be, rather than when training starts
            self.env_spec.make_vec(1, vectorization_mode=vectorization_mode).close()
        if is_atari(env_id):  # the frame ring keeps a few episode starts' worth of slots per env
            slots = 4 * num_envs * (self.observation_space.shape[0] + 1)
            check_at_least("data.buffer_capacity", buffer_capacity, "4 * data.num_envs * (frames per stack + 1)", slots)
        self.buffer: Replay | None = None
        self.runner: EnvRunner | None = None
        self.dataset: ReplayDataset | None = None
        self._resume_state: dict[str, Any] | None = None
        self._beta_max_steps = 0  # updates over which β reaches 1 (_beta_schedule)
        self._eval_envs: dict[str, gym.vector.VectorEnv] = {}
        self._stage_warnings = contextlib.ExitStack()  # the warning filters of a stage in progress (setup)

    @property
    def obs_dim(self) -> int:
        """Length of the flat observation vector: the Q-network's input size."""
        return int(np.prod(self.observation_space.shape))

    @property
    def obs_shape(self) -> list[int]:
        """The observation's shape: ``[obs_dim]``, or an image's three dimensions (the Q-network then
        starts with a CNN)."""
        return list(self.observation_space.shape)

    @property
    def obs_dtype(self) -> torch.dtype:
        """How replay stores observations: image frames as the env gives them (uint8 or bool), anything
        else as float32, the MLP's input (a flat uint8 or one-hot int64 observation included)."""
        if self.obs_layout is None:
            return torch.float32
        return {np.dtype(np.uint8): torch.uint8, np.dtype(np.bool_): torch.bool}[self.observation_space.dtype]

    @property
    def obs_high(self) -> float:
        """What the network divides uint8 image frames by: the image Box's ``high`` (its largest, if
        it varies by pixel; 255 for Atari's frames), so an env's 0/1 uint8 pixels are not scaled
        down to 0/0.004. 255, unused, for bool frames and flat observations."""
        if self.obs_dtype != torch.uint8:
            return 255.0
        return max(float(self.observation_space.high.max()), 1.0)  # a Box whose high is 0 gives only 0s

    @property
    def n_actions(self) -> int:
        """Number of discrete actions: the Q-network's output size."""
        return self._n_actions

    def env_steps_at(self, updates: int) -> int:
        """Transitions collected by the time update ``updates`` is sampled (``ReplayDataset``'s schedule)."""
        hp = self.hparams
        return hp.warmup_steps + math.ceil(updates * hp.num_envs / hp.updates_per_step)

    def _seed(self) -> int:
        return self.hparams.seed if self.hparams.seed is not None else torch.initial_seed()

    def _beta_schedule(self) -> Callable[[], float] | None:
        """β of prioritized replay for the next update: linear in the updates done (``trainer.global_step``,
        which a resume restores), from ``priority_beta`` to 1 at the ``trainer.max_steps`` the run
        started with (``_beta_max_steps``; a resume keeps the checkpoint's)."""
        hp = self.hparams
        if not hp.prioritized:
            return None
        trainer, start = self.trainer, hp.priority_beta
        check_max_steps_for("data.prioritized", "true", trainer.max_steps)
        self._beta_max_steps = trainer.max_steps
        return lambda: min(1.0, start + (1.0 - start) * trainer.global_step / self._beta_max_steps)

    def _make_dataset(self) -> ReplayDataset:
        hp = self.hparams
        device = self.trainer.lightning_module.device if self.trainer is not None else torch.device("cpu")
        rank, world_size = world()
        seed = rank_seed(self._seed(), rank, world_size)
        buffer_seed, runner_seed = np.random.SeedSequence(seed).spawn(2)
        kwargs = {
            "device": device,
            "seed": int(buffer_seed.generate_state(1)[0]),
            "n_step": hp.n_step,
            "obs_dtype": self.obs_dtype,
            "action_mask_size": self.n_actions if hp.action_masks else None,
        }
        shape = self.observation_space.shape
        # Atari's frame stacks share 3 of 4 frames with their neighbours: a frame ring stores each once.
        frames = is_atari(hp.env_id)
        # Storage layout and sampling are two independent choices.
        sampler = PrioritizedSampler(hp.priority_alpha, hp.priority_eps) if hp.prioritized else UniformSampler()
        storage = FrameReplayBuffer if frames else ReplayBuffer
        self.buffer = storage(hp.buffer_capacity, shape, num_envs=hp.num_envs, sampler=sampler, **kwargs)
        envs = self.env_spec.make_vec(hp.num_envs, training=True, vectorization_mode=hp.vectorization_mode)
        self.runner = EnvRunner(
            envs,
            self.buffer,
            seed=int(runner_seed.generate_state(1)[0]),
            masks=self.env_spec.masks(),
            emulators=frames,  # Atari: checkpoints carry each emulator's state
        )
        saved = "saved in every checkpoint" if hp.save_replay_buffer else "not saved in checkpoints"
        kind = ("Prioritized replay" if hp.prioritized else "Replay") + (" frame ring" if frames else " buffer")
        per_rank = f" on each of {world_size} ranks" if world_size > 1 else ""
        per_transition = self.buffer.nbytes / hp.buffer_capacity
        rank_zero_info(
            f"{kind}: {hp.buffer_capacity} {'frames' if frames else 'transitions'}, "
            f"{self.buffer.nbytes / 2**20:.1f} MiB on {device}{per_rank} "
            f"({per_transition:.0f} bytes each); {saved} (data.save_replay_buffer)"
        )
        policy = self.trainer.lightning_module.act
        dataset = ReplayDataset(
            self.runner,
            policy,
            hp.batch_size,
            hp.warmup_steps,
            hp.updates_per_step,
            beta=self._beta_schedule(),
        )
        if self._resume_state is not None:
            self._restore(dataset, self._rank_state(self._resume_state))
            self._resume_state = None
        return dataset

    def train_dataloader(self) -> ReplayDataset:
        """The replay stream itself: Lightning iterates any iterable. A ``DataLoader`` would add
        nothing here and cost a profiler record and three calls per batch: the env and buffer live in
        this process and the policy must be the one being trained right now (no worker processes),
        and the stream yields whole batches (no collation)."""
        if self.dataset is None:
            self.dataset = self._make_dataset()
        return self.dataset

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Replay batches are sampled from a buffer that already lives on the model's device.

        Lightning's default walks every batch looking for tensors to move, which costs more than a
        small network's forward pass. Evaluation batches are a handful of returns, moved as usual.
        """
        if isinstance(batch, ReplayBatch):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def _eval_dataloader(self, stage: str, seed: int, key: str) -> DataLoader:
        """Greedy episodes from env seeds ``seed, seed + 1, ...``, as many as ``data.<key>`` says; with
        several ranks each plays its share of them (``distributed.episode_share``), and the module
        reduces the returns."""
        episodes = self.hparams[key]
        rank, world_size = world()
        offset, count = episode_share(episodes, rank, world_size)
        if count == 0:
            raise ConfigError(
                f"data.{key}={episodes} must be at least the number of processes "
                f"({world_size}): each plays its share of the evaluation episodes"
            )
        if stage not in self._eval_envs:  # episode k starts from seed + k, wherever it is played
            self._eval_envs[stage] = self.env_spec.make_eval_vec(eval_copies(count))
        policy = self.trainer.lightning_module.greedy_actions
        spec = self.env_spec
        envs = self._eval_envs[stage]
        dataset = EvaluationDataset(envs, policy, seed + offset, count, spec.masks(), spec.eval_step_cap)
        return DataLoader(dataset, batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        return self._eval_dataloader("val", self.hparams.val_seed, "eval_episodes")

    def test_dataloader(self) -> DataLoader:
        key = "eval_episodes" if self.hparams.get("test_episodes") is None else "test_episodes"
        return self._eval_dataloader("test", self.hparams.test_seed, key)

    def state_dict(self) -> dict[str, Any]:
        """Everything the replay stream needs to continue exactly: buffer, counters and RNG streams.

        With several ranks (DDP), every rank's state, gathered into the one checkpoint file rank 0
        writes, so a checkpoint is complete or absent, never half a set. Lightning asks every rank
        for its state at each save, which makes the gather safe.
        """
        if self.dataset is None:
            return {}
        state = {"batches": self.dataset.batches, "runner": self.runner.state_dict()}
        if self.hparams.prioritized:
            state["beta_max_steps"] = self._beta_max_steps
        if self.hparams.save_replay_buffer:
            state["buffer"] = self.buffer.state_dict()
        if world()[1] == 1:
            return state
        return {"ranks": gather_to_rank_zero(state)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Keep the state until the env and buffer exist: Lightning restores datamodules before
        the model has moved to its device, and the buffer must be created there."""
        self._resume_state = state or None

    @staticmethod
    def _rank_state(state: dict[str, Any]) -> dict[str, Any]:
        """This rank's part of a saved state; resuming needs the world size the state was saved with."""
        rank, world_size = world()
        saved = len(state["ranks"]) if "ranks" in state else 1
        if saved != world_size:
            raise ConfigError(
                f"the checkpoint holds the replay streams of {saved} process(es), this run has {world_size}: "
                f"resume with the same trainer.devices x trainer.num_nodes, or start a new run from its weights"
            )
        return state["ranks"][rank] if "ranks" in state else state

    def _restore(self, dataset: ReplayDataset, state: dict[str, Any]) -> None:
        self.runner.load_state_dict(state["runner"])
        self._beta_max_steps = state.get("beta_max_steps", self._beta_max_steps)  # the pace the run started with
        if "buffer" in state:
            try:
                continued = self.buffer.load_state_dict(state["buffer"])
            except ValueError as error:
                raise ConfigError(f"the checkpoint's {error}") from None
            if not continued:
                rank_zero_info(reseeded_notice("the replay sampling stream", self.buffer.device))
            dataset.batches = state["batches"]
        else:  # no saved buffer: refill it, warm-up included, before the next update
            dataset.warmup_steps += self.runner.env_steps
            dataset.batches = 0

    def setup(self, stage: str) -> None:
        """For the length of a stage, silence two Lightning warnings that do not apply to the replay
        stream or the evaluation datasets: the stream restores its position through ``state_dict``
        below, not the DataLoader's, and neither runs in worker processes, where a sized
        ``IterableDataset`` could repeat data."""
        self._stage_warnings.enter_context(warnings.catch_warnings())  # restored in teardown
        warnings.filterwarnings("ignore", "You're resuming from a checkpoint that ended before the epoch ended")
        warnings.filterwarnings("ignore", "Your `IterableDataset` has `__len__` defined")

    def on_exception(self, exception: BaseException) -> None:
        """A stage that ends by an exception (a non-finite loss, a stop during warm-up, a callback's
        error) gets no ``teardown`` from Lightning, so do its work here, after the callbacks' own
        ``on_exception`` (a stop's ``last.ckpt`` saves this module's state first). Otherwise the
        warning filters would outlive the stage, the envs stay open, and a later ``fit`` with this
        data module would carry on the old replay stream, acting with the old run's model."""
        self.teardown(self.trainer.state.fn.value)

    def teardown(self, stage: str) -> None:
        self._stage_warnings.close()
        for envs in self._eval_envs.values():
            envs.close()
        self._eval_envs.clear()
        if stage == "fit" and self.runner is not None:
            self.runner.envs.close()
            self.runner = self.buffer = self.dataset = None
