"""The report's tables as text cells, shared by the Markdown page and the terminal.

Numbers stay numbers (NaN where nothing was measured) until the last step here, where a missing value
becomes "—" (or "not evaluated" for a reference policy), never "0". Every success rate is shown with
the episodes it rests on: in the column header when the column has one count, beside the cell when a
cell's count differs from its column's. A column holds one run on one measurement: one data source (mini,
bench, alfworld), one split and one set of games, all three in its header; an expert evaluated on the
full ALFWorld games never shares a column with a student evaluated on the mini games.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pandas as pd

from pipeline.envs.games import TASK_TYPES
from pipeline.judges import LABELS
from pipeline.report.loading import INITIAL_ROUND, REFERENCE_POLICIES, RunData, reference_rows
from pipeline.report.metrics import ALL_TASKS, split_order

MISSING = "—"
NOT_EVALUATED = "not evaluated"
UNRECORDED_SOURCE = "source unrecorded"  # an eval whose manifest predates the data source being recorded
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
    """The splits a run evaluated (any policy)."""
    return split_order(metrics.loc[metrics["run"] == run, "split"])


def measured_on(source: str, split: str) -> str:
    """`mini · valid_unseen`: what a column's numbers were measured on."""
    return f"{source or UNRECORDED_SOURCE} · {split}"


def game_set_labels(pooled: pd.DataFrame) -> list[str]:
    """Each row's game set: "4 games", plus " · set 1a2b3c" where its run measured more than one set of games
    on that source and split (the initial student on all games, the run's own rounds on fewer, say)."""
    sets = pooled.groupby(["run", "source", "split"])["game_set"].transform("nunique")
    return [
        f"{games} games" + (f" · set {game_set[:6]}" if several > 1 else "")
        for games, game_set, several in zip(pooled["games"], pooled["game_set"], sets, strict=True)
    ]


def success_grid(metrics: pd.DataFrame, runs: Sequence[RunData]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Success rates and their episode counts.

    Rows: the initial student, every round any run has, then the reference policies; columns: (run,
    source · split, game set) for each measurement the run's evals made, in split order. NaN wherever
    nothing was evaluated.
    """
    rounds = sorted({number for run in runs for number in run.rounds})
    pooled = metrics[metrics["task_type"] == ALL_TASKS]
    rows = [row_label("student", number) for number in (INITIAL_ROUND, *rounds)] + reference_rows(pooled["policy"])
    order = {split: index for index, split in enumerate(split_order(pooled["split"]))}
    pooled = pooled.assign(
        row=[row_label(policy, number) for policy, number in zip(pooled["policy"], pooled["round"], strict=True)],
        measured=[measured_on(source, split) for source, split in zip(pooled["source"], pooled["split"], strict=True)],
        game_set_label=game_set_labels(pooled),
        split_rank=pooled["split"].map(order),
    )
    keys = ["run", "measured", "game_set_label"]
    columns = []
    for run in runs:
        mine = pooled[pooled["run"] == run.name].sort_values(["split_rank", "source", "games", "game_set"])
        # A run that evaluated nothing still gets a column (all missing): leaving it out would hide it.
        columns += list(dict.fromkeys(mine[keys].itertuples(index=False, name=None))) or [(run.name, MISSING, "")]
    columns = pd.MultiIndex.from_tuples(columns, names=["run", "measured on", "games"])
    indexed = pooled.set_index(["row", *keys])

    def grid(column: str) -> pd.DataFrame:
        if indexed.empty:
            return pd.DataFrame(float("nan"), index=rows, columns=columns)
        return indexed[column].unstack(keys).reindex(index=rows, columns=columns).astype(float)

    return grid("success"), grid("episodes")


def success_table(metrics: pd.DataFrame, runs: Sequence[RunData]) -> Table:
    success, episodes = success_grid(metrics, runs)
    cells = pd.DataFrame(index=success.index.rename(None))
    for column in success.columns:
        usual = _usual_count(episodes[column])
        cells[(*column, "" if usual is None else f"n={usual}")] = [
            _success_cell(value, count, usual, missing=NOT_EVALUATED if row in REFERENCE_POLICIES else MISSING)
            for row, value, count in zip(success.index, success[column], episodes[column], strict=True)
        ]
    notes = [
        "One column per run, data source, split and set of games (never pooled across them); n = eval episodes "
        "behind each rate (beside a cell when it differs from its column's); "
        f"{MISSING} = not evaluated; the initial student is evaluated in round 1 by `sage-opd round`.",
    ]
    return Table("Student success per round", cells, notes)


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
            measured = played[(played["round"] == newest) & (played["split"] == split)].set_index("task_type")
            source, games = measured.loc[ALL_TASKS, "source"], int(measured.loc[ALL_TASKS, "games"])
            measured = measured.reindex(rows)
            cells[(run.name, measured_on(source, split), f"{row_label('student', newest)}, {games} games")] = [
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


def _success_cell(value: float, count: float, usual: int | None, missing: str) -> str:
    if math.isnan(value):
        return missing
    return pct(value) if int(count) == usual else f"{pct(value)} (n={int(count)})"
