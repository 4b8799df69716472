"""The ε schedule of ε-greedy exploration."""

import math


def exponential_epsilon(step: int, start: float, end: float, decay: float) -> float:
    """The tutorial's schedule: ε decays from ``start`` towards ``end`` with time constant ``decay`` steps."""
    return end + (start - end) * math.exp(-step / decay)
