"""The tutorial's ``plot_durations``, with the episode returns beside it, saved as a PNG."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def running_mean(values: Sequence[float], window: int = 100) -> np.ndarray:
    """Trailing mean over the last ``window`` values (fewer at the start), one per value."""
    values = np.asarray(values, dtype=np.float64)
    cumsum = np.cumsum(np.insert(values, 0, 0.0))
    ends = np.arange(1, len(values) + 1)
    counts = np.minimum(ends, window)
    return (cumsum[ends] - cumsum[ends - counts]) / counts


def plot_episodes(returns: Sequence[float], durations: Sequence[int], path: Path | str, window: int = 100) -> Figure:
    """Plot each training episode's return and duration with their trailing ``window``-episode means,
    side by side, and save to ``path``.

    On CartPole the two panels agree (+1 per step); on Acrobot, MountainCar or LunarLander the
    return is what measures the task, and the duration shows how episodes end.
    """
    # A bare Figure, not pyplot: no GUI backend or global figure state, so it works headless.
    figure = Figure(figsize=(12, 4.5))
    episodes = np.arange(1, len(durations) + 1)
    panels = (("return", "Return", returns), ("duration", "Duration (steps)", durations))
    for ax, (name, unit, values) in zip(figure.subplots(1, 2), panels, strict=True):
        ax.plot(episodes, values, label=name, alpha=0.6)
        ax.plot(episodes, running_mean(values, window), label=f"{window}-episode mean", linewidth=2)
        ax.set_xlabel("Episode")
        ax.set_ylabel(unit)
        ax.set_title(f"Training episode {name}s (ε-greedy)")
        ax.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return figure
