"""The DQN toolbox switches: dueling head, hard target updates, linear ε, prioritized replay, each
checked by hand on its pure function and then inside a real fit on a real env."""

import itertools
import subprocess
import sys

import lightning as L
import pytest
import torch

from lit_dqn.exploration import linear_epsilon
from lit_dqn.losses import td_errors, td_loss, td_targets
from lit_dqn.networks import DuelingQNetwork, QNetwork

from .conftest import KeepSampledBatch, make_cli

SHORT = ["--trainer.max_steps=300", "--data.warmup_steps=300", "--trainer.val_check_interval=300"]


def test_dueling_head_is_value_plus_centred_advantage() -> None:
    net = DuelingQNetwork(2, 3, hidden_sizes=[4])  # no shared layer: each stream has its own hidden layer
    with torch.no_grad():
        for stream in (net.value, net.advantage):
            stream[0].weight.copy_(torch.eye(4, 2))  # hidden = relu([x0, x1, 0, 0])
            stream[0].bias.zero_()
        net.value[2].weight.copy_(torch.tensor([[1.0, 1.0, 0.0, 0.0]]))
        net.value[2].bias.fill_(0.5)
        net.advantage[2].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 0]]))
        net.advantage[2].bias.copy_(torch.tensor([0.0, 0.0, 3.0]))
    q = net(torch.tensor([[1.0, 2.0], [-1.0, 4.0]]))
    # row 0: V = 3.5, A = [1, 2, 3], mean 2 -> [2.5, 3.5, 4.5]; row 1: relu -> [0, 4]: V = 4.5, A = [0, 4, 3]
    assert torch.allclose(q, torch.tensor([[2.5, 3.5, 4.5], [4.5 - 7 / 3, 4.5 + 4 - 7 / 3, 4.5 + 3 - 7 / 3]]))
    assert net(torch.zeros(5, 2)).shape == (5, 3)


def test_dueling_streams_split_after_the_shared_layers() -> None:
    net = DuelingQNetwork(6, 3, hidden_sizes=[8, 4])
    shapes = {name: tuple(p.shape) for name, p in net.named_parameters() if name.endswith("weight")}
    assert shapes == {
        "torso.0.weight": (8, 6),
        "value.0.weight": (4, 8),
        "value.2.weight": (1, 4),
        "advantage.0.weight": (4, 8),
        "advantage.2.weight": (3, 4),
    }


def test_plain_q_network_keeps_its_layout() -> None:
    """Checkpoints written before the toolbox keep loading: the plain MLP's parameter names are unchanged."""
    assert list(QNetwork(4, 2, [8]).state_dict()) == ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]


def test_linear_epsilon_by_hand() -> None:
    assert linear_epsilon(0, 1.0, 0.1, 1000) == 1.0
    assert linear_epsilon(500, 1.0, 0.1, 1000) == pytest.approx(0.55)
    assert linear_epsilon(1000, 1.0, 0.1, 1000) == pytest.approx(0.1)
    assert linear_epsilon(10**6, 1.0, 0.1, 1000) == pytest.approx(0.1)


def test_weighted_td_loss_and_errors_by_hand() -> None:
    q = torch.tensor([[0.0, 0.2], [3.0, 0.0]])
    actions, targets = torch.tensor([1, 0]), torch.tensor([0.0, 0.0])
    huber = torch.tensor([0.5 * 0.2**2, 3.0 - 0.5])
    assert td_loss(q, actions, targets, torch.ones(2)).item() == pytest.approx(td_loss(q, actions, targets).item())
    weights = torch.tensor([1.0, 0.25])
    assert td_loss(q, actions, targets, weights).item() == pytest.approx((huber * weights).mean().item())
    assert td_errors(q, actions, torch.tensor([1.0, 1.0])).tolist() == pytest.approx([0.8, 2.0])


class TargetWatch(L.Callback):
    """Before each update (so after the previous one and its target update): do the nets agree?"""

    def __init__(self) -> None:
        self.equal: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        pairs = zip(pl_module.target_net.parameters(), pl_module.policy_net.parameters(), strict=True)
        self.equal.append(all(torch.equal(t, p) for t, p in pairs))


def test_hard_target_update_copies_every_k_updates(tmp_path) -> None:
    cli, _ = make_cli(tmp_path, *SHORT, "--model.tau=1.0", "--model.target_update_interval=40")
    watch = TargetWatch()
    cli.trainer.callbacks.append(watch)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert len(watch.equal) == 300
    # the nets start equal; update k copies when k % 40 == 0; in between the online net moves away
    assert [k for k, equal in enumerate(watch.equal) if equal] == list(range(0, 300, 40))


def test_soft_update_every_k_updates(tmp_path) -> None:
    cli, _ = make_cli(tmp_path, *SHORT, "--model.tau=0.5", "--model.target_update_interval=3")
    target_before = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            target_before.append(pl_module.target_net.net[0].weight.clone())

    cli.trainer.callbacks.append(Record())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    moved = [not torch.equal(a, b) for a, b in itertools.pairwise(target_before)]
    assert [k for k, m in enumerate(moved, start=1) if m] == list(range(3, 300, 3))


def test_linear_epsilon_spans_its_share_of_training(tmp_path) -> None:
    cli, _ = make_cli(tmp_path, *SHORT, "--model.eps_schedule=linear", "--model.eps_fraction=0.5")
    seen: list[tuple[int, float]] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            seen.append((batch.env_steps, batch.epsilon))

    cli.trainer.callbacks.append(Record())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    span = 0.5 * (300 + 300)  # half of the env steps 300 updates take after a 300-step warm-up
    assert cli.model._eps_span == span
    for env_steps, eps in seen:  # ε of the latest action, taken at env_steps - 1 (or earlier, at an autoreset)
        assert linear_epsilon(env_steps, 1.0, 0.05, span) <= eps <= linear_epsilon(env_steps - 2, 1.0, 0.05, span)
    assert seen[-1][1] == pytest.approx(0.05)


class PrioritizedCheck(KeepSampledBatch):
    """Recomputes, from the nets and the sum-tree before each update, what the update must use and leave:
    the IS weights at this step's β, the weighted loss, and the new priorities (|δ| + ε)^α."""

    def __init__(self, beta_start: float, alpha: float) -> None:
        self.beta_start, self.alpha = beta_start, alpha
        self.checked = self.weighted = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        """After the backward pass, before the weights and priorities change."""
        t, buffer = self.transitions, trainer.datamodule.buffer
        beta = self.beta_start + (1 - self.beta_start) * trainer.global_step / trainer.max_steps
        probabilities = buffer.sampler.tree.get(t.indices) / buffer.sampler.tree.total
        weights = (len(buffer) * probabilities) ** -beta
        assert torch.allclose(t.weights, (weights / weights.max()).float())
        with torch.no_grad():
            q = pl_module.policy_net(t.obs)
            next_target, next_online = pl_module.target_net(t.next_obs), pl_module.policy_net(t.next_obs)
            targets = td_targets(t.rewards, next_target, t.terminated, 0.99, next_online, t.steps)
        self.expected_loss = td_loss(q, t.actions, targets, t.weights)
        self.expected_priorities = (td_errors(q, t.actions, targets).double() + buffer.sampler.eps) ** self.alpha
        if not torch.all(t.weights == 1):  # once priorities differ, the weights change the loss
            assert not torch.allclose(self.expected_loss, td_loss(q, t.actions, targets))
            self.weighted += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        assert torch.allclose(outputs["loss"], self.expected_loss)
        stored = trainer.datamodule.buffer.sampler.tree.get(self.transitions.indices)
        assert torch.allclose(stored, self.expected_priorities)
        self.checked += 1


def test_prioritized_replay_in_a_real_fit(tmp_path) -> None:
    overrides = ("--data.prioritized=true", "--data.priority_beta=0.4", "--data.priority_alpha=0.7")
    cli, _ = make_cli(tmp_path, *SHORT, *overrides)
    check = PrioritizedCheck(beta_start=0.4, alpha=0.7)
    cli.trainer.callbacks.append(check)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert check.checked == 300 and check.weighted >= 290


def test_all_switches_together_are_deterministic(tmp_path) -> None:
    switches = [
        "--model.dueling=true",
        "--data.prioritized=true",
        "--model.tau=1.0",
        "--model.target_update_interval=50",
        "--model.eps_schedule=linear",
        "--seed_everything=2",
    ]
    runs = []
    for name in ("a", "b"):
        cli, recorder = make_cli(tmp_path / name, *SHORT, *switches)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        runs.append((recorder.losses, cli.model.state_dict()))
    assert len(runs[0][0]) == 300 and runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1].values(), runs[1][1].values(), strict=True))


def test_an_env_whose_extra_is_missing_names_the_extra(tmp_path) -> None:
    """Without Box2D (blocked here at import), a LunarLander config fails with one line naming the extra."""
    code = (
        "import sys; sys.modules['Box2D'] = None\n"
        "from lit_dqn.cli import main\n"
        "sys.exit(main(['fit', '--config', 'configs/cartpole.yaml', '--data.env_id=LunarLander-v3']))\n"
    )
    from .conftest import ROOT

    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("lit_dqn: error:")]
    assert errors == [
        "lit_dqn: error: data.env_id='LunarLander-v3' needs the box2d extra: pip install \"lit-dqn[box2d]\""
    ]
