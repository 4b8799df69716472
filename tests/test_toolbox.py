"""The DQN toolbox switches: dueling head, hard target updates, linear ε, prioritized replay, each
checked by hand on its pure function and then inside a real fit on a real env."""

import itertools
import subprocess
import sys

import lightning as L
import pytest
import torch

from lit_dqn.exploration import linear_epsilon
from lit_dqn.losses import td_errors, td_loss
from lit_dqn.networks import DuelingQNetwork, QNetwork
from lit_dqn.prioritized import PrioritizedReplayBuffer

from .conftest import make_cli

SHORT = ["--trainer.max_steps=300", "--data.warmup_steps=300", "--trainer.val_check_interval=300"]


def test_dueling_head_is_value_plus_centred_advantage() -> None:
    net = DuelingQNetwork(2, 3, hidden_sizes=[4])
    with torch.no_grad():
        net.torso[0].weight.copy_(torch.eye(4, 2))  # features = relu([x0, x1, 0, 0])
        net.torso[0].bias.zero_()
        net.value.weight.copy_(torch.tensor([[1.0, 1.0, 0.0, 0.0]]))
        net.value.bias.fill_(0.5)
        net.advantage.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 0]]))
        net.advantage.bias.copy_(torch.tensor([0.0, 0.0, 3.0]))
    q = net(torch.tensor([[1.0, 2.0], [-1.0, 4.0]]))
    # row 0: V = 3.5, A = [1, 2, 3], mean 2 -> [2.5, 3.5, 4.5]; row 1: relu -> [0, 4]: V = 4.5, A = [0, 4, 3]
    assert torch.allclose(q, torch.tensor([[2.5, 3.5, 4.5], [4.5 - 7 / 3, 4.5 + 4 - 7 / 3, 4.5 + 3 - 7 / 3]]))
    assert net(torch.zeros(5, 2)).shape == (5, 3)


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
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            seen.append((batch.env_steps, batch.epsilon))

    cli.trainer.callbacks.append(Record())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    span = 0.5 * (300 + 300)  # half of the env steps 300 updates take after a 300-step warm-up
    assert cli.model._eps_span == span
    for env_steps, eps in seen:  # ε of the latest action, taken at env_steps - 1 (or earlier, at an autoreset)
        assert linear_epsilon(env_steps, 1.0, 0.05, span) <= eps <= linear_epsilon(env_steps - 2, 1.0, 0.05, span)
    assert seen[-1][1] == pytest.approx(0.05)


def test_prioritized_replay_in_a_real_fit(tmp_path) -> None:
    cli, _ = make_cli(tmp_path, *SHORT, "--data.prioritized=true", "--data.priority_beta=0.4")

    class Record(L.Callback):
        def __init__(self) -> None:
            self.batches = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.batches.append((batch.transitions.indices, batch.transitions.weights))

        def on_train_end(self, trainer, pl_module) -> None:
            self.buffer, self.beta = trainer.datamodule.buffer, trainer.datamodule.dataset.beta

    record = Record()
    cli.trainer.callbacks.append(record)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    buffer = record.buffer
    assert isinstance(buffer, PrioritizedReplayBuffer)
    assert len(record.batches) == 300 and all(w.min() > 0 and w.max() == 1.0 for _, w in record.batches)
    priorities = buffer.tree.get(torch.arange(len(buffer)))
    # sampled slots got (|δ| + ε)^α as their priority, mostly below the max they entered with
    sampled = torch.unique(torch.cat([i for i, _ in record.batches]))
    assert (priorities[sampled] < buffer.max_priority).float().mean() > 0.5
    assert buffer.tree.total.item() == pytest.approx(priorities.sum().item(), rel=1e-4)
    assert record.beta(0) == 0.4 and record.beta(150) == pytest.approx(0.7) and record.beta(300) == 1.0


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
