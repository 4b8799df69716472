"""The tutorial's ``plot_durations``: episode durations and their 100-episode mean, saved as a PNG."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def plot_durations(durations: Sequence[int], path: Path | str, window: int = 100) -> Figure:
    """Plot ``durations`` per episode with their trailing ``window``-episode mean and save to ``path``."""
    values = np.asarray(durations, dtype=np.float64)
    cumsum = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    running_mean = (cumsum[1:] - cumsum[np.arange(1, len(values) + 1) - counts]) / counts

    # A bare Figure, not pyplot: no GUI backend or global figure state, so it works headless.
    figure = Figure(figsize=(8, 4.5))
    ax = figure.subplots()
    episodes = np.arange(1, len(values) + 1)
    ax.plot(episodes, values, label="duration", alpha=0.6)
    ax.plot(episodes, running_mean, label=f"{window}-episode mean", linewidth=2)
    ax.set_xlabel("Episode")
    ax.set_ylabel("Duration (steps)")
    ax.set_title("Training episode durations")
    ax.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return figure
