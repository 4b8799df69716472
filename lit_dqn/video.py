"""Videos of the greedy agent: episodes rendered headless, written as mp4, and shown in TensorBoard.

Frames come from ``render_mode="rgb_array"`` through Gymnasium's ``RenderCollection`` wrapper. The
``video`` extra (``pip install "lit-dqn[video]"``) brings imageio-ffmpeg, which encodes mp4 with
its own ffmpeg build; without it the video is an animated GIF (Pillow).
"""

import contextlib
import copy
import io
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import gymnasium as gym
import lightning as L
import numpy as np
import torch
from gymnasium.wrappers import RenderCollection
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from lit_dqn.checkpoints import checkpoint_in, latest_last_checkpoint, read_checkpoint
from lit_dqn.checks import ConfigError, check_writable
from lit_dqn.envs import EVAL_STEP_CAP, EnvSpec
from lit_dqn.module import DQN
from lit_dqn.networks import greedy_actions
from lit_dqn.rollout import check_stop, stop_on_signals
from lit_dqn.scalars import run_dir

VIDEO_EXTRA = 'pip install "lit-dqn[video]"'


class Recording(NamedTuple):
    """One recorded episode."""

    path: Path
    episode_return: float
    length: int  # env steps; the video has length + 1 frames, the reset frame first
    fps: float


def has_mp4_encoder() -> bool:
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    return True


def make_render_env(spec: EnvSpec) -> RenderCollection:
    """The env drawing ``rgb_array`` frames, each episode's frames collected; one-line error if it cannot draw."""
    # Off-screen frames need no display; without this, SDL looks for one and prints an error headless.
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    env_id = spec.env_id
    try:
        # Gymnasium's env checker would warn about MinAtar's float frames, which viewable() converts.
        env = RenderCollection(spec.make(render_mode="rgb_array", disable_env_checker=True))
        env.reset(seed=0)
        frames = env.render()  # the first draw is where a missing pygame shows
    except gym.error.DependencyNotInstalled:
        raise ConfigError(f"drawing {env_id} needs the video extra: {VIDEO_EXTRA}") from None
    except (TypeError, ValueError, gym.error.Error) as error:  # an env with no rgb_array rendering
        raise ConfigError(f"{env_id} cannot draw rgb_array frames: {str(error).splitlines()[0]}") from None
    if not frames or not isinstance(frames[-1], np.ndarray) or frames[-1].ndim != 3:
        env.close()
        raise ConfigError(f"{env_id} cannot draw rgb_array frames (its render() returned no image)")
    return env


def viewable(frame: np.ndarray, min_side: int = 160) -> np.ndarray:
    """A frame ``[H, W, 3]`` as uint8 (floats in [0, 1] scaled), a tiny grid such as MinAtar's
    10×10 enlarged by whole pixels to at least ``min_side``; a uint8 frame of that size as it is."""
    if frame.dtype != np.uint8:
        frame = (np.clip(frame, 0.0, 1.0) * 255).round().astype(np.uint8)
    factor = -(-min_side // max(frame.shape[:2]))  # ceil
    if factor > 1:
        frame = frame.repeat(factor, axis=0).repeat(factor, axis=1)
    return frame


def write_video(frames: Sequence[np.ndarray], stem: Path, fps: float) -> Path:
    """Write frames ``[H, W, 3]`` uint8 to ``stem.mp4`` (H.264), or ``stem.gif`` without imageio-ffmpeg.

    Frames go to ffmpeg one at a time, never stacked into one more copy of the episode.
    """
    if not has_mp4_encoder():
        path = stem.with_suffix(".gif")
        path.write_bytes(encode_gif(frames, fps))
        return path
    import imageio_ffmpeg

    # H.264 in yuv420p needs even sides: repeat the last row or column where one is odd.
    height, width, _ = frames[0].shape
    pad = ((0, height % 2), (0, width % 2), (0, 0))
    path = stem.with_suffix(".mp4")
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (width + width % 2, height + height % 2),
        fps=fps,
        codec="libx264",
        macro_block_size=1,
        ffmpeg_log_level="error",
    )
    writer.send(None)  # start ffmpeg
    for frame in frames:
        writer.send(np.ascontiguousarray(np.pad(frame, pad, mode="edge") if height % 2 or width % 2 else frame))
    writer.close()
    return path


def encode_gif(frames: Sequence[np.ndarray], fps: float) -> bytes:
    """An animated GIF of frames ``[H, W, 3]`` uint8, looping."""
    images = [Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return buffer.getvalue()


# Steps a recorded episode may last, as for evaluation: a stuck agent (Breakout's that never presses
# FIRE) would otherwise play to Atari's 27,000-step limit, holding every frame in memory (2.7 GB).
MAX_VIDEO_STEPS = EVAL_STEP_CAP


def record_episodes(
    policy: Callable[[np.ndarray], np.ndarray],
    spec: EnvSpec,
    folder: Path,
    episodes: int,
    seed: int,
    fps: float | None,
    max_steps: int = MAX_VIDEO_STEPS,
) -> tuple[list[Recording], np.ndarray]:
    """Play ``episodes`` episodes with ``policy`` from env seeds ``seed, seed + 1, ...``, one video each,
    each cut after ``max_steps`` steps.

    ``policy`` maps observations ``[1, *obs_shape]`` (and, with action masks, the valid actions
    ``[1, n_actions]``) to actions ``[1]``. Returns the recordings and
    the first episode's frames at half size ``[T, H/2, W/2, 3]``, for TensorBoard.
    """
    env = make_render_env(spec)
    masks = spec.masks()
    fps = fps or env.metadata.get("render_fps") or 30
    folder.mkdir(parents=True, exist_ok=True)
    recordings, preview = [], np.zeros((0, 0, 0, 3), dtype=np.uint8)
    # Ctrl-C and SIGTERM end the recording at the next step (StopRequested); the env is closed either way.
    with stop_on_signals(), contextlib.closing(env):
        for episode in range(episodes):
            obs, info = env.reset(seed=seed + episode)
            episode_return, length, done = 0.0, 0, False
            while not done and length < max_steps:
                check_stop()
                action = policy(obs[None]) if masks is None else policy(obs[None], masks.of_env(env, info))
                obs, reward, terminated, truncated, info = env.step(action[0])
                episode_return += float(reward)
                length += 1
                done = terminated or truncated
            # length + 1 frames [H, W, 3], the only full copy of the episode (render() hands them over)
            frames = [viewable(frame) for frame in env.render()]
            # Named by env seed: a greedy policy plays the same episode from the same seed, so recording
            # again replaces a video only with the same episode, never fit's video with another one.
            path = write_video(frames, folder / f"seed-{seed + episode}", fps)
            recordings.append(Recording(path, episode_return, length, fps))
            if episode == 0:  # half size: a GIF of a 1000-step episode stays a few MB
                preview = np.stack([frame[::2, ::2] for frame in frames])
            del frames
    return recordings, preview


def add_video_to_tensorboard(logger: TensorBoardLogger, tag: str, frames: np.ndarray, step: int, fps: float) -> None:
    """Show frames ``[T, H, W, 3]`` as an animated image in TensorBoard's Images tab.

    This is what ``SummaryWriter.add_video`` writes, encoded here with Pillow: torch's ``add_video``
    needs moviepy < 2 (it imports ``moviepy.editor``, which moviepy 2 removed).
    """
    from tensorboard.compat.proto.summary_pb2 import Summary

    _, height, width, channels = frames.shape
    image = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=encode_gif(frames, fps))
    writer = logger.experiment
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
    writer.flush()


def policy_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The online Q-network's weights in a checkpoint's ``state_dict``, keyed as in ``DQN.policy_net``."""
    return {key.removeprefix("policy_net."): value for key, value in state.items() if key.startswith("policy_net.")}


def greedy_policy(q_net: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """argmax_a Q(s, a) on the CPU, for single observations as the recorder passes them."""

    @torch.inference_mode()
    def policy(obs: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        return greedy_actions(q_net, obs, mask)  # as in training, valid actions only

    return policy


class GreedyVideo(L.Callback):
    """At the end of ``fit``, record greedy episodes of the best checkpoint into the run directory
    (``videos/<checkpoint name>/seed-<env seed>.mp4``, as ``record`` names them) and into TensorBoard
    (``video/greedy``, the first episode).

    It runs once, after training, so it never slows training. Without the video extra it prints one
    line and the run ends as usual.

    Args:
        episodes: episodes to record, from the test env seeds (``data.test_seed`` on), which neither
            training nor validation used.
        fps: frames per second of the video; ``None`` takes the env's ``render_fps``.
    """

    def __init__(self, episodes: int = 1, fps: float | None = None) -> None:
        self.episodes = episodes
        self.fps = fps

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = run_dir(trainer)
        if self.episodes < 1 or not trainer.is_global_zero or log_dir is None:
            return
        q_net, source = self._best_network(trainer, pl_module)
        folder = log_dir / "videos" / source
        datamodule = trainer.datamodule
        try:
            recordings, frames = record_episodes(
                greedy_policy(q_net), datamodule.env_spec, folder, self.episodes, datamodule.hparams.test_seed, self.fps
            )
        except ConfigError as error:
            print(f"No video: {error}", file=sys.stderr)
            return
        for recording in recordings:
            print(
                f"Recorded {recording.path} (return {recording.episode_return:g}, {recording.length} steps)",
                file=sys.stderr,
            )
        if not has_mp4_encoder():
            print(f"Videos are GIF: mp4 needs the video extra: {VIDEO_EXTRA}", file=sys.stderr)
        if isinstance(trainer.logger, TensorBoardLogger):
            add_video_to_tensorboard(trainer.logger, "video/greedy", frames, trainer.global_step, recordings[0].fps)

    @staticmethod
    def _best_network(trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[torch.nn.Module, str]:
        """A CPU copy of the online network, with the best checkpoint's weights where there is one, and
        the name of the weights' source: the checkpoint's file name, or ``final``."""
        q_net = copy.deepcopy(pl_module.policy_net).cpu().eval()
        checkpoint = trainer.checkpoint_callback
        best = getattr(checkpoint, "best_model_path", "")
        if best and Path(best).is_file():
            q_net.load_state_dict(policy_weights(read_checkpoint(best)["state_dict"]))
            return q_net, Path(best).stem
        return q_net, "final"


def record_checkpoint(
    ckpt_path: str,
    episodes: int = 3,
    seed: int | None = None,
    output_dir: str | None = None,
    fps: float | None = None,
) -> list[Recording]:
    """Record greedy episodes of a trained agent as mp4 videos (its checkpoint says which env and network).

    Args:
        ckpt_path: a checkpoint ``fit`` wrote, e.g. ``lightning_logs/version_0/checkpoints/last.ckpt``; a
            run directory (its ``last.ckpt``), or ``last`` (the newest under ``./lightning_logs``).
        episodes: episodes to record, one video each, ``seed-<env seed>.mp4``.
        seed: env seed of the first episode, the next one seed + 1 and so on (default: the run's
            ``data.test_seed``, start states neither training nor validation used).
        output_dir: where the videos go (default: ``videos/<checkpoint name>/`` in the checkpoint's
            run directory, or beside a checkpoint that is not in a run's ``checkpoints/``).
        fps: frames per second (default: the env's ``render_fps``).
    """
    if episodes < 1:
        raise ConfigError(f"episodes={episodes} must be at least 1")
    if seed is not None and seed < 0:
        raise ConfigError(f"seed={seed} must be 0 or more: Gymnasium's env seeds are non-negative")
    if fps is not None and not fps > 0:  # NaN included
        raise ConfigError(f"fps={fps} must be above 0 (or left out: the env's render_fps)")
    if ckpt_path == "last":  # as fit's --ckpt_path: the newest under ./lightning_logs
        found = latest_last_checkpoint(Path("lightning_logs"))
        if found is None:
            raise ConfigError("ckpt_path='last' found no readable lightning_logs/version_*/checkpoints/last.ckpt")
        path, checkpoint = found
    else:
        path = checkpoint_in(Path(ckpt_path))  # a run directory: its last.ckpt
        checkpoint = read_checkpoint(path)  # a wrong path is named first, extra or not
    if str(path) != ckpt_path:
        print(f"Using {path}", file=sys.stderr)
    run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    folder = Path(output_dir) if output_dir is not None else run / "videos" / path.stem
    check_writable("output_dir", folder, "the videos", keep=False)  # made when the first video is written
    if not has_mp4_encoder():
        raise ConfigError(f"record writes mp4 and needs the video extra: {VIDEO_EXTRA}")
    data, hparams = checkpoint.get("datamodule_hyper_parameters"), checkpoint.get("hyper_parameters")
    weights = policy_weights(checkpoint.get("state_dict") or {})
    if not isinstance(data, dict) or not isinstance(hparams, dict) or not weights:
        raise ConfigError(
            f"ckpt_path={ckpt_path!r} is not a checkpoint of python -m lit_dqn fit (no env or network in it)"
        )
    spec = EnvSpec.from_hparams(data)
    checked = spec.check()  # a missing env extra or wrapper module fails here, with its name
    # Checkpoints written before model.obs_layout existed: the env spec says it, as it did then.
    model = DQN(**{"obs_layout": checked.image_layout, **{k: v for k, v in hparams.items() if not k.startswith("_")}})
    model.policy_net.load_state_dict(weights)
    seed = data.get("test_seed", 0) if seed is None else seed
    recordings, _ = record_episodes(greedy_policy(model.policy_net.eval()), spec, folder, episodes, seed, fps)
    for recording in recordings:
        print(f"Recorded {recording.path} (return {recording.episode_return:g}, {recording.length} steps)")
    mean = sum(r.episode_return for r in recordings) / len(recordings)
    print(f"{data['env_id']}: mean return {mean:g} over {len(recordings)} greedy episode(s) from env seed {seed}")
    return recordings
