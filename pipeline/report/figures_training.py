"""The training figure: loss and divergences per logged optimizer step, from each round's `_train.json`.

Rounds of different runs can take different numbers of steps, so the x axis is rounds: round r's logged
steps are spread over (r−1, r]. Runs then line up round by round, and a round without a training record
is an empty interval (named in the legend) rather than a line drawn across it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pipeline.report.loading import RunData
from pipeline.report.plotting import FigureFile, missing_text, new_figure, run_colors, save, unique_legend

TRAINING_FILE = "training.png"
# What the trainer logs (pipeline/trainer.py), in the order the panels show them.
CURVES = {
    "loss": "training loss",
    "rkl_sampled": "reverse KL on sampled tokens",
    "topk_divergence": "top-k divergence to the teacher",
    "nll": "student NLL of sampled tokens",
}


def training_figure(runs: Sequence[RunData], directory: Path) -> FigureFile | None:
    curves = [name for name in CURVES if any(_has(run.training, name) for run in runs)]
    if not curves:
        return None
    colors = run_colors([run.name for run in runs])
    every_round = sorted({number for run in runs for number in run.rounds})
    cols = len(curves) if len(curves) <= 3 else 2
    figure, axes = new_figure(math.ceil(len(curves) / cols), cols, panel=(5.0, 3.0))
    for panel, curve in zip(axes.flat, curves, strict=False):
        for run in runs:
            untrained = [number for number in run.rounds if number not in set(run.training["round"])]
            label = f"{run.name}{missing_text(untrained)}"
            for number, steps in run.training.groupby("round"):
                if not _has(steps, curve):
                    continue
                position = number - 1 + steps["step"] / steps["step"].max()
                panel.plot(position, steps[curve], color=colors[run.name], marker=".", markersize=3, label=label)
                label = "_"  # one legend entry per run
        for boundary in every_round:
            panel.axvline(boundary, color="0.8", linewidth=0.8, zorder=0)
        panel.set_xticks(range(0, max(every_round) + 1))
        panel.set_title(CURVES[curve])
        panel.set_xlabel("round")
        panel.grid(True, axis="y", alpha=0.3)
    for panel in list(axes.flat)[len(curves) :]:
        panel.set_visible(False)
    figure.legend(*unique_legend(axes.flat), loc="outside right upper")
    figure.suptitle("Training per logged optimizer step (round r's steps spread over r−1 … r)")
    trained = "; ".join(f"{run.name}: {_turns_text(run)}" for run in runs)
    caption = f"Each point is one logged optimizer step. Turns trained on per round: {trained}."
    return FigureFile(save(figure, directory / TRAINING_FILE), "Training loss and divergences", caption)


def _has(frame: pd.DataFrame, column: str) -> bool:
    return column in frame and frame[column].notna().any()


def _turns_text(run: RunData) -> str:
    if not run.trained_turns:
        return "no training record"
    return ", ".join(f"{turns} in round {number}" for number, turns in sorted(run.trained_turns.items()))
