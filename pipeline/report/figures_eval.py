"""Figures from the eval episodes: student success per round, and invalid / repeated action rates per round.

One panel per data source and eval split: never a rate pooled over splits, and never a reference policy
evaluated on the full ALFWorld games drawn beside students evaluated on the mini games. A round without
an eval is a gap in the line and is named in the legend; the legend also gives the episodes each point
rests on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from pipeline.report.loading import INITIAL_ROUND, REFERENCE_POLICIES, RunData
from pipeline.report.metrics import ACTION_RATES, ALL_TASKS, split_order, student_rounds
from pipeline.report.plotting import (
    REFERENCE_STYLES,
    FigureFile,
    count_range,
    legend_below,
    missing_text,
    new_figure,
    round_axis,
    run_colors,
    save,
    suptitle,
)
from pipeline.report.stats import wilson_interval
from pipeline.report.tables import measured_on

SUCCESS_FILE = "success_by_round.png"
ACTIONS_FILE = "action_rates_by_round.png"


def success_figure(metrics: pd.DataFrame, runs: Sequence[RunData], directory: Path) -> FigureFile | None:
    panels = _panels(metrics)
    if not panels:
        return None
    figure, axes = new_figure(1, len(panels), panel=(4.6, 4.2), sharey=True)
    for panel, (source, split) in zip(axes[0], panels, strict=True):
        measured = metrics[metrics["source"] == source]
        _draw_runs(panel, measured, runs, split, "success", interval=True)
        _draw_references(panel, measured, split)
        panel.set_title(measured_on(source, split))
        panel.set_ylim(-3, 103)
        legend_below(panel)
    axes[0][0].set_ylabel("success rate (%)")
    suptitle(figure, "Student success per round (bars: 95% Wilson interval)")
    caption = (
        "Success of each round's student on each eval split; n = eval episodes behind each point (a range when "
        "rounds differ). Dashed: teacher, dotted: expert, where evaluated. Rounds without an eval are gaps, "
        "named in the legend."
    )
    return FigureFile(save(figure, directory / SUCCESS_FILE), "Student success per round", caption)


def action_rates_figure(metrics: pd.DataFrame, runs: Sequence[RunData], directory: Path) -> FigureFile | None:
    panels = _panels(metrics)
    if not panels:
        return None
    figure, axes = new_figure(len(ACTION_RATES), len(panels), sharey="row")
    for row, (rate, name) in enumerate(ACTION_RATES.items()):
        highest = 0.0
        for panel, (source, split) in zip(axes[row], panels, strict=True):
            measured = metrics[metrics["source"] == source]
            highest = max(highest, _draw_runs(panel, measured, runs, split, rate, interval=False))
            panel.set_title(f"{name} · {measured_on(source, split)}")
            legend_below(panel)
        top = max(highest * 1.15, 1.0)  # the row shares one axis: room for every panel's points, 0 included
        axes[row][0].set_ylim(-0.04 * top, top)
        axes[row][0].set_ylabel(f"{name} (% of turns)")
    suptitle(figure, "Invalid and repeated actions of the student per round (eval episodes)")
    caption = (
        "Share of the student's eval turns whose action was invalid (malformed or not admissible), and that "
        "repeated an earlier (observation, action) pair of the episode; n = eval episodes per point."
    )
    return FigureFile(save(figure, directory / ACTIONS_FILE), "Invalid and repeated actions per round", caption)


def _panels(metrics: pd.DataFrame) -> list[tuple[str, str]]:
    """(data source, split) of every panel: splits in the usual order, sources by name."""
    students = metrics[metrics["policy"] == "student"]
    pairs = set(zip(students["source"], students["split"], strict=True))
    return [
        (source, split)
        for split in split_order(students["split"])
        for source in sorted({s for s, t in pairs if t == split})
    ]


def _draw_runs(
    panel: Axes, metrics: pd.DataFrame, runs: Sequence[RunData], split: str, column: str, interval: bool
) -> float:
    """One line per run over the initial student and every round (in %); returns the highest value drawn.

    Runs are nudged apart along x so that their error bars do not hide each other.
    """
    highest = 0.0
    colors = run_colors([run.name for run in runs])
    every_round = sorted({INITIAL_ROUND, *(number for run in runs for number in run.rounds)})
    for index, run in enumerate(runs):
        rounds = [INITIAL_ROUND, *run.rounds]
        played = student_rounds(metrics, run.name, split).reindex(rounds)
        values, counts = played[column], played["episodes"]
        if values.isna().all():
            panel.plot([], [], color=colors[run.name], label=f"{run.name}: not evaluated on {split}")
            continue
        missing = [number for number, value in values.items() if np.isnan(value)]
        label = f"{run.name} (n={count_range(counts)}{missing_text(missing)})"
        x = np.array(rounds) + (index - (len(runs) - 1) / 2) * 0.06
        y = values.to_numpy() * 100
        highest = max(highest, float(np.nanmax(y)))
        if interval:
            low, high = wilson_interval(values.to_numpy(), counts.to_numpy())
            panel.errorbar(
                x, y, yerr=[y - low * 100, high * 100 - y], color=colors[run.name], marker="o", capsize=3, label=label
            )
        else:
            panel.plot(x, y, color=colors[run.name], marker="o", label=label)
    round_axis(panel, every_round)
    return highest


def _draw_references(panel: Axes, metrics: pd.DataFrame, split: str) -> None:
    """A horizontal line per distinct teacher / expert result on the split (runs sharing one result share a line)."""
    in_split = metrics[(metrics["task_type"] == ALL_TASKS) & (metrics["split"] == split)]
    for policy in REFERENCE_POLICIES:
        rows = in_split[in_split["policy"] == policy]
        for (success, _), same in rows.groupby(["success", "episode_set"], sort=True):
            runs = ", ".join(same["run"])
            panel.axhline(
                success * 100,
                color="0.3",
                linestyle=REFERENCE_STYLES[policy],
                linewidth=1.2,
                label=f"{policy} {success:.1%} (n={same['episodes'].iloc[0]}; in {runs})",
            )
