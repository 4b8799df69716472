"""The learner's plain torch calls (backward, clip, optimizer step) against Lightning's wrappers."""

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer

from lit_dqn.module import DQN
from lit_dqn.optimization import plain_calls_are_exact

from .conftest import make_cli, record_td_losses


class HookedCallback(L.Callback):
    """Overrides the hooks that only Lightning's wrappers call, and counts the calls."""

    def __init__(self) -> None:
        self.calls = {"on_after_backward": 0, "on_before_optimizer_step": 0}

    def on_after_backward(self, trainer, pl_module) -> None:
        self.calls["on_after_backward"] += 1

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.calls["on_before_optimizer_step"] += 1


def test_plain_calls_learn_and_count_exactly_what_lightnings_wrappers_do(tmp_path: Path, monkeypatch) -> None:
    """A default run takes the plain calls (Lightning's step is never called); a callback with
    backward and optimizer-step hooks switches to Lightning's wrappers, which call those hooks on
    every update. Both learn the same bit for bit and count the same updates: per-update losses,
    weights, optimizer state, ``global_step``, checkpoint names and the saved step."""
    lightning_steps = {"n": 0}
    lightning_step = LightningOptimizer.step

    def counted_step(self, *args, **kwargs):
        lightning_steps["n"] += 1
        return lightning_step(self, *args, **kwargs)

    monkeypatch.setattr(LightningOptimizer, "step", counted_step)

    def fit(root: Path, *callbacks: L.Callback) -> tuple[L.LightningModule, L.Trainer, list[float]]:
        losses = record_td_losses(monkeypatch)
        # a clip value that bites, so the two clipping paths are compared too
        short = [
            "--seed_everything=5",
            "--trainer.max_steps=400",
            "--data.warmup_steps=300",
            "--model.grad_clip_value=0.01",
        ]
        cli, _ = make_cli(root, *short, "--trainer.val_check_interval=200")
        cli.trainer.callbacks.extend(callbacks)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        return cli.model, cli.trainer, losses

    plain_model, plain, plain_losses = fit(tmp_path / "plain")
    assert lightning_steps["n"] == 0
    hooked = HookedCallback()
    wrapped_model, wrapped, wrapped_losses = fit(tmp_path / "wrapped", hooked)
    assert lightning_steps["n"] == 400
    assert hooked.calls == {"on_after_backward": 400, "on_before_optimizer_step": 400}

    assert len(plain_losses) == 400 and plain_losses == wrapped_losses  # bitwise
    assert plain.global_step == wrapped.global_step == 400
    for a, b in zip(plain_model.state_dict().values(), wrapped_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    moments = list(wrapped.optimizers[0].state_dict()["state"].values())
    for a, b in zip(plain.optimizers[0].state_dict()["state"].values(), moments, strict=True):
        assert all(torch.equal(a[key], b[key]) for key in a)
    names = [sorted(p.name for p in (root / "lightning_logs/version_0/checkpoints").iterdir()) for root in
             (tmp_path / "plain", tmp_path / "wrapped")]  # fmt: skip
    assert names[0] == names[1] and "last.ckpt" in names[0]
    last = tmp_path / "plain/lightning_logs/version_0/checkpoints/last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 400


@pytest.mark.parametrize(
    ("trainer_kwargs", "exact"),
    [
        ({}, True),
        ({"precision": "bf16-mixed"}, False),
        ({"profiler": "simple"}, False),
        ({"callbacks": [HookedCallback()]}, False),
        ({"strategy": "ddp", "devices": 2}, False),
    ],
    ids=["plain", "mixed-precision", "profiler", "hooked-callback", "ddp"],
)
def test_plain_calls_only_where_they_do_all_that_lightning_would(trainer_kwargs: dict, exact: bool) -> None:
    """DDP must all-reduce gradients, mixed precision scales and casts, a profiler times the
    wrapped calls and hooks must be called: each keeps Lightning's wrappers."""
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, **trainer_kwargs)
    trainer.strategy.connect(DQN(obs_dim=4, n_actions=2))
    assert plain_calls_are_exact(trainer) is exact
