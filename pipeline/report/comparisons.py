"""Comparing runs: improvement over a baseline run, and where runs were measured on different games.

A comparison is only worth its number when both sides played the same episodes after the same number
of rounds. So each run is compared with the baseline at the newest round both evaluated, and only when
that round's episode sets are identical; otherwise the cell says why there is no number. The same
fingerprints drive the notes that flag columns measured on different games.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from pipeline.report.loading import INITIAL_ROUND, RunData
from pipeline.report.metrics import ALL_TASKS, split_order, student_rounds
from pipeline.report.stats import relative_improvement
from pipeline.report.tables import MISSING, Table, pct, round_span


@dataclass(frozen=True)
class Comparison:
    """One run against the baseline on one split; `reason` says why there is no number (empty when there is)."""

    run: str
    split: str
    round: int | None = None
    value: float = math.nan
    baseline: float = math.nan
    reason: str = ""

    @property
    def points(self) -> float:
        """The difference in percentage points."""
        return (self.value - self.baseline) * 100

    @property
    def relative(self) -> float:
        return relative_improvement(self.value, self.baseline)


def compare_to_baseline(metrics: pd.DataFrame, runs: Sequence[RunData], baseline: str) -> list[Comparison]:
    """Every other run against `baseline`, per split either evaluated, at the newest round both evaluated."""
    comparisons = []
    for run in runs:
        if run.name == baseline:
            continue
        splits = metrics.loc[metrics["run"].isin([run.name, baseline]) & (metrics["policy"] == "student"), "split"]
        for split in split_order(splits):
            mine, theirs = _trained(metrics, run.name, split), _trained(metrics, baseline, split)
            comparisons.append(_compare(mine, theirs, run.name, split, baseline))
    return comparisons


def _trained(metrics: pd.DataFrame, run: str, split: str) -> pd.DataFrame:
    """A run's trained students (round ≥ 1) on one split, indexed by round."""
    rows = student_rounds(metrics, run, split)
    return rows[rows.index > INITIAL_ROUND]


def _compare(mine: pd.DataFrame, theirs: pd.DataFrame, run: str, split: str, baseline: str) -> Comparison:
    for name, rows in ((run, mine), (baseline, theirs)):
        if rows.empty:
            return Comparison(run, split, reason=f"{name} has no trained round evaluated on {split}")
    common = sorted(set(mine.index) & set(theirs.index))
    if not common:
        return Comparison(run, split, reason="no round evaluated by both")
    newest = common[-1]
    ours, base = mine.loc[newest], theirs.loc[newest]
    if ours["episode_set"] != base["episode_set"]:
        return Comparison(
            run, split, newest, reason=f"different episodes in round {newest}: {ours['episodes']} vs {base['episodes']}"
        )
    return Comparison(run, split, newest, float(ours["success"]), float(base["success"]))


def improvement_table(comparisons: Sequence[Comparison], baseline: str) -> Table:
    cells = pd.DataFrame({"run": [c.run for c in comparisons], "split": [c.split for c in comparisons]})
    cells["round"] = [MISSING if c.round is None else str(c.round) for c in comparisons]
    cells["success"] = [_pair(c) for c in comparisons]
    cells["difference"] = [MISSING if c.reason else f"{c.points:+.1f} pts" for c in comparisons]
    cells["relative"] = [_relative(c) for c in comparisons]
    notes = [
        f"Each run against {baseline} at the newest round both evaluated, on identical episodes only; "
        f"relative = (run − {baseline}) / {baseline}."
    ]
    return Table(f"Improvement over {baseline}", cells.set_index(["run", "split"]), notes)


def _pair(comparison: Comparison) -> str:
    if comparison.reason:
        return f"{MISSING} ({comparison.reason})"
    return f"{pct(comparison.value)} vs {pct(comparison.baseline)}"


def _relative(comparison: Comparison) -> str:
    if comparison.reason:
        return MISSING
    if math.isnan(comparison.relative):
        return f"{MISSING} (baseline at 0%)"
    return f"{comparison.relative:+.1%}"


def comparability_notes(metrics: pd.DataFrame) -> list[str]:
    """One line per split whose student rows were not all measured on the same episodes."""
    students = metrics[(metrics["policy"] == "student") & (metrics["task_type"] == ALL_TASKS)]
    notes = []
    for split in split_order(students["split"]):
        rows = students[students["split"] == split]
        if rows["episode_set"].nunique() < 2:
            continue
        groups = []
        for (_, run), group in rows.groupby(["episode_set", "run"], sort=False):
            first = group.iloc[0]
            groups.append(f"{run} {round_span(group['round'])}: {first['episodes']} episodes of {first['games']} games")
        notes.append(
            f"{split} was measured on different episode sets ({'; '.join(groups)}): "
            "its numbers are not directly comparable across these (round 0 = initial student)."
        )
    return notes
