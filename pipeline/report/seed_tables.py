"""The across-seed tables: each group's mean over its seeds ± the half-width of a 95% t-interval.

A cell reads "50.0% ± 6.2 (3 seeds)": the mean of the seeds' own rates, ± in percentage points, and how
many seeds it rests on; the episodes behind each seed's rate are in the column header or the cell. One
seed gives no interval and the cell says so. A column holds one group on one measurement (data source,
split, eval set): where a group's seeds played different eval sets, each set is its own column, labelled
by its fingerprint, and differences are only taken between groups on the same eval set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from pipeline.envs.games import TASK_TYPES
from pipeline.judges import LABELS
from pipeline.report.groups import Group
from pipeline.report.loading import FLOOR_ROWS, INITIAL_ROUND, REFERENCE_POLICIES, reference_rows
from pipeline.report.metrics import ACTION_RATES, ALL_TASKS, split_order
from pipeline.report.plotting import count_range
from pipeline.report.seeds import MEASUREMENT, PROBABILITY_CELLS
from pipeline.report.stats import (
    CI_KIND,
    DIFFERENCE_KIND,
    Estimate,
    difference_interval,
    mean_interval,
    relative_improvement,
)
from pipeline.report.tables import MISSING, NOT_EVALUATED, Table, pct, row_label

PAIRED_KIND = "95% CI, paired t over seeds"
PLUS_MINUS = f"± = half-width of the {CI_KIND}, in percentage points, over each seed's own rate"


def rate_text(values: Sequence[float], episodes: int | None = None) -> str:
    """`50.0% ± 6.2 (3 seeds)`, with ` × 24 ep` (episodes per seed) when given; one seed: no interval."""
    if not values:
        return MISSING
    estimate = mean_interval(values)
    per_seed = "" if episodes is None else f" × {episodes} ep"
    if not estimate.has_interval:
        return f"{pct(estimate.mean)} (n=1 seed{per_seed}: no interval)"
    return f"{pct(estimate.mean)} ± {estimate.half * 100:.1f} ({len(values)} seeds{per_seed})"


def measurement_labels(cells: pd.DataFrame) -> dict[tuple, str]:
    """(group, source, split, eval_set) -> "mini · valid_unseen", plus " · eval set 1a2b3c" where the group has
    more than one eval set there."""
    labels = {}
    for (group, source, split), same in cells.groupby(["group", "source", "split"], sort=False):
        several = same["eval_set"].nunique() > 1
        for eval_set in same["eval_set"].unique():
            parts = [source, split, f"eval set {eval_set[:6]}" if several else ""]
            labels[(group, source, split, eval_set)] = " · ".join(part for part in parts if part)
    return labels


def eval_set_notes(cells: pd.DataFrame) -> list[str]:
    """One line per group and split whose seeds or rounds were evaluated on more than one eval set."""
    notes = []
    for (group, source, split), same in cells.groupby(["group", "source", "split"], sort=False):
        sets = same["eval_set"].unique()
        if len(sets) > 1:
            where = " · ".join(part for part in (source, split) if part)
            notes.append(
                f"{group} {where} was evaluated on {len(sets)} eval sets ({', '.join(s[:6] for s in sets)}: other "
                "episodes or eval settings): each is its own column, never pooled."
            )
    return notes


def group_success_table(cells: pd.DataFrame, groups: Sequence[Group]) -> Table:
    """Rows: the initial student, every round, teacher, expert; a column per group and measurement."""
    pooled = cells[cells["task_type"] == ALL_TASKS]
    rounds = sorted({int(number) for number in pooled["round"].dropna() if number > INITIAL_ROUND})
    rows = [row_label("student", number) for number in (INITIAL_ROUND, *rounds)] + reference_rows(pooled["row"])
    labels = measurement_labels(cells)
    frame = pd.DataFrame(index=rows)
    for group in groups:
        measured = _ordered(pooled[pooled["group"] == group.name])
        if measured.empty:  # a group that evaluated nothing still gets a column: leaving it out would hide it
            frame[(group.name, "", "")] = [_absent(row) for row in rows]
        for key, same in measured.groupby(MEASUREMENT, sort=False):
            by_row = same.set_index("row")
            column = (group.name, labels[(group.name, *key)], f"n={by_row['episodes'].iloc[0]} episodes per seed")
            frame[column] = [
                rate_text(by_row.loc[row, "success"]) if row in by_row.index else _absent(row) for row in rows
            ]
    notes = [
        f"Mean over seeds; {PLUS_MINUS}. A group = runs equal in every setting but run name and seed.",
        f"{MISSING} = not evaluated; a column is one data source, split and eval set (never pooled).",
    ]
    return Table(f"Success per round, mean over seeds ({CI_KIND})", frame, notes)


def gain_table(gains: pd.DataFrame, cells: pd.DataFrame, groups: Sequence[Group]) -> Table:
    """Each group's trained rounds against its own initial student, seed by seed (the acceptance question:
    does distillation beat the student it started from, with an interval that excludes 0)."""
    labels = measurement_labels(cells)
    records, index = [], []
    for group in groups:
        for _, cell in gains[gains["group"] == group.name].iterrows():
            index.append((group.name, labels[(group.name, *cell[MEASUREMENT])], row_label("student", cell["round"])))
            records.append([_points(mean_interval(cell["gains"])), f"{len(cell['gains'])} × {cell['episodes']} ep"])
    frame = _frame(records, index, ["group", "split", "round"], [f"round − initial student ({PAIRED_KIND})", "seeds"])
    notes = [
        f"Per seed, the round's success minus that run's initial student's on the same eval set, in percentage "
        f"points; ± = half-width of the {PAIRED_KIND} of those differences (needs two seeds)."
    ]
    return Table("Gain over the initial student, mean over seeds", frame, notes)


def gap_table(cells: pd.DataFrame, groups: Sequence[Group]) -> Table | None:
    """The share of the floor-to-teacher gap each student row closes: (student − best floor) / (teacher − best
    floor), per seed, on every measurement where the group evaluated the teacher and at least one floor.

    Why: a rate alone hides how much of it a policy that learned nothing would reach on the same games; this
    puts the student between the two references (0 = the best floor, 1 = the teacher). None when no group
    has both references anywhere.
    """
    pooled = cells[cells["task_type"] == ALL_TASKS]
    labels = measurement_labels(cells)
    records, index = [], []
    for group in groups:
        for key, same in _ordered(pooled[pooled["group"] == group.name]).groupby(MEASUREMENT, sort=False):
            by_row = same.set_index("row")
            floors = {row: mean_interval(by_row.loc[row, "success"]).mean for row in by_row.index if row in FLOOR_ROWS}
            if "teacher" not in by_row.index or not floors:
                continue
            best = max(floors, key=floors.__getitem__)
            teacher = mean_interval(by_row.loc["teacher", "success"]).mean
            gap = teacher - floors[best]
            for _, cell in same[same["policy"] == "student"].iterrows():
                shares = [(value - floors[best]) / gap for value in cell["success"]] if gap > 0 else []
                share = _share(mean_interval(shares)) if gap > 0 else "teacher not above the best floor"
                index.append((group.name, labels[(group.name, *key)], cell["row"]))
                records.append([f"{best} {pct(floors[best])}", pct(teacher), share, f"{len(cell['success'])} seeds"])
    if not records:
        return None
    columns = ["best floor", "teacher", f"share of the gap closed ({CI_KIND})", "seeds"]
    frame = _frame(records, index, ["group", "split", "row"], columns)
    notes = [
        "Per seed, (student − best floor) / (teacher − best floor): 0 = what the best zero-parameter policy wins, "
        "1 = the teacher; the best floor and the teacher are the group's means over seeds on the same games (their "
        "own spread is not in the interval)."
    ]
    return Table("Share of the floor-to-teacher gap closed, mean over seeds", frame, notes)


def _share(estimate: Estimate) -> str:
    if not estimate.has_interval:
        return f"{estimate.mean:.2f} (one seed: no interval)"
    return f"{estimate.mean:.2f} ± {estimate.half:.2f}"


def group_task_type_table(cells: pd.DataFrame, groups: Sequence[Group]) -> Table:
    """Per group, measurement and row: success per task type, with the episodes of that type per seed."""
    columns = [*TASK_TYPES, ALL_TASKS]
    records, index = [], []
    labels = measurement_labels(cells)
    for group in groups:
        for (*key, row), same in _ordered(cells[cells["group"] == group.name]).groupby(
            [*MEASUREMENT, "row"], sort=False
        ):
            by_type = same.set_index("task_type")
            index.append((group.name, labels[(group.name, *key)], row))
            records.append(
                [
                    rate_text(by_type.loc[t, "success"], by_type.loc[t, "episodes"]) if t in by_type.index else MISSING
                    for t in columns
                ]
            )
    frame = _frame(records, index, ["group", "split", "row"], [*TASK_TYPES, "all task types"])
    notes = [f"{PLUS_MINUS}; × n ep = episodes of the task type per seed; {MISSING} = none in the split."]
    return Table(f"Success per task type, mean over seeds ({CI_KIND})", frame, notes)


def group_actions_table(cells: pd.DataFrame, groups: Sequence[Group]) -> Table:
    """Invalid and repeated actions (share of eval turns) per group, measurement and row."""
    pooled = cells[cells["task_type"] == ALL_TASKS]
    records, index = [], []
    labels = measurement_labels(cells)
    for group in groups:
        for _, cell in _ordered(pooled[pooled["group"] == group.name]).iterrows():
            index.append((group.name, labels[(group.name, *cell[MEASUREMENT])], cell["row"]))
            records.append([rate_text(cell[rate], cell["episodes"]) for rate in ACTION_RATES])
    frame = _frame(records, index, ["group", "split", "row"], list(ACTION_RATES.values()))
    notes = [
        f"Share of eval turns whose action was invalid (malformed or not admissible) or repeated an earlier "
        f"(observation, action) pair; {PLUS_MINUS}; × n ep = eval episodes per seed."
    ]
    return Table(f"Invalid and repeated actions, mean over seeds ({CI_KIND})", frame, notes)


def group_labels_table(labels: pd.DataFrame, groups: Sequence[Group]) -> Table:
    """The teacher's label shares of each round's rollout turns, per group."""
    records, index = [], []
    for group in groups:
        for _, cell in labels[labels["group"] == group.name].iterrows():
            index.append((group.name, row_label("student", cell["round"])))
            records.append([*(rate_text(cell[label]) for label in LABELS), count_range(cell["turns"])])
    frame = _frame(records, index, ["group", "round"], [*LABELS, "turns per seed"])
    notes = [f"Share of the round's annotated rollout turns with each label; {PLUS_MINUS}."]
    return Table(f"Teacher labels per round, mean over seeds ({CI_KIND})", frame, notes)


def group_response_table(labels: pd.DataFrame, groups: Sequence[Group]) -> Table:
    """What each label meant in the data: the rolled-out response's probability under the teacher and under
    the sampler that drew it, per label and round, per group. Why a method that skips turns wins or loses is
    in these numbers: which turns it dropped, and how sure teacher and student were there."""
    records, index = [], []
    for group in groups:
        for _, cell in labels[labels["group"] == group.name].iterrows():
            index.append((group.name, row_label("student", cell["round"])))
            records.append([rate_text(cell[column]) for column in PROBABILITY_CELLS])
    frame = _frame(records, index, ["group", "round"], PROBABILITY_CELLS)
    notes = [
        "Mean over a label's turns of the response's probability (the product over its tokens): `teacher_prob` "
        "under the teacher's full distribution at annotation (never restricted), `sampler_prob` under the "
        "distribution the rollout drew it from (restricted to the admissible actions where the rollout was); "
        f"{PLUS_MINUS}.",
    ]
    return Table(f"Response probabilities per label, mean over seeds ({CI_KIND})", frame, notes)


def difference_table(cells: pd.DataFrame, groups: Sequence[Group], baseline: Group) -> Table:
    """Each other group's trained rounds against the baseline's same round, on the same measurement only."""
    trained = cells[
        (cells["task_type"] == ALL_TASKS) & (cells["policy"] == "student") & (cells["round"] > INITIAL_ROUND)
    ]
    theirs = trained[trained["group"] == baseline.name].set_index([*MEASUREMENT, "round"])
    labels = measurement_labels(cells)
    records, index = [], []
    for group in groups:
        if group.name == baseline.name:
            continue
        for _, cell in _ordered(trained[trained["group"] == group.name]).iterrows():
            key = (*cell[MEASUREMENT], cell["round"])
            index.append((group.name, labels[(group.name, *cell[MEASUREMENT])], cell["row"]))
            if key in theirs.index:
                records.append(_difference_cells(cell, theirs.loc[key], baseline.name))
            else:
                records.append(
                    [rate_text(cell["success"], cell["episodes"]), *_no_baseline(theirs, key, baseline.name)]
                )
    base = baseline.name
    header = ["A: mean", f"B: {base} mean", f"A − B ({DIFFERENCE_KIND})", "relative (A − B) / B"]
    frame = _frame(records, index, ["group", "split", "round"], header)
    notes = [
        f"Difference of the seed means in percentage points, ± the half-width of its {DIFFERENCE_KIND} (needs "
        f"two seeds on each side); relative = (A − B) / B of the seed means, the paper's metric. Only rounds "
        f"both evaluated on the same data source, split and eval set are compared.",
    ]
    return Table(f"Difference to {baseline.name}, mean over seeds", frame, notes)


def _difference_cells(cell: pd.Series, base: pd.Series, baseline: str) -> list[str]:
    difference = difference_interval(cell["success"], base["success"])
    relative = relative_improvement(mean_interval(cell["success"]).mean, mean_interval(base["success"]).mean)
    return [
        rate_text(cell["success"], cell["episodes"]),
        rate_text(base["success"], base["episodes"]),
        _points(difference),
        f"{MISSING} (undefined: {baseline} at 0%)" if math.isnan(relative) else f"{relative:+.1%}",
    ]


def _points(difference: Estimate) -> str:
    points = f"{difference.mean * 100:+.1f} pts"
    return f"{points} ± {difference.half * 100:.1f}" if difference.has_interval else f"{points} (no interval: 1 seed)"


def _no_baseline(theirs: pd.DataFrame, key: tuple, baseline: str) -> list[str]:
    """Why there is no difference: the baseline played that round here on other episodes or settings, or not at all."""
    source, split, _, number = key
    same_split = theirs.reset_index()
    same_split = same_split[(same_split["source"] == source) & (same_split["split"] == split)]
    if number in set(same_split["round"]):
        reason = f"{baseline} played other episodes or eval settings here"
    else:
        reason = f"{baseline} has no {row_label('student', int(number))} here"
    return [f"{MISSING} ({reason})", MISSING, MISSING]


def _ordered(cells: pd.DataFrame) -> pd.DataFrame:
    """Splits in the usual order, then the initial student, the rounds, and the reference policies last."""
    splits = {split: rank for rank, split in enumerate(split_order(cells["split"]))}
    rank = cells["round"].fillna(math.inf)
    return (
        cells.assign(_split=cells["split"].map(splits), _rank=rank)
        .sort_values(["source", "_split", "eval_set", "_rank", "row"], kind="stable")
        .drop(columns=["_split", "_rank"])
    )


def _absent(row: str) -> str:
    return NOT_EVALUATED if row in REFERENCE_POLICIES else MISSING


def _frame(records: list[list[str]], index: list[tuple], names: list[str], columns: list[str]) -> pd.DataFrame:
    keys = pd.MultiIndex.from_arrays(
        [list(level) for level in zip(*index, strict=True)] or [[]] * len(names), names=names
    )
    return pd.DataFrame(records, index=keys, columns=columns)
