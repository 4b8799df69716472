"""The ε schedules of ε-greedy exploration."""

import math


def exponential_epsilon(step: int, start: float, end: float, decay: float) -> float:
    """The tutorial's schedule: ε decays from ``start`` towards ``end`` with time constant ``decay`` steps."""
    return end + (start - end) * math.exp(-step / decay)


def linear_epsilon(step: int, start: float, end: float, span: float) -> float:
    """Stable-Baselines3's and CleanRL's schedule: ε falls linearly from ``start`` to ``end`` over the
    first ``span`` steps, then stays at ``end``."""
    if span <= 0:
        return end
    return start + (end - start) * min(step / span, 1.0)
