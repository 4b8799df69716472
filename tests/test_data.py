import io

import gymnasium as gym
import numpy as np
import pytest
import torch

from lit_dqn import DQN, GymDataModule, ReplayBuffer
from lit_dqn.buffer import Transitions
from lit_dqn.data import EvaluationDataset, ReplayBatch, ReplayDataset, eval_copies
from lit_dqn.envs import EnvSpec
from lit_dqn.rollout import EnvRunner, evaluate
from lit_dqn.video import record_episodes

from .conftest import quick_trainer


def random_policy(
    obs: np.ndarray, env_step: int, rng: np.random.Generator, mask: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    return rng.integers(2, size=obs.shape[0]), 1.0


def make_runner(num_envs: int = 1, capacity: int = 10_000, seed: int = 0, **env_kwargs) -> EnvRunner:
    envs = gym.make_vec("CartPole-v1", num_envs=num_envs, vectorization_mode="sync", **env_kwargs)
    return EnvRunner(envs, ReplayBuffer(capacity, (4,), seed=0), seed=seed)


def test_dataset_steps_env_before_every_batch() -> None:
    runner = make_runner(num_envs=2)
    batches = iter(ReplayDataset(runner, random_policy, batch_size=16, warmup_steps=64))
    assert runner.env_steps == 0  # nothing is collected before the learner asks for a batch
    batch = next(batches)
    assert batch.env_steps >= 64 and len(runner.buffer) == batch.env_steps
    assert batch.transitions.obs.shape == (16, 4)
    for _ in range(5):
        before = runner.env_steps
        batch = next(batches)
        # one vector step of 2 envs: 2 transitions, or 1 when a sub-env spent its step on a reset
        assert 1 <= batch.env_steps - before <= 2
        assert batch.replay_size == len(runner.buffer) == batch.env_steps


def test_episode_stats_reach_the_batches() -> None:
    runner = make_runner()
    dataset = ReplayDataset(runner, random_policy, batch_size=8, warmup_steps=8)
    lengths = []
    for batch, _ in zip(dataset, range(400), strict=False):
        lengths += [length for _, length in batch.finished]
        assert batch.episodes == len(lengths)
    assert len(lengths) > 5
    assert sum(lengths) <= runner.env_steps  # the episode in progress is not counted yet
    assert 8 <= np.mean(lengths) <= 60  # random CartPole play lasts ~22 steps


def test_replay_batches_reach_the_learner_as_they_are() -> None:
    """The replay stream is the train dataloader itself (a DataLoader would add its layers to every
    batch), and its batches skip Lightning's device transfer, which would walk and copy each one:
    they are sampled on the model's device already."""
    data = GymDataModule(batch_size=8, warmup_steps=8)
    data.dataset = ReplayDataset(make_runner(), random_policy, batch_size=8, warmup_steps=8)
    assert data.train_dataloader() is data.dataset
    batch = next(iter(data.dataset))
    assert isinstance(batch, ReplayBatch) and isinstance(batch.transitions, Transitions)
    assert data.transfer_batch_to_device(batch, torch.device("meta"), 0) is batch


def test_stored_transitions_chain_and_skip_autoreset_steps() -> None:
    """next_obs of each stored step is the obs of the next one, except across episode ends."""
    runner = make_runner(max_episode_steps=15)  # time limit hit often: exercises truncation too
    ends = []
    for _ in range(300):
        ends += runner.step(random_policy)
    buffer = runner.buffer
    n = len(buffer)
    assert n == runner.env_steps
    episode_ends = np.cumsum([length for _, length in ends]) - 1  # buffer index of each final step
    chained = np.ones(n - 1, dtype=bool)
    chained[episode_ends[episode_ends < n - 1]] = False
    obs, next_obs = buffer.obs[:n], buffer.next_obs[:n]
    assert torch.equal(next_obs[:-1][chained], obs[1:][chained])
    assert not torch.equal(next_obs[:-1][~chained], obs[1:][~chained])  # a fresh episode starts there
    # terminated is stored exactly where CartPole failed (pole or cart out of bounds); episodes cut
    # by the 15-step time limit are stored with terminated=False, so they are bootstrapped
    final = next_obs[episode_ends]
    failed = (final[:, 0].abs() > 2.4) | (final[:, 2].abs() > 12 * 2 * np.pi / 360)
    assert torch.equal(buffer.terminated[episode_ends], failed)
    assert (~failed).any() and failed.any()
    assert not buffer.terminated[:n][np.setdiff1d(np.arange(n), episode_ends)].any()


def test_n_step_links_chain_real_transitions_of_one_sub_env() -> None:
    """With 3 sub-envs (a short time limit, so truncations happen too), every n-step link goes from
    a transition to the next one of the same sub-env and episode, and an episode's last step has none."""
    envs = gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync", max_episode_steps=15)
    runner = EnvRunner(envs, ReplayBuffer(10_000, (4,), seed=0, n_step=3, num_envs=3), seed=0)
    ended = 0
    for _ in range(200):
        ended += len(runner.step(random_policy))
    buffer = runner.buffer
    n = len(buffer)
    following = buffer.next_index[:n]
    linked = following >= 0
    assert torch.equal(buffer.next_obs[:n][linked], buffer.obs[following[linked]])
    assert not buffer.terminated[:n][linked].any()
    # every transition links on but an episode's last one and each sub-env's newest one
    assert int((~linked).sum()) == ended + runner.num_envs - int(runner.autoreset.sum())
    batch = buffer.sample(256)
    assert batch.steps.max() == 3 and batch.steps.min() >= 1 and batch.rewards.shape == (256, 3)


def test_runner_is_reproducible_from_its_seed() -> None:
    a, b = make_runner(), make_runner()
    for _ in range(200):
        a.step(random_policy)
        b.step(random_policy)
    assert torch.equal(a.buffer.obs, b.buffer.obs) and torch.equal(a.buffer.actions, b.buffer.actions)


def test_evaluate_runs_one_episode_per_env() -> None:
    envs = gym.make_vec("CartPole-v1", num_envs=10)
    always_left = lambda obs, mask: np.zeros(obs.shape[0], dtype=np.int64)  # noqa: E731
    returns = evaluate(envs, always_left, seed=123)
    assert returns.shape == (10,)
    assert (returns >= 8).all() and (returns <= 12).all()  # pushing one way falls in ~9-10 steps
    assert np.array_equal(returns, evaluate(envs, always_left, seed=123))


def by_angle(obs: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """A fixed policy whose return depends on the start state: push the way the pole leans."""
    return (obs[:, 2] > 0).astype(np.int64)


def test_evaluation_episode_k_starts_from_seed_plus_k_wherever_it_is_played(tmp_path) -> None:
    """Fewer ``eval_episodes``, a DDP rank's share and ``record`` play episode k from seed + k alike.
    CartPole's batched vector env, drawing every start state from one RNG, fails each of these."""
    spec = EnvSpec("CartPole-v1")
    five = evaluate(spec.make_eval_vec(5), by_angle, seed=77)
    assert len(set(five)) > 2  # the start states differ, and so do the returns
    assert np.array_equal(evaluate(spec.make_eval_vec(3), by_angle, seed=77), five[:3])  # eval_episodes=3
    assert np.array_equal(evaluate(spec.make_eval_vec(2), by_angle, seed=80), five[3:])  # rank 1 of 2: episodes 3-4
    recordings, _ = record_episodes(by_angle, spec, tmp_path, 3, 77, fps=None)
    assert [recording.episode_return for recording in recordings] == list(five[:3])


def test_many_evaluation_episodes_are_played_in_rounds_of_the_same_episodes() -> None:
    """2000 episodes (Taxi's validation) take 8 rounds of 250 env copies, not 2000 copies at once;
    rounds play the episodes one set of copies would have, seed by seed."""
    assert eval_copies(2000) == 250 and eval_copies(100) == 100 and eval_copies(257) == 129  # 8, 1 and 2 rounds
    spec = EnvSpec("CartPole-v1")
    [in_rounds] = EvaluationDataset(spec.make_eval_vec(3), by_angle, seed=77, episodes=7)
    assert np.array_equal(in_rounds.numpy(), evaluate(spec.make_eval_vec(7), by_angle, seed=77))


@pytest.mark.parametrize("test_episodes", [None, 7])
def test_validation_and_test_play_the_episodes_of_their_seeds(test_episodes: int | None, tmp_path) -> None:
    """The data module's evaluation episodes are ``make_eval_vec``'s: ``data.eval_episodes`` from
    ``data.val_seed`` on, and ``data.test_episodes`` (where set, else as many) from ``data.test_seed``."""
    model = DQN(obs_dim=4, n_actions=2)
    data = GymDataModule("CartPole-v1", eval_episodes=4, test_episodes=test_episodes, val_seed=500, test_seed=900)
    [val] = quick_trainer(tmp_path, 1).validate(model, data, verbose=False)
    [test] = quick_trainer(tmp_path, 1).test(model, data, verbose=False)
    spec = EnvSpec("CartPole-v1")
    assert val["val/return_mean"] == pytest.approx(evaluate(spec.make_eval_vec(4), model.greedy_actions, 500).mean())
    returns = evaluate(spec.make_eval_vec(test_episodes or 4), model.greedy_actions, 900)
    assert test["test/return_mean"] == pytest.approx(returns.mean())


def test_datamodule_reads_sizes_from_the_env() -> None:
    assert (GymDataModule("CartPole-v1").obs_dim, GymDataModule("CartPole-v1").n_actions) == (4, 2)
    acrobot = GymDataModule("Acrobot-v1")
    assert (acrobot.obs_dim, acrobot.n_actions) == (6, 3)


@pytest.mark.parametrize(
    ("env_id", "message"),
    [("Pendulum-v1", "DQN needs Discrete actions"), ("Blackjack-v1", "Tuple.*wrappers.FlattenObservation")],
)
def test_datamodule_rejects_envs_dqn_cannot_use(env_id: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GymDataModule(env_id)


def test_module_act_is_epsilon_greedy() -> None:
    model = DQN(obs_dim=4, n_actions=2)
    obs = np.random.default_rng(0).normal(size=(500, 4)).astype(np.float32)
    greedy = model.greedy_actions(obs)
    actions, eps = model.act(obs, env_step=10**9, rng=np.random.default_rng(0))  # ε ≈ eps_end
    assert eps == pytest.approx(0.05)
    assert 0.0 < np.mean(actions != greedy) < 0.08  # only explored actions differ (half of them by chance)
    actions, eps = model.act(obs, env_step=0, rng=np.random.default_rng(0))
    assert eps == pytest.approx(0.9)
    assert np.mean(actions != greedy) > 0.3
    assert torch.equal(model(torch.as_tensor(obs)).argmax(1), torch.as_tensor(greedy))


@pytest.mark.parametrize(("num_envs", "updates_per_step"), [(1, 1.0), (1, 0.25), (4, 1.0), (2, 2.0)])
def test_replay_ratio_holds_in_transitions(num_envs: int, updates_per_step: float) -> None:
    """Before batch k the buffer got warmup + ceil((k + 1) * num_envs / updates_per_step) transitions."""
    runner = make_runner(num_envs=num_envs)
    dataset = ReplayDataset(runner, random_policy, batch_size=8, warmup_steps=32, updates_per_step=updates_per_step)
    for k, batch in zip(range(300), dataset, strict=False):
        due = 32 + int(np.ceil((k + 1) * num_envs / updates_per_step))
        assert due <= batch.env_steps < due + num_envs  # at most one vector step past what was due
    assert dataset.batches == 300


def test_runner_state_round_trip_restarts_episodes_from_saved_env_rngs() -> None:
    """Saved between episodes, a runner restored into a fresh runner with another seed collects exactly
    what the original collects next: counters, exploration RNG and the env's next reset all continue."""
    source = make_runner(seed=0)
    while True:  # run until an episode has just ended: the next step would be the autoreset
        if source.step(random_policy):
            break
    state = torch.load(_saved(source.state_dict()), weights_only=True)  # as a checkpoint stores it
    restored = make_runner(seed=123)
    restored.load_state_dict(state)
    assert (restored.env_steps, restored.episodes) == (source.env_steps, source.episodes)
    start = source.env_steps
    for runner in (source, restored):
        while runner.env_steps < start + 50:
            runner.step(random_policy)
    mine, theirs = source.buffer, restored.buffer
    assert torch.equal(mine.obs[start : start + 50], theirs.obs[:50])
    assert torch.equal(mine.actions[start : start + 50], theirs.actions[:50])
    assert torch.equal(mine.next_obs[start : start + 50], theirs.next_obs[:50])


def _saved(state: dict) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_each_batch_is_collected_with_the_latest_weights(tmp_path) -> None:
    """Lightning would prefetch one batch from an unsized stream, collecting it with the policy from
    before the latest update; the replay stream is sized so that every batch follows the update."""
    import lightning as L

    class Check(L.Callback):
        def __init__(self) -> None:
            self.updates_seen: list[int] = []

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            self.updates_seen.append(trainer.datamodule.dataset.batches - 1 - trainer.global_step)

    data = GymDataModule(batch_size=8, warmup_steps=16, eval_episodes=2, seed=0)
    check = Check()
    trainer = quick_trainer(tmp_path, 20, enable_checkpointing=False, limit_val_batches=0, callbacks=[check])
    trainer.fit(DQN(obs_dim=4, n_actions=2), datamodule=data)
    assert check.updates_seen == [0] * 20  # batch k was drawn just before update k, none ahead
    assert trainer.global_step == 20 == trainer.fit_loop.epoch_loop.batch_progress.total.completed


def test_a_fit_ended_by_an_exception_leaves_no_stream_filters_or_envs_behind(tmp_path) -> None:
    """Lightning skips ``teardown`` when a stage raises; the data module still closes its envs,
    restores the warning filters, and a later fit starts a fresh replay stream acting with its own
    model, so it learns exactly what the same fit with a new data module learns."""
    import warnings

    import lightning as L

    class FailAt(L.Callback):
        def __init__(self) -> None:
            self.envs: list = []  # the training envs of the failing fit

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == 10:
                self.envs.append(trainer.datamodule.runner.envs)
                raise RuntimeError("a callback failed")

    def fit(data: GymDataModule, steps: int, callbacks: list) -> dict:
        L.seed_everything(0, verbose=False)
        model = DQN(obs_dim=4, n_actions=2)
        trainer = quick_trainer(tmp_path, steps, enable_checkpointing=False, limit_val_batches=0, callbacks=callbacks)
        trainer.fit(model, datamodule=data)
        return {k: v.clone() for k, v in model.state_dict().items()}

    before = list(warnings.filters)
    data = GymDataModule(batch_size=8, warmup_steps=16, eval_episodes=2, seed=0)
    fail = FailAt()
    with pytest.raises(RuntimeError, match="a callback failed"):
        fit(data, 30, [fail])
    assert warnings.filters == before
    assert len(fail.envs) == 1 and fail.envs[0].closed
    assert data.runner is None and data.dataset is None
    again = fit(data, 20, [])
    fresh = fit(GymDataModule(batch_size=8, warmup_steps=16, eval_episodes=2, seed=0), 20, [])
    assert all(torch.equal(again[k], fresh[k]) for k in fresh)
