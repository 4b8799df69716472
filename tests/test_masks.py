"""Action masks: read from ``info["action_mask"]`` or ``env.action_masks()``, used when exploring,
acting greedily, evaluating and recording, kept in replay for the next state, and applied to the TD
target's max and Double DQN's argmax."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from lit_dqn import DQN, GymDataModule
from lit_dqn.buffer import ReplayBuffer
from lit_dqn.checks import ConfigError
from lit_dqn.envs import EnvSpec
from lit_dqn.frames import FrameReplayBuffer
from lit_dqn.losses import td_targets
from lit_dqn.sampling import PrioritizedSampler, UniformSampler

from . import own_envs  # noqa: F401  (registers the Strict envs)
from .conftest import quick_trainer

NEXT_Q = torch.tensor([[1.0, 5.0, 3.0], [2.0, 0.0, 9.0], [4.0, 4.0, 4.0]])  # [B=3, n_actions=3]
MASK = torch.tensor([[True, False, True], [False, True, False], [False, False, False]])


def test_the_target_max_runs_over_the_next_states_valid_actions() -> None:
    rewards, terminated = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([False, False, False])
    targets = td_targets(rewards, NEXT_Q, terminated, 0.5, next_mask=MASK)
    # max over valid: 3 (not the invalid 5), 0 (not 9); no valid action at all bootstraps 0, not -inf
    assert targets.tolist() == [1.0 + 0.5 * 3.0, 1.0 + 0.5 * 0.0, 1.0]
    assert td_targets(rewards, NEXT_Q, terminated, 0.5).tolist() == [3.5, 5.5, 3.0]  # unmasked, for contrast


def test_double_dqn_picks_the_best_valid_action_of_the_online_net() -> None:
    online = torch.tensor([[0.0, 9.0, 1.0], [5.0, 1.0, 7.0], [1.0, 2.0, 3.0]])  # unmasked argmax: 1, 2, 2
    terminated = torch.tensor([False, False, True])
    targets = td_targets(torch.zeros(3), NEXT_Q, terminated, 1.0, next_q_online=online, next_mask=MASK)
    assert targets.tolist() == [3.0, 0.0, 0.0]  # valid argmax 2 -> Q'=3; only 1 -> Q'=0; none (and terminal) -> 0
    assert torch.isfinite(targets).all()


def test_exploration_and_greedy_actions_are_valid_ones() -> None:
    model = DQN(obs_dim=4, n_actions=4, eps_start=1.0, eps_end=1.0)
    rng = np.random.default_rng(0)
    mask = np.zeros((2000, 4), dtype=bool)
    mask[np.arange(2000), rng.integers(4, size=2000)] = True
    mask[np.arange(2000), rng.integers(4, size=2000)] = True
    obs = rng.normal(size=(2000, 4)).astype(np.float32)
    actions, _ = model.act(obs, 0, rng, mask)  # ε = 1: all random
    assert mask[np.arange(2000), actions].all()
    two_valid = mask.sum(1) == 2
    first = np.argmax(mask, axis=1)
    share = np.mean(actions[two_valid] == first[two_valid])
    assert 0.45 < share < 0.55  # uniform over the valid actions
    greedy = model.greedy_actions(obs, mask)
    q = model(torch.as_tensor(obs)).masked_fill(~torch.as_tensor(mask), -torch.inf)
    assert np.array_equal(greedy, q.argmax(1).numpy()) and mask[np.arange(2000), greedy].all()


@pytest.mark.parametrize("kind", ["uniform", "prioritized"])
def test_replay_keeps_the_mask_of_the_window_s_last_next_state(kind: str) -> None:
    sampler = PrioritizedSampler if kind == "prioritized" else UniformSampler
    buffer = ReplayBuffer(16, (1,), seed=0, n_step=3, action_mask_size=3, sampler=sampler())
    masks = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1]], dtype=bool)
    for t in range(5):  # one episode of 5 steps; transition t's next state has mask t
        buffer.push([[float(t)]], [0], [1.0], [[t + 1.0]], [t == 4], continues=[t < 4], next_masks=masks[t : t + 1])
    batch = buffer._gather(torch.arange(5))
    last = [2, 3, 4, 4, 4]  # a 3-step window from t ends at min(t + 2, 4)
    assert torch.equal(batch.next_mask, torch.as_tensor(masks[last]))
    restored = ReplayBuffer(16, (1,), seed=1, n_step=3, action_mask_size=3, sampler=sampler())
    restored.load_state_dict(buffer.state_dict())  # resume keeps them
    assert torch.equal(restored._gather(torch.arange(5)).next_mask, batch.next_mask)
    old = ReplayBuffer(16, (1,), seed=0, n_step=3)
    old.push([[0.0]], [0], [1.0], [[1.0]], [False])
    restored.load_state_dict(old.state_dict())  # a buffer saved without masks: every action valid
    assert restored.next_mask[: restored.size].all()


def test_the_frame_ring_keeps_next_masks() -> None:
    ring = FrameReplayBuffer(64, (2, 3, 3), seed=0, action_mask_size=2)
    frames = np.arange(6 * 9, dtype=np.uint8).reshape(6, 3, 3)
    for t in range(4):
        obs, next_obs = frames[[t, t + 1]][None], frames[[t + 1, t + 2]][None]
        ring.push(obs, [0], [0.0], next_obs, [False], next_masks=np.array([[t % 2 == 0, True]]))
    for _ in range(8):
        batch = ring.sample(4)
        newest = batch.next_obs[:, -1, 0, 0].long() // 9 - 2  # which t each sampled transition is
        assert torch.equal(batch.next_mask[:, 0], newest % 2 == 0) and batch.next_mask[:, 1].all()


def data_for(env_id: str, **kwargs) -> GymDataModule:
    return GymDataModule(env_id, action_masks=True, batch_size=16, warmup_steps=64, eval_episodes=4, seed=0, **kwargs)


@pytest.mark.parametrize("env_id", ["tests.own_envs:Strict-v0", "tests.own_envs:StrictMethod-v0"])
def test_a_strict_env_never_gets_an_invalid_action_in_training_validation_or_video(env_id: str, tmp_path) -> None:
    """``Strict`` raises on an invalid action: exploring, the greedy actions, the validation episodes
    (several sub-envs) and the recorded video all pass through it, and the learner finds the
    rewarded action among the valid ones."""
    data = data_for(env_id, num_envs=2, n_step=3, prioritized=True)
    assert data.env_spec.masks().source == ("method" if "Method" in env_id else "info")
    model = DQN(data.obs_dim, data.n_actions, hidden_sizes=[32], lr=1e-3, gamma=0.5, eps_decay=200.0)
    trainer = quick_trainer(
        tmp_path, 800, val_check_interval=400, check_val_every_n_epoch=None, enable_checkpointing=False
    )
    trainer.fit(model, datamodule=data)
    assert float(trainer.callback_metrics["val/return_mean"]) >= 18  # of 20: the highest valid action, nearly always
    from lit_dqn.video import greedy_policy, record_episodes

    [recording], _ = record_episodes(greedy_policy(model.policy_net), data.env_spec, tmp_path, 1, 0, None)
    assert recording.length == 20


def test_the_replay_of_taxi_keeps_each_next_states_own_mask() -> None:
    """Every stored transition of Taxi holds Taxi's own mask for its next state, and every action
    taken was valid in its state."""
    data = data_for("Taxi-v4", num_envs=2)
    data.trainer = None
    taxi = gym.make("Taxi-v4").unwrapped
    from lit_dqn.rollout import EnvRunner

    buffer = ReplayBuffer(3000, (500,), seed=0, num_envs=2, action_mask_size=6)
    model = DQN(500, 6, eps_start=1.0, eps_end=1.0)
    runner = EnvRunner(data.env_spec.make_vec(2), buffer, seed=0, masks=data.env_spec.masks())
    while runner.env_steps < 2500:  # with autoresets: episodes of 200 steps end and start again
        runner.step(model.act)
    states = buffer.obs[: buffer.size].argmax(1).tolist()
    next_states = buffer.next_obs[: buffer.size].argmax(1).tolist()
    expected = torch.as_tensor(np.array([taxi.action_mask(s) for s in next_states]).astype(bool))
    assert torch.equal(buffer.next_mask[: buffer.size], expected)
    valid = np.array([taxi.action_mask(s) for s in states]).astype(bool)
    assert valid[np.arange(buffer.size), buffer.actions[: buffer.size].numpy()].all()


def test_masks_asked_of_an_env_that_has_none_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"data.action_masks=true, but CartPole-v1 provides no action mask"):
        data_for("CartPole-v1")
    # masks in the reset's info only: every later step would count every action valid, silently
    with pytest.raises(ConfigError, match=r"ResetOnlyMask-v0 gives info\['action_mask'\] from reset only"):
        data_for("tests.own_envs:ResetOnlyMask-v0")
    assert EnvSpec("tests.own_envs:ResetOnlyMaskMethod-v0", action_masks=True).masks().source == "method"
    assert EnvSpec("CartPole-v1").masks() is None  # masks off: nothing read
