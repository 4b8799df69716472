"""Greedy validation curves of finished (or running) fits, against env steps, from their TensorBoard events.

    python benchmarks/curves.py runs/s0/lightning_logs/version_0 runs/s1/lightning_logs/version_0 \\
        --labels "seed 0" "seed 1" --goal 16.4 --title "MinAtar/Breakout-v1, Rainbow" --out curves.png

Each run directory is a ``lightning_logs/version_N`` that ``fit`` wrote. Validation is logged
against the updates done (``val/return_mean`` at ``step``); the x axis here is env steps, which is
how sample efficiency is compared across configs with different update rates (``data.updates_per_step``,
``data.num_envs``): each validation's update count is mapped to env steps through the run's own
``train/env_steps`` series (logged every ``trainer.log_every_n_steps`` updates, the job's total under
DDP), interpolated between logging steps. The script prints a Markdown table (one row per
validation, one column per run) and saves the plot to ``--out``, as for the MinAtar Rainbow figure
and table in docs/ and benchmarks/README.md. A resumed fit logs to a new ``version_N``: give each
part as its own run.
"""

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
from matplotlib.figure import Figure
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


class Curve(NamedTuple):
    """One run's greedy validations."""

    label: str
    updates: np.ndarray  # [V] updates done at each validation
    env_steps: np.ndarray  # [V] env steps collected by then
    returns: np.ndarray  # [V] mean greedy return over data.eval_episodes


def read_curve(run_dir: Path, label: str) -> tuple[Curve, list[int]]:
    """``run_dir``'s validations (``val/return_mean``) and the env steps at each, from its events, and
    the updates of the validations left out.

    A validation outside the logged env-step counts is left out: its env steps would be a guess
    (``np.interp`` holds the end values). That happens to the last validation of a fit that stops
    between logging steps (``model.max_episodes``, a signal). Raises ``ValueError`` for a directory
    without validations or env-step scalars, or with no validation inside them.
    """
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    missing = {"val/return_mean", "train/env_steps"} - tags
    if missing:
        raise ValueError(f"{run_dir}: no {', '.join(sorted(missing))} scalars (is it a lit_dqn fit's run directory?)")
    validations = events.Scalars("val/return_mean")
    logged = events.Scalars("train/env_steps")
    updates = np.array([e.step for e in validations])  # [V]
    returns = np.array([e.value for e in validations])  # [V]
    log_steps = np.array([e.step for e in logged])  # [L]
    log_env_steps = np.array([e.value for e in logged])  # [L]
    inside = (updates >= log_steps.min()) & (updates <= log_steps.max())  # [V]
    if not inside.any():
        raise ValueError(f"{run_dir}: no validation between its first and last logged env-step counts")
    updates, returns, left_out = updates[inside], returns[inside], updates[~inside].tolist()
    env_steps = np.interp(updates, log_steps, log_env_steps)  # [V]
    return Curve(label, updates, env_steps, returns), left_out


def markdown_table(curves: list[Curve]) -> str:
    """One row per env-step count any run validated at, one column per run (``—`` where it did not)."""
    rows = sorted({round(float(x)) for curve in curves for x in curve.env_steps})
    lines = ["| env steps | " + " | ".join(c.label for c in curves) + " |", "|---" * (len(curves) + 1) + "|"]
    for row in rows:
        cells = []
        for curve in curves:
            at = np.flatnonzero(np.round(curve.env_steps).astype(int) == row)
            cells.append(f"{curve.returns[at[0]]:.1f}" if at.size else "—")
        lines.append(f"| {row:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(curves: list[Curve], path: Path, title: str, goal: float | None = None) -> Figure:
    """Each run's greedy validation mean against env steps, with the ``goal`` line, saved to ``path``."""
    figure = Figure(figsize=(7.6, 4))  # a bare Figure: headless, no pyplot state
    ax = figure.subplots()
    for curve in curves:
        ax.plot(curve.env_steps, curve.returns, "o-", markersize=3, label=curve.label)
    if goal is not None:
        ax.axhline(goal, color="tab:red", linestyle="--", label=f"goal {goal:g}")
    ax.set_xlabel("env steps")
    ax.set_ylabel("greedy validation return (mean)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return figure


def main(argv: list[str] | None = None) -> None:
    """Read every run, print the table, save the plot; a run that cannot be read is one line, exit 2."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="lightning_logs/version_N directories")
    parser.add_argument("--labels", nargs="+", help="one per run (default: each directory's path)")
    parser.add_argument("--out", type=Path, default=Path("curves.png"), help="the PNG to write")
    parser.add_argument("--title", default="greedy validation")
    parser.add_argument("--goal", type=float, help="a return to draw as a dashed line")
    args = parser.parse_args(argv)
    labels = args.labels or [str(run) for run in args.runs]
    if len(labels) != len(args.runs):
        parser.error(f"--labels: {len(labels)} given for {len(args.runs)} runs")
    curves = []
    for run, label in zip(args.runs, labels, strict=True):
        try:
            curve, left_out = read_curve(run, label)
        except ValueError as error:
            parser.error(str(error))
        if left_out:
            note = f"{label}: left out the validation(s) at update(s) {left_out}: no env-step count logged"
            print(note, file=sys.stderr)
        curves.append(curve)
    print(markdown_table(curves))
    plot_curves(curves, args.out, args.title, args.goal)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
