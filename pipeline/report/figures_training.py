"""The training figure: loss and divergences per logged optimizer step, from each round's `_train.json`.

One column per round, with the optimizer step of that round on its x axis (every round's optimizer
starts afresh), one row per logged number, one colour per run. The logged values are faint dots and a
centred rolling mean over them is the line: a round logs tens to hundreds of noisy steps. A round
without a training record has no column.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.ticker import MaxNLocator

from pipeline.report.loading import RunData
from pipeline.report.plotting import FigureFile, figure_legend, new_figure, run_colors, save, suptitle, unique_legend

TRAINING_FILE = "training.png"
# What the trainer logs (pipeline/trainer.py), in the order the rows show them, with their axis labels.
CURVES = {
    "loss": "training loss",
    "rkl_sampled": "reverse KL, sampled tokens",
    "topk_divergence": "top-k divergence",
    "nll": "student NLL, sampled tokens",
}
SMOOTHING = 0.1  # the rolling mean spans this share of a round's logged steps (at least 3)


def smoothed(values: pd.Series) -> pd.Series:
    """A centred rolling mean over SMOOTHING of the points (at least 3), defined at every point."""
    window = max(3, round(len(values) * SMOOTHING))
    return values.rolling(window, center=True, min_periods=1).mean()


def training_figure(runs: Sequence[RunData], directory: Path) -> FigureFile | None:
    curves = [name for name in CURVES if any(_has(run.training, name) for run in runs)]
    rounds = sorted({int(number) for run in runs for number in run.training["round"]})
    if not curves or not rounds:
        return None
    colors = run_colors([run.name for run in runs])
    # A lone round gets a wider panel: its steps and the title need the room.
    figure, axes = new_figure(len(curves), len(rounds), panel=(max(3.8, 7.0 / len(rounds)), 2.6), sharey="row")
    for row, curve in enumerate(curves):
        for column, number in enumerate(rounds):
            panel = axes[row][column]
            for run in runs:
                steps = run.training[run.training["round"] == number]
                if not _has(steps, curve):
                    continue
                steps = steps.dropna(subset=[curve]).sort_values("step")
                color = colors[run.name]
                panel.plot(steps["step"], steps[curve], ".", color=color, alpha=0.25, markersize=3, zorder=1)
                smooth = smoothed(steps[curve])
                panel.plot(steps["step"], smooth, "-", color=color, linewidth=1.8, label=run.name, zorder=3)
            panel.grid(True, alpha=0.3)
            panel.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
            if row == 0:
                panel.set_title(f"round {number}")
            if row == len(curves) - 1:
                panel.set_xlabel(f"optimizer step in round {number}")
            if column == 0:
                panel.set_ylabel(CURVES[curve])
    figure_legend(figure, *unique_legend(axes.flat))
    suptitle(figure, "Training per logged optimizer step, each round from its first step")
    trained = "; ".join(f"{run.name}: {_turns_text(run)}" for run in runs)
    caption = (
        f"Dots: the logged values; line: their centred rolling mean over {SMOOTHING:.0%} of the round's logged "
        f"steps (at least 3). Turns trained on per round: {trained}."
    )
    return FigureFile(save(figure, directory / TRAINING_FILE), "Training loss and divergences", caption)


def _has(frame: pd.DataFrame, column: str) -> bool:
    return column in frame and frame[column].notna().any()


def _turns_text(run: RunData) -> str:
    if not run.trained_turns:
        return "no training record"
    return ", ".join(f"{turns} in round {number}" for number, turns in sorted(run.trained_turns.items()))
