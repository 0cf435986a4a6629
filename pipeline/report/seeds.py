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
from pipeline.report.loading import RunData
from pipeline.report.metrics import ALL_TASKS, KEYS, RATES
from pipeline.report.tables import row_label
from pipeline.shards import fingerprint

MEASUREMENT = ["source", "split", "eval_set"]  # what must be equal for two numbers to share a column
CELL_KEYS = ["group", *MEASUREMENT, "row", "task_type"]


def seed_cells(metrics: pd.DataFrame, groups: Sequence[Group]) -> pd.DataFrame:
    """One row per CELL_KEYS value (row: `tables.row_label`), with `policy`, `round` (NaN for teacher and
    expert, whose round is only where their eval was found), `episodes` per seed and, per rate, the tuple
    of per-seed values (a seed whose rate is undefined, with no turns to count, is left out of that rate)."""
    group_of = {run: group.name for group in groups for run in group.runs}
    pooled = metrics.loc[metrics["task_type"] == ALL_TASKS, [*KEYS, "split", "episode_set"]]
    rows = metrics.merge(pooled.rename(columns={"episode_set": "split_set"}), on=[*KEYS, "split"], how="left")
    rows = rows.assign(
        group=rows["run"].map(group_of),
        row=[row_label(policy, number) for policy, number in zip(rows["policy"], rows["round"], strict=True)],
        eval_set=[fingerprint(list(pair)) for pair in zip(rows["split_set"], rows["protocol"], strict=True)],
    )
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


def label_cells(runs: Sequence[RunData], groups: Sequence[Group]) -> pd.DataFrame:
    """One row per group and annotated round: per label, the tuple of per-seed shares of the round's turns,
    and `turns`, the tuple of each seed's annotated turns."""
    by_name = {run.name: run for run in runs}
    records = []
    for group in groups:
        annotated = [by_name[name].annotations for name in group.runs]
        counts = [label_counts(frame, "round") for frame in annotated if not frame.empty]
        for number in sorted({int(number) for seed in counts for number in seed.index}):
            seeds = [seed.loc[number] for seed in counts if number in seed.index]
            shares = {label: tuple(seed[label] / seed["total"] for seed in seeds) for label in LABELS}
            records.append(
                {"group": group.name, "round": number, "turns": tuple(int(s["total"]) for s in seeds), **shares}
            )
    return pd.DataFrame(records, columns=["group", "round", "turns", *LABELS])
