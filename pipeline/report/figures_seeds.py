"""Figures across seeds: each group's mean per round, with the 95% t-interval over its seeds as a shaded band.

One panel per data source and split; one line per group and eval set, so a line never joins points
measured on different games. Thin bars repeat the band at each point, so that a round whose neighbours
have no interval still shows its own. A point resting on one seed has neither; the legend gives the seeds
and the episodes per seed behind the points, and says when there is no band at all.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from pipeline.report.groups import Group
from pipeline.report.loading import REFERENCE_POLICIES
from pipeline.report.metrics import ACTION_RATES, ALL_TASKS, split_order
from pipeline.report.plotting import (
    REFERENCE_STYLES,
    FigureFile,
    count_range,
    legend_below,
    new_figure,
    round_axis,
    run_colors,
    save,
    suptitle,
)
from pipeline.report.stats import CI_KIND, mean_interval

SEED_SUCCESS_FILE = "success_by_round_seeds.png"
SEED_ACTIONS_FILE = "action_rates_by_round_seeds.png"
MARKERS = ("o", "s", "^", "D")


def seed_success_figure(cells: pd.DataFrame, groups: Sequence[Group], directory: Path) -> FigureFile | None:
    panels = _panels(cells)
    if not panels:
        return None
    figure, axes = new_figure(1, len(panels), panel=(4.8, 4.4), sharey=True)
    for panel, (source, split) in zip(axes[0], panels, strict=True):
        _draw_groups(panel, cells, groups, source, split, "success")
        _draw_references(panel, cells, groups, source, split)
        panel.set_title(" · ".join(part for part in (source, split) if part))
        panel.set_ylim(-3, 103)
        legend_below(panel)
    axes[0][0].set_ylabel("success rate (%), mean over seeds")
    suptitle(figure, f"Success per round per group (bands: {CI_KIND})")
    caption = (
        "Each group's mean over its seeds of each seed's success rate, per eval split; bands and bars: "
        f"{CI_KIND}; n = seeds × eval episodes per seed. Dashed: teacher, dotted: expert (mean over seeds). "
        "Round 0 is the initial student."
    )
    return FigureFile(save(figure, directory / SEED_SUCCESS_FILE), "Success per round across seeds", caption)


def seed_action_rates_figure(cells: pd.DataFrame, groups: Sequence[Group], directory: Path) -> FigureFile | None:
    panels = _panels(cells)
    if not panels:
        return None
    figure, axes = new_figure(len(ACTION_RATES), len(panels), panel=(4.8, 3.6), sharey="row")
    for row, (rate, name) in enumerate(ACTION_RATES.items()):
        highest = 0.0
        for panel, (source, split) in zip(axes[row], panels, strict=True):
            highest = max(highest, _draw_groups(panel, cells, groups, source, split, rate))
            panel.set_title(" · ".join(part for part in (name, source, split) if part))
            legend_below(panel)
        top = max(highest * 1.15, 1.0)  # the row shares one axis: room for every band, 0 included
        axes[row][0].set_ylim(-0.04 * top, top)
        axes[row][0].set_ylabel(f"{name} (% of turns)")
    suptitle(figure, f"Invalid and repeated actions per round per group (bands: {CI_KIND})")
    caption = (
        "Share of the student's eval turns whose action was invalid, or repeated an earlier (observation, action) "
        f"pair; each group's mean over seeds, bands and bars: {CI_KIND}; n = seeds × eval episodes per seed."
    )
    return FigureFile(save(figure, directory / SEED_ACTIONS_FILE), "Invalid and repeated actions across seeds", caption)


def _students(cells: pd.DataFrame) -> pd.DataFrame:
    return cells[(cells["policy"] == "student") & (cells["task_type"] == ALL_TASKS)]


def _panels(cells: pd.DataFrame) -> list[tuple[str, str]]:
    """(data source, split) of every panel: splits in the usual order, sources by name."""
    students = _students(cells)
    pairs = set(zip(students["source"], students["split"], strict=True))
    return [
        (source, split)
        for split in split_order(students["split"])
        for source in sorted({s for s, t in pairs if t == split})
    ]


def _draw_groups(
    panel: Axes, cells: pd.DataFrame, groups: Sequence[Group], source: str, split: str, column: str
) -> float:
    """One line per group and eval set over the rounds (in %), nudged apart along x; returns the highest band top."""
    colors = run_colors([group.name for group in groups])
    students = _students(cells)
    here = students[(students["source"] == source) & (students["split"] == split)]
    rounds = sorted({int(number) for number in here["round"]})
    lines = [
        (group, eval_set, same.set_index("round").reindex(rounds))
        for group in groups
        for eval_set, same in here[here["group"] == group.name].groupby("eval_set", sort=False)
    ]
    sets, drawn = Counter(group.name for group, _, _ in lines), Counter()
    highest = 0.0
    for index, (group, eval_set, line) in enumerate(lines):
        values = [v if isinstance(v, tuple) else () for v in line[column]]  # () where the round is missing
        estimates = [mean_interval(v) for v in values]
        y = np.array([estimate.mean for estimate in estimates]) * 100
        half = np.array([estimate.half for estimate in estimates]) * 100
        x = np.array(rounds) + (index - (len(lines) - 1) / 2) * 0.06
        seeds = count_range([len(v) for v in values if v])
        label = (
            f"{group.name}{f' · eval set {eval_set[:6]}' if sets[group.name] > 1 else ''} "
            f"(n={seeds} seed{'' if seeds == '1' else 's'} × {count_range(line['episodes'])} ep"
            f"{': no band' if seeds == '1' else ''})"
        )
        color = colors[group.name]
        panel.plot(x, y, color=color, marker=MARKERS[drawn[group.name] % len(MARKERS)], label=label)
        drawn[group.name] += 1  # a group's further eval sets get other markers in its colour
        banded = ~np.isnan(half)
        panel.fill_between(x, y - half, y + half, where=banded, color=color, alpha=0.2, linewidth=0)
        panel.errorbar(x[banded], y[banded], yerr=half[banded], fmt="none", ecolor=color, capsize=2, linewidth=0.8)
        if not np.isnan(y).all():
            highest = max(highest, float(np.nanmax(y + np.nan_to_num(half))))
    round_axis(panel, rounds)
    return highest


def _draw_references(panel: Axes, cells: pd.DataFrame, groups: Sequence[Group], source: str, split: str) -> None:
    """A horizontal line per group at its teacher's / expert's mean over seeds, where evaluated."""
    colors = run_colors([group.name for group in groups])
    here = cells[(cells["task_type"] == ALL_TASKS) & (cells["source"] == source) & (cells["split"] == split)]
    for policy in REFERENCE_POLICIES:
        for _, cell in here[here["policy"] == policy].iterrows():
            estimate = mean_interval(cell["success"])
            panel.axhline(
                estimate.mean * 100,
                color=colors[cell["group"]],
                linestyle=REFERENCE_STYLES[policy],
                linewidth=1.2,
                label=f"{policy} in {cell['group']} {estimate.mean:.1%} (n={len(cell['success'])} seeds)",
            )
