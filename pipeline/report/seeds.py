"""Per-seed rates gathered into per-group cells: what every across-seed table and figure reads.

A cell pools the seeds of one group on one kind of measurement: one data source, one split, one eval set
(the exact episodes played and the eval's settings). Seeds measured on different eval sets land in
different cells, so a mean is never taken over different games. A cell keeps the per-seed values
themselves, each a seed's rate over its own episodes (or turns): its mean, interval and difference to
another group all come from those values (`pipeline.report.stats`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from pipeline.inspection import label_counts
from pipeline.judges import LABELS
from pipeline.report.groups import Group
from pipeline.report.loading import INITIAL_ROUND, RESPONSE_PROBABILITIES, RunData
from pipeline.report.metrics import ALL_TASKS, KEYS, RATES
from pipeline.report.tables import row_label
from pipeline.shards import fingerprint

MEASUREMENT = ["source", "split", "eval_set"]  # what must be equal for two numbers to share a column
CELL_KEYS = ["group", *MEASUREMENT, "row", "task_type"]


def seed_cells(metrics: pd.DataFrame, groups: Sequence[Group]) -> pd.DataFrame:
    """One row per CELL_KEYS value (row: `tables.row_label`), with `policy`, `round` (NaN for teacher and
    expert, whose round is only where their eval was found), `episodes` per seed and, per rate, the tuple
    of per-seed values (a seed whose rate is undefined, with no turns to count, is left out of that rate)."""
    rows = _seed_rows(metrics, groups)
    records = []
    for key, same in rows.groupby(CELL_KEYS, sort=False):
        first = same.iloc[0]
        records.append(
            {
                **dict(zip(CELL_KEYS, key, strict=True)),
                "policy": first["policy"],
                "round": first["round"] if first["policy"] == "student" else np.nan,
                "episodes": int(first["episodes"]),  # one eval set: every seed played the same episodes
                **{rate: tuple(same[rate].dropna()) for rate in RATES},
            }
        )
    return pd.DataFrame(records, columns=[*CELL_KEYS, "policy", "round", "episodes", *RATES])


def gain_cells(metrics: pd.DataFrame, groups: Sequence[Group]) -> pd.DataFrame:
    """One row per group, measurement and trained round: `gains`, the tuple of per-seed differences between
    the round's success and the initial student's of the same run on the same eval set (paired by run: a
    seed's own initial student is its baseline), and `episodes` per seed."""
    rows = _seed_rows(metrics, groups)
    students = rows[(rows["policy"] == "student") & (rows["task_type"] == ALL_TASKS)]
    initial = students[students["round"] == INITIAL_ROUND].set_index(["run", *MEASUREMENT])["success"]
    trained = students[students["round"] > INITIAL_ROUND]
    records = []
    for (group, *measurement, number), same in trained.groupby(["group", *MEASUREMENT, "round"], sort=False):
        pairs = [((run, *measurement), value) for run, value in zip(same["run"], same["success"], strict=True)]
        gains = tuple(value - initial[key] for key, value in pairs if key in initial.index and not np.isnan(value))
        if gains:
            records.append(
                {
                    "group": group,
                    **dict(zip(MEASUREMENT, measurement, strict=True)),
                    "round": int(number),
                    "episodes": int(same["episodes"].iloc[0]),
                    "gains": gains,
                }
            )
    return pd.DataFrame(records, columns=["group", *MEASUREMENT, "round", "episodes", "gains"])


def _seed_rows(metrics: pd.DataFrame, groups: Sequence[Group]) -> pd.DataFrame:
    """The metrics rows with their `group`, table `row` and `eval_set` (the split's episodes and settings)."""
    group_of = {run: group.name for group in groups for run in group.runs}
    pooled = metrics.loc[metrics["task_type"] == ALL_TASKS, [*KEYS, "split", "episode_set"]]
    rows = metrics.merge(pooled.rename(columns={"episode_set": "split_set"}), on=[*KEYS, "split"], how="left")
    return rows.assign(
        group=rows["run"].map(group_of),
        row=[row_label(policy, number) for policy, number in zip(rows["policy"], rows["round"], strict=True)],
        eval_set=[fingerprint(list(pair)) for pair in zip(rows["split_set"], rows["protocol"], strict=True)],
    )


def label_cells(runs: Sequence[RunData], groups: Sequence[Group]) -> pd.DataFrame:
    """One row per group and annotated round: per label, the tuple of per-seed shares of the round's turns;
    `turns`, the tuple of each seed's annotated turns; and per label and response probability
    (`loading.RESPONSE_PROBABILITIES`), the tuple of per-seed means over that label's turns, in columns
    `<label> <probability>` (a seed with no such turns, or no readable probability, is left out of it)."""
    by_name = {run.name: run for run in runs}
    records = []
    for group in groups:
        annotated = [frame for name in group.runs if not (frame := by_name[name].annotations).empty]
        counts = [label_counts(frame, "round") for frame in annotated]
        for number in sorted({int(number) for seed in counts for number in seed.index}):
            seeds = [seed.loc[number] for seed in counts if number in seed.index]
            shares = {label: tuple(seed[label] / seed["total"] for seed in seeds) for label in LABELS}
            rows = [frame[frame["round"] == number] for frame in annotated]
            records.append(
                {
                    "group": group.name,
                    "round": number,
                    "turns": tuple(int(s["total"]) for s in seeds),
                    **shares,
                    **_mean_probabilities(rows),
                }
            )
    return pd.DataFrame(records, columns=["group", "round", "turns", *LABELS, *PROBABILITY_CELLS])


PROBABILITY_CELLS = [f"{label} {probability}" for label in LABELS for probability in RESPONSE_PROBABILITIES]


def _mean_probabilities(seeds: Sequence[pd.DataFrame]) -> dict[str, tuple[float, ...]]:
    """Per label and probability, each seed's mean over its turns of that label (one round's rows per seed)."""
    cells = {}
    for label in LABELS:
        for probability in RESPONSE_PROBABILITIES:
            means = (rows.loc[rows["label"] == label, probability].mean() for rows in seeds)
            cells[f"{label} {probability}"] = tuple(float(mean) for mean in means if not np.isnan(mean))
    return cells
