"""End to end: a real TensorBoard server on loopback serves a fresh run's episode durations."""

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from .conftest import FitRun


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_tensorboard_serves_episode_durations(fit_run: FitRun) -> None:
    port = free_port()
    logdir = fit_run.cwd / "lightning_logs"
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1"]
    server = subprocess.Popen(
        [*command, "--port", str(port), "--load_fast", "false", "--reload_interval", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/data"
    try:
        deadline = time.monotonic() + 90
        tags = {}
        while time.monotonic() < deadline:
            try:
                tags = get_json(f"{base}/plugin/scalars/tags")
                if "train/episode_duration" in tags.get("version_0", {}):
                    break
            except OSError:
                pass
            assert server.poll() is None, "tensorboard exited"
            time.sleep(0.5)
        assert "train/episode_duration" in tags.get("version_0", {}), tags
        assert "train/episode_duration_mean100" in tags["version_0"]
        query = urllib.parse.urlencode({"run": "version_0", "tag": "train/episode_duration"})
        served = get_json(f"{base}/plugin/scalars/scalars?{query}")  # [[wall_time, step, value], ...]
    finally:
        server.terminate()
        server.wait(timeout=30)

    events = EventAccumulator(str(fit_run.run_dir), size_guidance={"scalars": 0})
    events.Reload()
    on_disk = events.Scalars("train/episode_duration")
    assert [step for _, step, _ in served] == [e.step for e in on_disk] == list(range(1, len(on_disk) + 1))
    assert np.allclose([value for _, _, value in served], [e.value for e in on_disk])
