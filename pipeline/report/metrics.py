"""Success and action rates from eval episode rows, per run, policy, round, split and task type.

The rates come from `pipeline.evaluation.summarize`, the function that writes every eval's
summary.json, so a report never disagrees with the eval stage about what a rate means. Beside each rate
this keeps what it rests on (episodes, games, and fingerprints of the exact sets of games and episodes), so
that tables and figures can say when two numbers were measured on different games.

There is no rate pooled over splits (summary.json's "overall"): runs may evaluate different splits, and a
number over train and valid_unseen together says neither how well the student fits nor how it transfers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from pipeline.envs.games import MINI_SPLITS
from pipeline.evaluation import summarize
from pipeline.shards import fingerprint

ALL_TASKS = "all"  # the task_type value of a row that pools every task type
RATES = ("success", "invalid_action_rate", "repeated_action_rate")
ACTION_RATES = {"invalid_action_rate": "invalid actions", "repeated_action_rate": "repeated actions"}
KEYS = ["run", "policy", "round", "source", "protocol"]  # one eval folder each (see loading.RunData.evals)
COLUMNS = [*KEYS, "split", "task_type", "episodes", "games", *RATES, "game_set", "episode_set"]


def eval_metrics(evals: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, policy, round, split, task_type), with the COLUMNS above (source and protocol: of
    the eval folder the row's episodes come from).

    `task_type` ALL pools the task types of a split; a task type without episodes has no row (rather than
    a 0% row). Rates with nothing to count over are NaN.
    """
    records: list[dict[str, Any]] = []
    for (run, policy, round_, source, protocol), played in evals.groupby(KEYS, sort=True):
        summary = summarize(played.to_dict("records"))
        key = {"run": run, "policy": policy, "round": int(round_), "source": source, "protocol": protocol}
        for split, block in summary["splits"].items():
            in_split = played[played["split"] == split]
            records.append({**key, **_measured(split, ALL_TASKS, block, in_split)})
            for task_type, task_block in block["task_types"].items():
                of_type = in_split[in_split["task_type"] == task_type]
                records.append({**key, **_measured(split, task_type, task_block, of_type)})
    frame = pd.DataFrame(records, columns=COLUMNS)
    return frame.astype({rate: float for rate in RATES})


def _measured(split: str, task_type: str, block: dict[str, Any], played: pd.DataFrame) -> dict[str, Any]:
    episode_keys = sorted(played["split"] + "/" + played["episode_id"])
    game_keys = sorted(set(played["split"] + "/" + played["game"]))
    return {
        "split": split,
        "task_type": task_type,
        "episodes": block["episodes"],
        "games": len(played[["split", "game"]].drop_duplicates()),
        **{rate: np.nan if block[rate] is None else block[rate] for rate in RATES},
        "game_set": fingerprint(game_keys),
        "episode_set": fingerprint(episode_keys),
    }


def split_order(splits: Iterable[str]) -> list[str]:
    """ALFWorld's train, valid_seen, valid_unseen, then any other split by name."""
    unique = set(splits)
    return [s for s in MINI_SPLITS if s in unique] + sorted(unique - set(MINI_SPLITS))


def student_rounds(metrics: pd.DataFrame, run: str, split: str) -> pd.DataFrame:
    """A run's student rows for one split (all task types), one per round, indexed by round."""
    rows = metrics[
        (metrics["run"] == run)
        & (metrics["policy"] == "student")
        & (metrics["split"] == split)
        & (metrics["task_type"] == ALL_TASKS)
    ]
    return rows.set_index("round").sort_index()
