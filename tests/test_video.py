"""Videos of the greedy agent (``GreedyVideo`` in fit, ``python -m lit_dqn record``) and the run plot."""

import io
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from matplotlib.figure import Figure
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_dqn import video
from lit_dqn.envs import EnvSpec
from lit_dqn.plots import Validation, plot_episodes
from lit_dqn.rollout import StopRequested

from .conftest import ROOT, FitRun, run_cli, run_main, skip_without_extra

SHORTEST = ("--trainer.max_steps=20", "--data.warmup_steps=256", "--trainer.enable_progress_bar=false")
RECORDED = re.compile(r"Recorded (\S+) \(return ([-\d.e+]+), (\d+) steps\)")


def gif_frames(gif: Image.Image, fps: float = 50) -> int:
    """Frames shown by a GIF written at ``fps`` (CartPole's 50): Pillow merges identical frames into one
    longer one, and GIF stores durations in whole centiseconds (15 fps: 60 ms a frame, not 67)."""
    total_ms = 0
    for index in range(gif.n_frames):
        gif.seek(index)
        total_ms += gif.info["duration"]
    return round(total_ms / (round(1000 / fps) // 10 * 10))


def video_frames(path: Path, fps: float = 50) -> tuple[int, tuple[int, int]]:
    """Frame count and (width, height) of an mp4 or GIF (shown at ``fps``), read back from the file."""
    if path.suffix == ".gif":
        with Image.open(path) as image:
            return gif_frames(image, fps), image.size
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    return sum(1 for _ in reader), tuple(meta["size"])


def test_fit_leaves_a_video_of_the_best_checkpoint_and_shows_it_in_tensorboard(fit_run: FitRun) -> None:
    recorded = RECORDED.findall(fit_run.result.stderr)
    assert len(recorded) == 1, fit_run.result.stderr[-2000:]  # configs/cartpole.yaml: episodes: 1
    path, _, steps = recorded[0]
    path = fit_run.cwd / path
    best = next((fit_run.run_dir / "checkpoints").glob("best-*.ckpt"))
    assert path.parent == fit_run.run_dir / "videos" / best.stem  # the best checkpoint, not the last weights
    assert path.suffix == (".mp4" if video.has_mp4_encoder() else ".gif")
    # CartPole draws 600x400 frames: one after reset and one per step
    assert video_frames(path) == (int(steps) + 1, (600, 400))

    events = EventAccumulator(str(fit_run.run_dir), size_guidance={"images": 0})
    events.Reload()
    [animation] = events.Images("video/greedy")
    with Image.open(io.BytesIO(animation.encoded_image_string)) as gif:
        assert (gif_frames(gif), gif.size) == (int(steps) + 1, (300, 200))  # half size in TensorBoard


def test_record_plays_a_bare_checkpoint_with_no_config(fit_run: FitRun, tmp_path: Path) -> None:
    pytest.importorskip("imageio_ffmpeg", reason="record writes mp4: the video extra")
    ckpt = tmp_path / "agent.ckpt"
    shutil.copy(next((fit_run.run_dir / "checkpoints").glob("best-*.ckpt")), ckpt)  # alone: no run directory
    result = run_cli("record", str(ckpt), "--episodes", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    recorded = RECORDED.findall(result.stdout)
    assert [Path(p).name for p, _, _ in recorded] == ["seed-2000000.mp4", "seed-2000001.mp4"]  # the test seeds
    for path, episode_return, steps in recorded:
        assert Path(path).parent == tmp_path / "videos" / "agent"
        assert video_frames(Path(path)) == (int(steps) + 1, (600, 400))
        assert float(episode_return) == int(steps)  # CartPole: +1 per step
    # the same greedy policy from the same env seeds (the run's test seeds) plays the same episodes
    again = run_cli("record", str(ckpt), "--episodes", "1", "--output_dir", "again", cwd=tmp_path)
    assert RECORDED.findall(again.stdout)[0][1:] == recorded[0][1:]
    assert "mean return" in result.stdout and "from env seed 2000000" in result.stdout


def test_record_names_videos_by_env_seed_and_keeps_fits_video(fit_run: FitRun, tmp_path: Path) -> None:
    """Recording the checkpoint fit filmed, from other env seeds, adds videos beside fit's one: with
    videos named by episode number, the first replaced fit's video with another episode."""
    pytest.importorskip("imageio_ffmpeg", reason="record writes mp4: the video extra")
    run = tmp_path / "run"
    shutil.copytree(fit_run.run_dir, run)
    [fit_video] = (run / "videos").rglob("seed-*")  # GreedyVideo's: the best checkpoint, the first test seed
    before = fit_video.read_bytes()
    folder = fit_video.parent
    recordings = video.record_checkpoint(str(run / "checkpoints" / f"{folder.name}.ckpt"), 2, seed=7)
    assert [recording.path for recording in recordings] == [folder / "seed-7.mp4", folder / "seed-8.mp4"]
    assert fit_video.read_bytes() == before


def test_record_takes_a_run_directory_or_last(fit_run: FitRun, tmp_path: Path, monkeypatch) -> None:
    """As ``--ckpt_path`` does: a run directory means its ``last.ckpt``, and ``last`` the newest under
    ``./lightning_logs`` (record said both did not exist, while its message suggested 'last')."""
    pytest.importorskip("imageio_ffmpeg", reason="record writes mp4: the video extra")
    shutil.copytree(fit_run.cwd / "lightning_logs", tmp_path / "lightning_logs")
    monkeypatch.chdir(tmp_path)
    last = Path("lightning_logs/version_0/videos/last")
    for given in ("lightning_logs/version_0", "last"):
        [recording] = video.record_checkpoint(given, 1)
        assert recording.path == last / "seed-2000000.mp4", given


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.ckpt"], "ckpt_path='missing.ckpt' does not exist"),
        (["CKPT", "--episodes", "0"], "episodes=0 must be at least 1"),
        (["CKPT", "--episodes", "two"], "episodes"),
        ([], "ckpt_path"),
    ],
)
def test_record_bad_input_is_one_line(fit_run: FitRun, tmp_path: Path, args: list[str], message: str) -> None:
    ckpt = str(fit_run.run_dir / "checkpoints" / "last.ckpt")
    result = run_cli("record", *[ckpt if a == "CKPT" else a for a in args], cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("lit_dqn record: error:") and message in line, line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seed", "-1"], "seed=-1 must be 0 or more"),
        (["--fps", "-5"], "fps=-5.0 must be above 0"),
        (["--fps", "0"], "fps=0.0 must be above 0"),  # was silently the env's render_fps
        (["--output_dir", "/proc/lit_dqn_videos"], "output_dir='/proc/lit_dqn_videos' cannot be written"),
        (["--output_dir", "a_file"], "output_dir='a_file' cannot be written"),
    ],
)
def test_record_refuses_values_gymnasium_or_ffmpeg_would_crash_on(
    fit_run: FitRun, tmp_path: Path, args: list[str], message: str, monkeypatch, capsys
) -> None:
    """In-process, through the CLI's ``main``: these ended in Gymnasium's, ffmpeg's or the file system's
    traceback (exit 1) after the checkpoint was loaded."""
    (tmp_path / "a_file").write_text("not a folder")
    ckpt = str(fit_run.run_dir / "checkpoints" / "last.ckpt")
    result = run_main(["record", ckpt, "--episodes", "1", *args], tmp_path, monkeypatch, capsys)
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("lit_dqn record: error:") and message in line, line
    assert (tmp_path / "a_file").read_text() == "not a folder"


def test_without_the_video_extra_record_names_it_and_fit_writes_gif(fit_run: FitRun, tmp_path: Path) -> None:
    """imageio-ffmpeg blocked at import: ``record`` stops with one line naming the extra; ``fit`` falls back to GIF."""
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"  # a run directory of its own: see what is left in it
    ckpt.parent.mkdir(parents=True)
    shutil.copy(fit_run.run_dir / "checkpoints" / "last.ckpt", ckpt)
    code = "import sys; sys.modules['imageio_ffmpeg'] = None\nfrom lit_dqn.cli import main\nsys.exit(main())\n"
    record = subprocess.run(
        [sys.executable, "-c", code, "record", str(ckpt)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert record.returncode == 2 and record.stderr.strip().splitlines() == [
        'lit_dqn record: error: record writes mp4 and needs the video extra: pip install "lit-dqn[video]"'
    ]
    assert not (tmp_path / "run" / "videos").exists()  # the output_dir check leaves no empty folder behind
    fit = subprocess.run(
        [sys.executable, "-c", code, "fit", "--config", str(ROOT / "configs/cartpole.yaml"), *SHORTEST],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert fit.returncode == 0, fit.stderr[-2000:]
    [(path, _, steps)] = RECORDED.findall(fit.stderr)
    assert path.endswith("videos/final/seed-2000000.gif")  # no validation ran: the final weights
    assert video_frames(tmp_path / path) == (int(steps) + 1, (600, 400))
    assert 'Videos are GIF: mp4 needs the video extra: pip install "lit-dqn[video]"' in fit.stderr


def test_odd_sized_frames_are_padded_for_h264(tmp_path: Path) -> None:
    pytest.importorskip("imageio_ffmpeg", reason="mp4 needs the video extra")
    frames = np.random.default_rng(0).integers(0, 255, size=(5, 21, 33, 3), dtype=np.uint8)
    path = video.write_video(frames, tmp_path / "odd", fps=10)
    assert video_frames(path) == (5, (34, 22))


def test_plot_shows_greedy_validation_threshold_and_kept_checkpoint(tmp_path: Path) -> None:
    validations = [Validation(10, 300, 40.0, 5.0), Validation(25, 600, 480.0, 10.0), Validation(30, 900, 300.0, 9.0)]
    figure = plot_episodes(
        [10.0] * 30, [10] * 30, tmp_path / "plot.png", validations, threshold=475, kept=validations[1]
    )
    assert isinstance(figure, Figure) and (tmp_path / "plot.png").stat().st_size > 10_000
    return_ax = figure.axes[0]
    lines = {line.get_label(): line for line in return_ax.get_lines()}
    greedy = lines["greedy validation (mean ± std)"]
    assert greedy.get_xdata().tolist() == [10, 25, 30] and greedy.get_ydata().tolist() == [40.0, 480.0, 300.0]
    assert lines["kept checkpoint (step 600)"].get_xydata().tolist() == [[25.0, 480.0]]
    assert list(lines["solved at 475"].get_ydata()) == [475, 475]
    [band] = return_ax.collections  # mean ± std
    assert band.get_paths()[0].vertices[:, 1].min() == pytest.approx(35.0)


def test_fit_plot_history_matches_tensorboard_and_the_kept_checkpoint(fit_run: FitRun) -> None:
    """The plot's validations are the ones TensorBoard logged, and they are in the checkpoint for a resume."""
    events = EventAccumulator(str(fit_run.run_dir), size_guidance={"scalars": 0})
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("val/return_mean")]
    state = torch.load(fit_run.run_dir / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]["TrainingPlot"]
    saved = [Validation(*v) for v in state["validations"]]
    # logged at the updates done, the step the plot keeps
    assert [(v.step, v.mean) for v in saved] == [(step, pytest.approx(value)) for step, value in logged]
    assert len(saved) == 2 and 0 < saved[0].episodes < saved[1].episodes
    best = next((fit_run.run_dir / "checkpoints").glob("best-*.ckpt"))
    assert f"{max(v.mean for v in saved):.1f}" in best.name


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_env_records(config: Path, tmp_path: Path) -> None:
    """Each config's env draws headless and encodes (a fixed action stands in for the agent), the
    episode cut at ``max_steps``: Breakout's ball never launches without FIRE."""
    env_id = yaml.safe_load(config.read_text())["data"]["env_id"]
    skip_without_extra(env_id)
    recordings, preview = video.record_episodes(
        lambda obs: np.zeros(len(obs), dtype=np.int64), EnvSpec(env_id), tmp_path, 1, 0, None, max_steps=300
    )
    [recording] = recordings
    assert recording.length <= 300 and (recording.length == 300 or env_id != "ALE/Breakout-v5")
    assert recording.length >= 1 and preview.shape[0] == recording.length + 1 and preview.dtype == np.uint8
    count, (width, height) = video_frames(recording.path, recording.fps)
    assert count == recording.length + 1 and min(width, height) >= 159  # MinAtar's 10x10 enlarged to 160
    # TensorBoard's preview is half size (an odd side rounds up; the mp4 pads odd sides to even)
    assert abs(width - 2 * preview.shape[2]) <= 2 and abs(height - 2 * preview.shape[1]) <= 2


def test_a_signal_ends_a_recording_at_the_next_step(tmp_path: Path) -> None:
    """SIGTERM (or Ctrl-C) while a video plays, as after a fit: ``StopRequested`` at the next env
    step, no half episode written, the process's own handlers back in place."""
    calls = []

    def policy(obs: np.ndarray) -> np.ndarray:
        calls.append(len(obs))
        if len(calls) == 5:  # mid episode 0 (pushing left ends CartPole in about 10 steps)
            os.kill(os.getpid(), signal.SIGTERM)
        return np.zeros(len(obs), dtype=np.int64)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(StopRequested, match="stopped by SIGTERM"):
        video.record_episodes(policy, EnvSpec("CartPole-v1"), tmp_path, 3, 0, None)
    assert len(calls) == 5 and not list(tmp_path.iterdir())
    assert signal.getsignal(signal.SIGTERM) is before
