"""Image observations: the CNN torso chosen from the observation's shape and the env's layout,
compact frames in replay, and MinAtar (the minatar extra) end to end."""

import subprocess
import sys

import numpy as np
import torch

from lit_dqn.buffer import ReplayBuffer
from lit_dqn.envs import EnvSpec
from lit_dqn.networks import DuelingQNetwork, ImageEncoder, QNetwork

from .conftest import ROOT, make_cli, skip_without_extra

MINATAR = "MinAtar/Breakout-v1"


def test_the_torso_follows_the_observation_shape() -> None:
    atari = ImageEncoder((4, 84, 84), "channels_first")  # channel-first frame stack: the Nature CNN
    assert not atari.channels_last and atari.out_features == 64 * 7 * 7
    assert [m.kernel_size for m in atari.modules() if isinstance(m, torch.nn.Conv2d)] == [(8, 8), (4, 4), (3, 3)]
    minatar = ImageEncoder((10, 10, 4), "channels_last")  # channel-last grid: the MinAtar paper's one convolution
    assert minatar.channels_last and minatar.out_features == 16 * 8 * 8
    assert [m.out_channels for m in minatar.modules() if isinstance(m, torch.nn.Conv2d)] == [16]
    net = QNetwork(400, 3, [128], obs_shape=(10, 10, 4), image_layout="channels_last")
    linears = [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert linears == [(1024, 128), (128, 3)]
    assert net(torch.zeros(5, 10, 10, 4, dtype=torch.bool)).shape == (5, 3)
    dueling = DuelingQNetwork(400, 3, [128], obs_shape=(10, 10, 4), image_layout="channels_last")
    assert dueling(torch.ones(2, 10, 10, 4)).shape == (2, 3)
    flat = QNetwork(4, 2, [8], obs_shape=(4,))
    assert flat.encoder is None and [k for k in flat.state_dict()] == [
        "net.0.weight",
        "net.0.bias",
        "net.2.weight",
        "net.2.bias",
    ]


def test_channel_last_and_uint8_frames_are_read_as_channel_first_floats() -> None:
    torch.manual_seed(0)
    last = ImageEncoder((10, 10, 3), "channels_last")
    first = ImageEncoder((3, 10, 10), "channels_first")
    first.load_state_dict(last.state_dict())
    frames = torch.randint(0, 256, (2, 10, 10, 3), dtype=torch.uint8)  # [B, H, W, C]
    expected = first(frames.permute(0, 3, 1, 2).float() / 255)  # [B, C, H, W] in [0, 1]
    assert torch.allclose(last(frames), expected)
    assert torch.equal(last(frames.bool()), last(frames.bool().float()))


def test_replay_stores_frames_in_their_own_dtype() -> None:
    buffer = ReplayBuffer(100, (10, 10, 4), obs_dtype=torch.bool, seed=0)
    obs = np.random.default_rng(0).random((3, 10, 10, 4)) > 0.5
    buffer.push(obs, [0, 1, 2], [1.0, 0.0, 1.0], ~obs, [False, False, True])
    assert buffer.obs.dtype == torch.bool and buffer.nbytes == 100 * (2 * 400 + 8 + 4 + 1)
    batch = buffer.sample(3)
    assert batch.obs.dtype == torch.bool and batch.obs.shape == (3, 10, 10, 4)
    stored = {bytes(buffer.obs[k].numpy().tobytes()) for k in range(3)}
    assert all(bytes(o.numpy().tobytes()) in stored for o in batch.obs)
    assert torch.equal(batch.next_obs, ~batch.obs)


def test_minatar_registers_and_its_spaces_are_images() -> None:
    skip_without_extra(MINATAR)
    observation_space, n_actions, layout = EnvSpec(MINATAR).check()
    assert observation_space.shape == (10, 10, 4) and observation_space.dtype == np.bool_ and n_actions == 3
    assert layout == "channels_last"


def test_minatar_config_trains_with_bool_frames(tmp_path) -> None:
    skip_without_extra(MINATAR)
    tiny = ["--trainer.max_steps=200", "--trainer.val_check_interval=100", "--data.warmup_steps=256"]
    cli, recorder = make_cli(tmp_path, *tiny, "--data.eval_episodes=2", config=ROOT / "configs/minatar_breakout.yaml")
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert len(recorder.losses) == 200 and all(np.isfinite(recorder.losses))
    assert cli.datamodule.buffer is None  # released at the end of fit; the checkpoint has it
    saved = torch.load(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    obs = saved["GymDataModule"]["buffer"]["storage"]["obs"]
    assert obs.dtype == torch.bool and obs.shape == (456, 10, 10, 4)
    assert saved["hyper_parameters"]["obs_shape"] == [10, 10, 4]
    assert "policy_net.encoder.convs.0.weight" in saved["state_dict"]


def test_without_minatar_its_configs_name_the_extra(tmp_path) -> None:
    code = (
        "import sys; sys.modules['minatar'] = None\n"
        "from lit_dqn.cli import main\n"
        "sys.exit(main(['fit', '--config', 'configs/minatar_breakout.yaml']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "lit_dqn: error: data.env_id='MinAtar/Breakout-v1' needs the minatar extra: pip install \"lit-dqn[minatar]\""
    )
