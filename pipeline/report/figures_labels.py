"""Figures from the teacher's annotations: labels per round, labels per turn index, confidence per label.

These show where and how often the teacher intervenes, and whether its confidence separates the
labels. Bars give the share of turns (with the count above or below them), because rollouts of different
rounds hold different numbers of turns. A round without annotations says so in words.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

from pipeline.inspection import label_counts, mean_confidence_by_label
from pipeline.judges import LABELS
from pipeline.report.loading import RunData
from pipeline.report.plotting import (
    LABEL_COLORS,
    FigureFile,
    count_range,
    figure_legend,
    legend_below,
    missing_text,
    new_figure,
    round_axis,
    run_colors,
    save,
    suptitle,
    unique_legend,
)

BY_ROUND_FILE = "labels_by_round.png"
BY_TURN_FILE = "labels_by_turn.png"
CONFIDENCE_FILE = "confidence_by_label.png"


def labels_by_round_figure(runs: Sequence[RunData], directory: Path) -> FigureFile | None:
    if all(run.annotations.empty for run in runs):
        return None
    figure, axes = new_figure(1, len(runs), sharey=True)
    for panel, run in zip(axes[0], runs, strict=True):
        round_axis(panel, run.rounds, "round")
        if run.annotations.empty:
            _nothing(panel, f"{run.name}: no annotations")
            continue
        _stacked_shares(panel, label_counts(run.annotations, "round"), run.rounds)
        episodes = run.annotations.groupby("round")["episode_id"].nunique()
        panel.set_title(f"{run.name} ({count_range(episodes)} episodes per round)")
    axes[0][0].set_ylabel("share of turns (%)")
    figure_legend(figure, *unique_legend(axes[0], order=LABELS))
    suptitle(figure, "Teacher labels per round (n above bars = annotated turns)")
    caption = "Share of the rollout turns the teacher labelled skip, weak or strong in each round; n = turns."
    return FigureFile(save(figure, directory / BY_ROUND_FILE), "Labels per round", caption)


def labels_by_turn_figure(runs: Sequence[RunData], directory: Path) -> FigureFile | None:
    """Each run's newest annotated round: label shares per turn index, and how many turns reach each index."""
    if all(run.annotations.empty for run in runs):
        return None
    figure, axes = new_figure(2, len(runs), panel=(4.6, 2.4), sharex="col", gridspec_kw={"height_ratios": [3, 1]})
    for column, run in enumerate(runs):
        shares, counts = axes[0][column], axes[1][column]
        if run.annotations.empty:
            _nothing(shares, f"{run.name}: no annotations")
            shares.set_axis_off()
            counts.set_axis_off()
            continue
        newest = int(run.annotations["round"].max())
        turns = run.annotations[run.annotations["round"] == newest]
        by_turn = label_counts(turns, "turn")
        _stacked_shares(shares, by_turn, list(by_turn.index), counted=False)
        shares.set_title(f"{run.name}, round {newest}: {len(turns)} turns, {turns['episode_id'].nunique()} episodes")
        counts.bar(by_turn.index, by_turn["total"], color="0.55", width=0.8)
        counts.set_xlabel("turn index (0 = first turn)")
        counts.xaxis.set_major_locator(MaxNLocator(integer=True))
        counts.grid(True, axis="y", alpha=0.3)
    axes[0][0].set_ylabel("share of turns (%)")
    axes[1][0].set_ylabel("turns")
    figure_legend(figure, *unique_legend(axes[0], order=LABELS))
    suptitle(figure, "Teacher labels per turn index, newest annotated round")
    caption = (
        "Top: label shares at each turn index of the newest annotated round; bottom: the turns behind each bar "
        "(episodes end at different turns, so late bars rest on fewer turns)."
    )
    return FigureFile(save(figure, directory / BY_TURN_FILE), "Labels per turn index", caption)


def confidence_figure(runs: Sequence[RunData], directory: Path) -> FigureFile | None:
    if all(run.annotations.empty for run in runs):
        return None
    colors = run_colors([run.name for run in runs])
    every_round = sorted({number for run in runs for number in run.rounds})
    figure, axes = new_figure(1, len(LABELS), sharey=True)
    for panel, label in zip(axes[0], LABELS, strict=True):
        for run in runs:
            confidence, turns = _confidence_per_round(run, label)
            if confidence.isna().all():
                absent = "no annotations" if run.annotations.empty else f"no {label} turns"
                panel.plot([], [], color=colors[run.name], label=f"{run.name}: {absent}")
                continue
            missing = [number for number, value in confidence.items() if np.isnan(value)]
            panel.plot(
                confidence.index,
                confidence.to_numpy(),
                color=colors[run.name],
                marker="o",
                label=f"{run.name} (n={count_range(turns[turns > 0])} turns{missing_text(missing)})",
            )
        panel.set_title(label)
        panel.set_ylim(0, 1.02)
        round_axis(panel, every_round, "round")
        legend_below(panel)
    axes[0][0].set_ylabel("mean teacher confidence (top-1 prob.)")
    suptitle(figure, "Teacher confidence per label and round")
    caption = (
        "Mean over turns of each turn's mean token confidence (the teacher's top-1 probability), per label; "
        "n = turns with that label behind each point."
    )
    return FigureFile(save(figure, directory / CONFIDENCE_FILE), "Teacher confidence per label", caption)


def _confidence_per_round(run: RunData, label: str) -> tuple[pd.Series, pd.Series]:
    """Mean confidence and turn count of one label in each of the run's rounds (NaN and 0 where none)."""
    confidence = pd.Series(np.nan, index=run.rounds)
    turns = pd.Series(0, index=run.rounds)
    for number, annotated in run.annotations.groupby("round"):
        table = mean_confidence_by_label(annotated)
        confidence[number] = table.loc[label, "mean_confidence"]
        turns[number] = table.loc[label, "turns"]
    return confidence, turns


def _nothing(panel: Axes, title: str) -> None:
    panel.set_title(title)
    panel.text(0.5, 0.5, "no annotations", ha="center", va="center", color="0.4", transform=panel.transAxes)


def _stacked_shares(panel: Axes, counts: pd.DataFrame, positions: list[int], counted: bool = True) -> None:
    """Stacked label shares (%) at each position that has counts; "no annotations" where it has none."""
    for position in positions:
        if position not in counts.index:
            panel.text(position, 50, "no annotations", rotation=90, ha="center", va="center", color="0.4", fontsize=8)
            continue
        row = counts.loc[position]
        bottom = 0.0
        for label in LABELS:
            share = 100 * row[label] / row["total"]
            panel.bar(position, share, bottom=bottom, color=LABEL_COLORS[label], width=0.8, label=label)
            bottom += share
        if counted:
            panel.text(position, 101, f"n={int(row['total'])}", ha="center", va="bottom", fontsize=8)
    panel.set_ylim(0, 110 if counted else 100)
    panel.set_axisbelow(True)
