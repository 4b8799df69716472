"""Argument checks that fail early with one readable line naming the config field and what it allows."""

import contextlib
import math
import os
from collections.abc import Sequence
from pathlib import Path


class ConfigError(ValueError):
    """A configuration value lit_dqn cannot run with; the CLI prints it as one line and exits."""


def one_line(error: BaseException) -> str:
    """An error's message on one line (jsonargparse's span several), for the CLI's one-line errors."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def check_interval(
    field: str, value: float, low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> None:
    """Require ``low <(=) value <(=) high``; ``math.inf`` bounds mean unbounded."""
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if math.isnan(value) or below or above:
        if high == math.inf:
            allowed = f"> {low}" if low_open else f">= {low}"
        else:
            allowed = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ConfigError(f"{field}={value!r} is not allowed: it must be {allowed}")


def check_positive(field: str, value: float) -> None:
    check_interval(field, value, 0, math.inf, low_open=True, high_open=True)


def check_sizes(field: str, values: Sequence[int]) -> None:
    if any(width <= 0 for width in values):
        raise ConfigError(f"{field}={list(values)!r} is not allowed: every layer width must be a positive integer")


def check_at_least(field: str, value: float, other_field: str, other: float) -> None:
    if value < other:
        raise ConfigError(f"{field}={value!r} is not allowed: it must be at least {other_field}={other!r}")


def check_at_most(field: str, value: float, other_field: str, other: float) -> None:
    if value > other:
        raise ConfigError(f"{field}={value!r} is not allowed: it must be at most {other_field}={other!r}")


def check_max_steps_for(field: str, value: object, max_steps: int | None) -> None:
    """Schedules sized by the run's length (linear ε, prioritized replay's β) need a finite ``trainer.max_steps``."""
    if max_steps is None or max_steps <= 0:
        raise ConfigError(
            f"{field}={value} is sized by trainer.max_steps, so trainer.max_steps={max_steps!r} is not allowed: "
            "it must be > 0"
        )


MAX_SEED = 2**32 - 1  # NumPy's seeds, and so Lightning's seed_everything, are unsigned 32-bit integers


def check_seed(field: str, seed: int) -> None:
    """A training seed NumPy (through Lightning's ``seed_everything``) accepts: one line, not its ValueError."""
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{field}={seed} must be in [0, {MAX_SEED}] (NumPy's seeds)")


def check_writable(field: str, root: Path, what: str, *, keep: bool = True) -> None:
    """``what`` goes under ``root``: one that cannot be written is one line now, not a traceback at
    the first save (or, for ``tune``, a failed trial each). ``keep=False`` removes the directories the
    check made, for a caller with more checks to come that must leave nothing behind when one fails."""
    made: list[Path] = []  # directories this check creates, deepest first
    try:
        # normpath: Path.parents works on the text, and "ghost/../y" must not list y's real parent as new
        absolute = Path(os.path.normpath(root.absolute()))
        made = [directory for directory in (absolute, *absolute.parents) if not directory.exists()]
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".lit_dqn_write_check_{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise ConfigError(
            f"{field}={str(root)!r} cannot be written ({error.strerror or error}): {what} go there; "
            "give a writable directory"
        ) from None
    finally:
        for directory in made if not keep else ():
            with contextlib.suppress(OSError):  # one mkdir did not make (it failed half-way) or not empty
                directory.rmdir()
