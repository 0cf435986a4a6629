"""The report's tables as text cells, shared by the Markdown page and the terminal.

Numbers stay numbers (NaN where nothing was measured) until the last step here, where a missing value
becomes "—" (or "not evaluated" for a reference policy), never "0". Every success rate is shown with
the episodes it rests on: in the column header when the column has one count, beside the cell when a
cell's count differs from its column's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pandas as pd

from pipeline.envs.games import TASK_TYPES
from pipeline.judges import LABELS
from pipeline.report.loading import INITIAL_ROUND, REFERENCE_POLICIES, RunData
from pipeline.report.metrics import ALL_TASKS, OVERALL, split_order

MISSING = "—"
NOT_EVALUATED = "not evaluated"
STAGE_ORDER = ("rollout", "annotate", "train", "eval", "eval-initial")  # as `round` runs them


@dataclass
class Table:
    """A titled grid of text cells (index = row labels), with the notes a reader needs to trust it."""

    title: str
    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def column_title(column: str | tuple[str, ...], separator: str) -> str:
    """A column's header: the parts of a multi-level column joined (" · " on a page, line breaks in a terminal)."""
    return separator.join(part for part in column if part) if isinstance(column, tuple) else str(column)


def pct(value: float) -> str:
    return MISSING if math.isnan(value) else f"{value:.1%}"


def row_label(policy: str, round_: int) -> str:
    if policy != "student":
        return policy
    return "initial student" if round_ == INITIAL_ROUND else f"round {round_}"


def round_span(rounds: Iterable[int]) -> str:
    """`[1, 2, 3, 5]` -> "rounds 1–3, 5" (round 0 is the initial student)."""
    ordered = sorted(set(rounds))
    spans: list[list[int]] = []
    for number in ordered:
        if spans and number == spans[-1][-1] + 1:
            spans[-1].append(number)
        else:
            spans.append([number])
    text = ", ".join(str(s[0]) if len(s) == 1 else f"{s[0]}–{s[-1]}" for s in spans)
    return f"round{'s' if len(ordered) > 1 else ''} {text}"


def evaluated_splits(metrics: pd.DataFrame, run: str) -> list[str]:
    """The splits a run evaluated (any policy), OVERALL first."""
    return split_order(metrics.loc[metrics["run"] == run, "split"])


def success_grid(metrics: pd.DataFrame, runs: Sequence[RunData]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Success rates and their episode counts.

    Rows: the initial student, every round any run has, then the reference policies; columns: (run, split)
    for each split the run evaluated. NaN wherever nothing was evaluated.
    """
    rounds = sorted({number for run in runs for number in run.rounds})
    rows = [row_label("student", number) for number in (INITIAL_ROUND, *rounds)] + list(REFERENCE_POLICIES)
    # A run that evaluated nothing still gets a column (all missing): leaving it out would hide it.
    columns = pd.MultiIndex.from_tuples(
        [(run.name, split) for run in runs for split in evaluated_splits(metrics, run.name) or [OVERALL]],
        names=["run", "split"],
    )
    pooled = metrics[metrics["task_type"] == ALL_TASKS]
    labels = [row_label(policy, number) for policy, number in zip(pooled["policy"], pooled["round"], strict=True)]
    indexed = pooled.assign(row=labels).set_index(["row", "run", "split"])

    def grid(column: str) -> pd.DataFrame:
        if indexed.empty:
            return pd.DataFrame(float("nan"), index=rows, columns=columns)
        return indexed[column].unstack(["run", "split"]).reindex(index=rows, columns=columns).astype(float)

    return grid("success"), grid("episodes")


def success_table(metrics: pd.DataFrame, runs: Sequence[RunData]) -> Table:
    success, episodes = success_grid(metrics, runs)
    cells = pd.DataFrame(index=success.index.rename(None))
    for run, split in success.columns:
        usual = _usual_count(episodes[(run, split)])
        cells[(run, split, "" if usual is None else f"n={usual}")] = [
            _success_cell(value, count, usual, missing=NOT_EVALUATED if row in REFERENCE_POLICIES else MISSING)
            for row, value, count in zip(success.index, success[(run, split)], episodes[(run, split)], strict=True)
        ]
    notes = [
        "n = eval episodes behind each rate (beside a cell when it differs from its column's); "
        f"{MISSING} = not evaluated; the initial student is evaluated in round 1 by `sage-opd round`.",
        _overall_note(metrics),
    ]
    return Table("Student success per round", cells, [note for note in notes if note])


def task_type_table(metrics: pd.DataFrame, runs: Sequence[RunData]) -> Table:
    """Per task type, each run's newest evaluated round, per split."""
    rows = [*TASK_TYPES, ALL_TASKS]
    cells = pd.DataFrame(index=[*TASK_TYPES, "all task types"])
    notes = []
    for run in runs:
        played = metrics[(metrics["run"] == run.name) & (metrics["policy"] == "student")]
        if played.empty:
            notes.append(f"{run.name}: no evaluated round")
            continue
        newest = int(played["round"].max())
        for split in evaluated_splits(played, run.name):
            if split == OVERALL:
                continue
            measured = played[(played["round"] == newest) & (played["split"] == split)].set_index("task_type")
            measured = measured.reindex(rows)
            cells[(run.name, split, row_label("student", newest))] = [
                MISSING if math.isnan(count) else f"{pct(value)} (n={int(count)})"
                for value, count in zip(measured["success"], measured["episodes"].astype(float), strict=True)
            ]
    notes.append(f"n = eval episodes of the task type; {MISSING} = no episode of that type in the split.")
    return Table("Success per task type, newest evaluated round", cells, notes)


def round_log_table(runs: Sequence[RunData]) -> Table:
    """What `round` recorded in rounds.jsonl: rollout success, labels, training, seconds per stage."""
    recorded = {stage for run in runs for entry in run.log.values() for stage in entry["seconds"]}
    stages = [stage for stage in STAGE_ORDER if stage in recorded] + sorted(recorded - set(STAGE_ORDER))
    header = ["rollout success", "labels skip / weak / strong", "train steps", "mean train loss"]
    header += [f"{stage} (s)" for stage in stages]
    records, index = [], []
    for run in runs:
        for number in run.rounds:
            index.append(f"{run.name} · round {number}")
            entry = run.log.get(number)
            records.append([MISSING] * len(header) if entry is None else _log_cells(entry, stages))
    notes = [f"{MISSING} everywhere: the round has no line in rounds.jsonl (not finished, or run stage by stage)."]
    return Table("Rounds (rounds.jsonl)", pd.DataFrame(records, index=index, columns=header), notes)


def _log_cells(entry: dict, stages: list[str]) -> list[str]:
    labels = entry.get("labels")
    seconds = entry["seconds"]
    return [
        _shown(entry.get("rollout_success"), "{:.1%}"),
        MISSING if not labels else " / ".join(str(labels.get(name, 0)) for name in LABELS),
        _shown(entry.get("train_steps"), "{}"),
        _shown(entry.get("train_loss"), "{:.4f}"),
        *(_shown(seconds.get(stage), "{:.0f}") for stage in stages),
    ]


def _shown(value: float | None, form: str) -> str:
    return MISSING if value is None else form.format(value)


def _usual_count(counts: pd.Series) -> int | None:
    """The most common episode count of a column (the largest on a tie), None for an empty column."""
    present = counts.dropna().astype(int)
    if present.empty:
        return None
    modes = present.mode()
    return int(modes.max())


def _overall_note(metrics: pd.DataFrame) -> str:
    """Which splits "overall" pools: the usual ones, and every row that pools others (its cells are not alike)."""
    pooled = metrics[metrics["split"] == OVERALL]
    if pooled.empty:
        return ""
    usual = pooled["splits"].mode().iloc[0]
    others = pooled[pooled["splits"] != usual]
    exceptions = [
        f"{row['run']} {row_label(row['policy'], row['round'])} ({row['splits']})" for _, row in others.iterrows()
    ]
    return f"{OVERALL} pools {usual}" + (f", except: {'; '.join(exceptions)}." if exceptions else ".")


def _success_cell(value: float, count: float, usual: int | None, missing: str) -> str:
    if math.isnan(value):
        return missing
    return pct(value) if int(count) == usual else f"{pct(value)} (n={int(count)})"
