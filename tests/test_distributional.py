"""C51 and QR-DQN: each target and loss checked by hand on its pure function, the networks' heads, and
then inside real fits with every other switch (Double DQN, dueling, n-step, prioritized replay); action
masks on the bootstrap action of both heads."""

import math
import re
import warnings

import lightning as L
import pytest
import torch
from torch import Tensor

from lit_dqn import DQN
from lit_dqn.buffer import Transitions
from lit_dqn.checkpoints import check_checkpoint_fits
from lit_dqn.checks import ConfigError
from lit_dqn.losses import (
    categorical_loss,
    categorical_targets,
    discounted_returns,
    next_actions,
    quantile_huber_loss,
    quantile_targets,
    td_targets,
)
from lit_dqn.networks import Categorical, DuelingQNetwork, NoisyLinear, QNetwork, Quantiles

from .conftest import ROOT, KeepSampledBatch, make_cli

SUPPORT = torch.tensor([-1.0, 0.0, 1.0])  # three atoms, one apart


def test_next_action_is_the_best_valid_one_of_the_chosen_net() -> None:
    next_q = torch.tensor([[1.0, 5.0, 3.0], [2.0, 0.0, 1.0]])
    online = torch.tensor([[0.0, 0.0, 9.0], [0.0, 7.0, 0.0]])
    mask = torch.tensor([[True, False, True], [True, False, True]])
    assert next_actions(next_q).tolist() == [1, 0]
    assert next_actions(next_q, online).tolist() == [2, 1]  # Double DQN: the online net picks
    assert next_actions(next_q, next_mask=mask).tolist() == [2, 0]  # 5.0 is invalid
    assert next_actions(next_q, online, mask).tolist() == [2, 0]  # the online net's 7.0 is invalid


def test_discounted_returns_by_hand() -> None:
    returns, discounts = discounted_returns(torch.tensor([1.0, 2.0]), torch.tensor([False, True]), 0.9)
    assert returns.tolist() == [1.0, 2.0] and torch.allclose(discounts, torch.tensor([0.9, 0.0]))
    rewards = torch.tensor([[1.0, 1.0, 1.0], [3.0, 0.0, 0.0]])  # n-step windows of 3 and 1 steps
    mask = torch.tensor([[True, False], [False, False]])  # the second next state has no valid action
    returns, discounts = discounted_returns(rewards, torch.tensor([False, False]), 0.5, torch.tensor([3, 1]), mask)
    assert torch.allclose(returns, torch.tensor([1.75, 3.0])) and torch.allclose(discounts, torch.tensor([0.125, 0.0]))


def test_categorical_projection_by_hand() -> None:
    next_probs = torch.tensor([[0.2, 0.3, 0.5]]).expand(4, 3)
    returns = torch.tensor([0.5, 0.0, 1.0, -3.0])
    discounts = torch.tensor([0.0, 1.0, 0.5, 1.0])
    target = categorical_targets(returns, discounts, next_probs, SUPPORT)
    expected = [
        [0.0, 0.5, 0.5],  # terminal at 0.5: halfway between atoms 0 and 1
        [0.2, 0.3, 0.5],  # r = 0, γ = 1: every atom lands on itself, the distribution is kept
        [0.0, 0.1, 0.9],  # 1 + z/2 = [0.5, 1, 1.5 -> clipped to 1]: 0.2 split, 0.3 + 0.5 on the top atom
        [1.0, 0.0, 0.0],  # below v_min: all on the lowest atom
    ]
    assert torch.allclose(target, torch.tensor(expected))
    assert torch.allclose(target.sum(dim=1), torch.ones(4))


def test_categorical_loss_is_the_cross_entropy_of_the_taken_action() -> None:
    logits = torch.zeros(2, 2, 3)
    logits[1, 1] = torch.tensor([0.2, 0.3, 0.5]).log()
    target = torch.tensor([[0.0, 0.1, 0.9], [0.0, 0.5, 0.5]])
    loss = categorical_loss(logits, torch.tensor([0, 1]), target)
    assert loss[0].item() == pytest.approx(math.log(3))  # a uniform prediction costs log K
    assert loss[1].item() == pytest.approx(-(0.5 * math.log(0.3) + 0.5 * math.log(0.5)))


def test_quantile_huber_loss_by_hand() -> None:
    quantiles = torch.tensor([[[9.0, 9.0], [0.0, 1.0]]])  # action 1's quantiles at τ̂ = 0.25, 0.75
    targets = torch.tensor([[0.5, 3.0]])
    # u = T_j − θ_i: θ_0: [0.5, 3] (weights 0.25), θ_1: [−0.5 (weight |0.75 − 1|), 2 (weight 0.75)]
    # Huber: 0.125, 2.5; 0.125, 1.5. Sum over i per target: 0.0625, 1.75; mean over targets: 0.90625
    quantiles.requires_grad_(True)
    loss = quantile_huber_loss(quantiles, torch.tensor([1]), targets)
    assert loss.tolist() == pytest.approx([0.90625])
    # ∂/∂θ_i = −mean_j w_ij · clamp(u_ij, −1, 1): θ_0: −(0.25·0.5 + 0.25·1) / 2; θ_1: −(0.25·−0.5 + 0.75·1) / 2
    loss.sum().backward()
    assert quantiles.grad.flatten().tolist() == pytest.approx([0.0, 0.0, -0.1875, -0.3125])
    # A target on a quantile (u = 0) adds nothing: θ = [0, 1], T = 1: only θ_0's 0.25 · Huber(1) = 0.125
    tie = torch.tensor([[[0.0, 1.0]]], requires_grad=True)
    quantile_huber_loss(tie, torch.tensor([0]), torch.tensor([[1.0]])).sum().backward()
    assert tie.grad.flatten().tolist() == pytest.approx([-0.25, 0.0])
    assert quantile_huber_loss(tie, torch.tensor([0]), torch.tensor([[1.0]])).tolist() == pytest.approx([0.125])
    assert torch.allclose(
        quantile_targets(torch.tensor([1.0]), torch.tensor([0.5]), targets), torch.tensor([[1.25, 2.5]])
    )


def test_quantile_regression_converges_to_the_quantiles_of_its_targets() -> None:
    """Minimising the loss against samples 0..99 puts the 4 quantiles at τ̂ = 1/8, 3/8, 5/8, 7/8 of them."""
    theta = torch.zeros(1, 1, 4, requires_grad=True)
    samples = torch.arange(100.0).unsqueeze(0)  # [1, 100]
    optimizer = torch.optim.Adam([theta], lr=0.5)
    for _ in range(2000):
        optimizer.zero_grad()
        quantile_huber_loss(theta, torch.tensor([0]), samples).sum().backward()
        optimizer.step()
    assert theta.detach().flatten().tolist() == pytest.approx([12.5, 37.5, 62.5, 87.5], abs=1.5)


def test_c51_expected_value_matches_the_scalar_target() -> None:
    """The projected target's mean is the scalar TD target wherever it stays inside [v_min, v_max]."""
    support = torch.linspace(-10, 10, 51)
    logits = torch.randn(5, 51, generator=torch.Generator().manual_seed(0))
    next_probs = torch.softmax(logits.masked_fill(support.abs() > 5, -torch.inf), dim=1)  # mass within ±5
    rewards, terminated, gamma = torch.tensor([0.3, -1.0, 2.0, 0.0, 1.5]), torch.tensor([0, 0, 1, 0, 0]).bool(), 0.9
    returns, discounts = discounted_returns(rewards, terminated, gamma)
    target = categorical_targets(returns, discounts, next_probs, support)
    scalar = td_targets(rewards, (next_probs @ support).unsqueeze(1), terminated, gamma)
    assert torch.allclose(target @ support, scalar, atol=1e-5)


def test_networks_give_mean_q_values_of_their_distributions() -> None:
    for network in (QNetwork, DuelingQNetwork):
        c51 = network(4, 3, [8], distribution=Categorical(5, -2.0, 2.0))
        obs = torch.randn(6, 4)
        logits = c51.outputs(obs)
        assert logits.shape == (6, 3, 5)
        assert torch.allclose(c51(obs), torch.softmax(logits, dim=2) @ torch.linspace(-2, 2, 5))
        qr = network(4, 3, [8], distribution=Quantiles(7))
        assert qr.outputs(obs).shape == (6, 3, 7) and torch.allclose(qr(obs), qr.outputs(obs).mean(dim=2))
    assert "distribution.support" in c51.state_dict()  # the atoms travel with the weights


def test_dueling_distributions_combine_atom_by_atom() -> None:
    net = DuelingQNetwork(2, 2, [3], distribution=Quantiles(2))
    obs = torch.randn(4, 2)
    shared = net.torso(obs)
    value, advantage = net.value(shared).unsqueeze(1), net.advantage(shared).view(4, 2, 2)  # [B, 1, N], [B, A, N]
    assert torch.allclose(net.outputs(obs), value + advantage - advantage.mean(dim=1, keepdim=True))


SHORT = ["--trainer.max_steps=300", "--data.warmup_steps=300", "--trainer.val_check_interval=300"]
EVERYTHING = [
    "--model.double_dqn=true",
    "--model.dueling=true",
    "--data.n_step=3",
    "--data.prioritized=true",
    "--model.v_min=0",
    "--model.v_max=100",
]


class HeadCheck(KeepSampledBatch):
    """Recomputes each update from the nets and the batch, with the pure functions above: the weighted
    mean of each sample's loss, and each sample's own loss as its new priority ``(loss + ε)^α``."""

    def __init__(self, head: str, alpha: float = 0.6) -> None:
        self.head, self.alpha, self.checked = head, alpha, 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        t, hp = self.transitions, pl_module.hparams
        with torch.no_grad():
            outputs, next_outputs = pl_module.policy_net.outputs(t.obs), pl_module.target_net.outputs(t.next_obs)
            distribution = pl_module.policy_net.distribution
            best = next_actions(distribution.q_values(next_outputs), pl_module.policy_net(t.next_obs))  # Double DQN
            returns, discounts = discounted_returns(t.rewards, t.terminated, hp.gamma, t.steps)
            chosen = next_outputs[torch.arange(len(best)), best]  # [B, K]
            if self.head == "c51":
                target = categorical_targets(returns, discounts, chosen.softmax(dim=1), distribution.support)
                losses = categorical_loss(outputs, t.actions, target)
            else:
                losses = quantile_huber_loss(outputs, t.actions, quantile_targets(returns, discounts, chosen))
        self.expected_loss = (t.weights * losses).mean()
        self.expected_priorities = (losses.double() + trainer.datamodule.buffer.sampler.eps) ** self.alpha

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        assert torch.allclose(outputs["loss"], self.expected_loss)
        stored = trainer.datamodule.buffer.sampler.tree.get(self.transitions.indices)
        assert torch.allclose(stored, self.expected_priorities)
        self.checked += 1


@pytest.mark.parametrize("head", ["c51", "qr_dqn"])
def test_each_head_trains_with_every_switch_on_its_own_loss_and_priorities(head: str, tmp_path) -> None:
    cli, recorder = make_cli(tmp_path, *SHORT, *EVERYTHING, f"--model.distributional={head}")
    check = HeadCheck(head)
    cli.trainer.callbacks.append(check)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert check.checked == 300 and all(math.isfinite(x) and x > 0 for x in recorder.losses)
    assert cli.trainer.callback_metrics["val/return_mean"] > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_atoms": 1}, "model.num_atoms=1 is not allowed: it must be >= 2"),
        ({"v_min": 5.0, "v_max": 5.0}, "model.v_min=5.0 is not allowed: it must be below model.v_max=5.0"),
        ({"num_quantiles": 0}, "model.num_quantiles=0 is not allowed: it must be >= 1"),
    ],
)
def test_a_bad_distribution_is_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        DQN(4, 2, distributional="c51", **kwargs)
    assert str(error.value) == message


def test_noisy_linear_by_hand() -> None:
    layer = NoisyLinear(2, 1, sigma0=0.5)
    assert torch.allclose(layer.weight_sigma, torch.full((1, 2), 0.5 / math.sqrt(2)))  # σ₀/√fan_in
    with torch.no_grad():
        layer.weight_mu.copy_(torch.tensor([[1.0, 2.0]]))
        layer.bias_mu.fill_(0.5)
        layer.weight_sigma.copy_(torch.tensor([[0.1, 0.2]]))
        layer.bias_sigma.fill_(0.3)
        layer.noise_in.copy_(torch.tensor([1.0, -2.0]))
        layer.noise_out.fill_(3.0)
    x = torch.tensor([[1.0, 1.0]])
    # weight μ + σ ⊙ (ε_out ε_inᵀ) = [1 + 0.1·3, 2 + 0.2·(−6)] = [1.3, 0.8]; bias 0.5 + 0.3·3 = 1.4
    assert layer(x).item() == pytest.approx(1.3 + 0.8 + 1.4)
    assert layer.eval()(x).item() == pytest.approx(3.5)  # eval: the means alone
    layer.reset_noise(torch.Generator().manual_seed(7))
    draws = torch.randn(2, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(layer.noise_in, draws.sign() * draws.abs().sqrt())


def test_noisy_nets_make_the_q_head_noisy() -> None:
    net = QNetwork(4, 2, [8, 8], noisy_sigma0=0.5)
    assert [type(m).__name__ for m in net.net] == ["Linear", "ReLU", "NoisyLinear", "ReLU", "NoisyLinear"]
    dueling = DuelingQNetwork(4, 2, [8, 8], distribution=Quantiles(3), noisy_sigma0=0.5)
    assert all(isinstance(m, NoisyLinear) for s in (dueling.value, dueling.advantage) for m in s[::2])
    assert isinstance(dueling.torso[0], torch.nn.Linear)


class NoiseWatch(L.Callback):
    """Each update's noise of the online and target nets' output layers, and whether greedy actions
    during training ignore it."""

    def __init__(self) -> None:
        self.online: list[Tensor] = []
        self.target: list[Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.online.append(pl_module.policy_net.net[-1].noise_out.clone())
        self.target.append(pl_module.target_net.net[-1].noise_out.clone())
        obs = batch.transitions.obs[:8].cpu().numpy()
        with torch.no_grad():
            means = pl_module.policy_net.eval()(batch.transitions.obs[:8]).argmax(dim=1).tolist()
            pl_module.policy_net.train()
        assert pl_module.greedy_actions(obs).tolist() == means and pl_module.policy_net.training


def test_noisy_nets_draw_new_noise_every_update_and_act_greedily_without_it(tmp_path) -> None:
    noisy = ["--model.noisy=true", "--model.eps_start=0", "--model.eps_end=0"]
    cli, recorder = make_cli(tmp_path, *SHORT, *noisy)
    watch = NoiseWatch()
    cli.trainer.callbacks.append(watch)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert len(watch.online) == 300 and all(math.isfinite(x) for x in recorder.losses)
    assert all(
        not torch.equal(a, b) for a, b in zip(watch.online, watch.online[1:], strict=False)
    )  # new noise each update
    assert all(not torch.equal(a, b) for a, b in zip(watch.online, watch.target, strict=True))  # drawn independently


@pytest.mark.parametrize(("v_min", "v_max", "warned"), [(-0.5, 0.5, True), (-100.0, 0.0, False)])
def test_c51_warns_once_when_its_atoms_cannot_hold_the_returns(
    v_min: float, v_max: float, warned: bool, tmp_path
) -> None:
    """Acrobot's returns reach −100: a range that cannot hold them (C51's default ±10, once the net
    has learned them; ±0.5 from the first update, its −1 rewards alone leaving it) squashes every
    target onto its lowest atom and the net learns little, silently. Most mean targets outside the
    range is one warning, however many logging steps; a range that covers the returns is none."""
    args = ["--model.distributional=c51", f"--model.v_min={v_min}", f"--model.v_max={v_max}"]
    args += ["--trainer.max_steps=400", "--trainer.log_every_n_steps=100", "--trainer.val_check_interval=400"]
    args += ["--data.eval_episodes=1", "--trainer.enable_progress_bar=false"]
    cli, _ = make_cli(tmp_path, *args, config=ROOT / "configs" / "acrobot.yaml")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    range_warnings = [str(w.message) for w in caught if str(w.message).startswith("C51:")]
    assert len(range_warnings) == int(warned), range_warnings
    if warned:
        assert re.match(
            r"C51: \d+% of the mean TD targets of the last 100 updates fell outside .* = \[-0.5, 0.5\]",
            range_warnings[0],
        )


def checkpoint_of(model: DQN) -> dict:
    """What a checkpoint holds of a model: its state dict and hyperparameters, as Lightning saves them."""
    return {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}


def test_a_checkpoint_fits_only_a_network_built_alike_c51_atoms_included() -> None:
    """C51's atoms are a buffer of one shape whatever v_min and v_max: another range loaded without a
    word, and the net went on with the checkpoint's atoms while config.yaml said the new ones."""
    c51 = DQN(4, 2, distributional="c51", v_min=0.0, v_max=100.0)
    check_checkpoint_fits(checkpoint_of(c51), DQN(4, 2, distributional="c51", v_min=0.0, v_max=100.0), "x.ckpt")
    with pytest.raises(ConfigError, match=r"trained with v_max=100.0, the config gives v_max=200.0 \(C51's atoms\)"):
        check_checkpoint_fits(checkpoint_of(c51), DQN(4, 2, distributional="c51", v_min=0.0, v_max=200.0), "x.ckpt")
    # another switch of the head is named, not only the sizes every network shares
    with pytest.raises(ConfigError, match=r"trained with noisy=False, the config gives noisy=True \(missing"):
        check_checkpoint_fits(
            checkpoint_of(c51), DQN(4, 2, distributional="c51", v_min=0.0, v_max=100.0, noisy=True), "x"
        )
    quantiles = DQN(4, 2, distributional="qr_dqn", v_max=100.0)  # v_min, v_max: not QR-DQN's, free to differ
    check_checkpoint_fits(checkpoint_of(quantiles), DQN(4, 2, distributional="qr_dqn"), "x.ckpt")
    # another head of the same shapes: the plain head's Q-values as 1 quantile, C51's 51 logits as 51 quantiles
    plain = DQN(4, 2)
    with pytest.raises(ConfigError, match=r"distributional=None.*distributional='qr_dqn'.*another kind of Q-value"):
        check_checkpoint_fits(checkpoint_of(plain), DQN(4, 2, distributional="qr_dqn", num_quantiles=1), "x.ckpt")
    with pytest.raises(ConfigError, match=r"distributional='c51'.*distributional='qr_dqn'.*another kind of Q-value"):
        check_checkpoint_fits(checkpoint_of(c51), DQN(4, 2, distributional="qr_dqn", num_quantiles=51), "x.ckpt")


@pytest.mark.parametrize("head", ["c51", "qr_dqn"])
@pytest.mark.parametrize("double", [False, True])
def test_action_masks_limit_every_heads_bootstrap_action(head: str, double: bool) -> None:
    """The next state's best action is the best *valid* one by mean Q (the online net's with Double
    DQN), and a next state with no valid action bootstraps nothing, for C51 and QR-DQN alike."""
    model = DQN(4, 3, distributional=head, double_dqn=double, num_atoms=3, v_min=-1.0, v_max=1.0, num_quantiles=3)
    support = torch.tensor([-1.0, 0.0, 1.0])
    # Per action, a distribution whose mean is -1, 0 or 1: action 2 is the best by far, action 0 the worst.
    logits = torch.tensor([[9.0, 0.0, 0.0], [0.0, 9.0, 0.0], [0.0, 0.0, 9.0]])  # C51: mass on one atom
    quantiles = torch.tensor([[-1.0, -1.0, -1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])  # QR-DQN: three equal
    next_outputs = (logits if head == "c51" else quantiles).expand(2, 3, 3)  # [B=2, n_actions, K]
    online = torch.tensor([[3.0, 1.0, 9.0], [3.0, 1.0, 9.0]]) if double else None  # online: 2, then 0
    mask = torch.tensor([[True, True, False], [False, False, False]])  # 2 invalid; no valid action at all
    batch = Transitions(
        torch.zeros(2, 4), torch.tensor([0, 0]), torch.tensor([0.5, 0.5]), torch.zeros(2, 4),
        torch.tensor([False, False]), next_mask=mask,
    )  # fmt: skip
    outputs = torch.tensor([-1.0, 0.0, 2.0]).expand(
        2, 3, 3
    )  # not uniform: a uniform C51 row has one loss for every target
    losses = model._distributional_losses(outputs, next_outputs, online, batch)
    best = 0 if double else 1  # valid actions only: the online net's 0, or the target's best valid, 1 (not 2)
    returns, discounts = torch.tensor([0.5, 0.5]), torch.tensor([0.99, 0.0])  # no valid action: no bootstrap
    if head == "c51":
        expected = categorical_loss(
            outputs, batch.actions, categorical_targets(returns, discounts, next_outputs[:, best].softmax(1), support)
        )
    else:
        expected = quantile_huber_loss(
            outputs, batch.actions, quantile_targets(returns, discounts, next_outputs[:, best])
        )
    assert torch.allclose(losses, expected)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"distributional": "C51"}, r"model.distributional='C51' is not allowed: c51, qr_dqn or null"),
        ({"distributional": "c51", "v_min": -1e39}, r"model.v_min=-1e\+39 is not allowed"),
        ({"distributional": "c51", "v_max": 3e38}, r"model.v_max=3e\+38 is not allowed"),
    ],
)
def test_a_head_python_asks_for_by_another_name_or_range_is_refused(kwargs: dict, message: str) -> None:
    """``DQN(distributional="C51")`` trained the plain head without a word (the CLI's Literal refuses
    it, a Python call did not); a range past float32 crashed in the atoms' linspace."""
    with pytest.raises(ConfigError, match=message):
        DQN(4, 2, **kwargs)
