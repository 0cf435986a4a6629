"""A round as a researcher reads it: every turn beside the teacher's judgment of it.

`sage-opd inspect` is where one checks that labels and confidences make sense before training on them.
So the join is exact: a turn without an annotation (or an annotation without a turn) means the two
stages disagree, and dropping it quietly would make every count shown wrong. Only the columns a reader
looks at are loaded (never the prompts or the top-k lists, the bulk of a shard). Everything here
returns data; `stages/inspect.py` renders it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import UserError
from pipeline.judges import LABELS
from pipeline.shards import read_manifest, read_stage

KEY = ["episode_id", "turn"]
TURN_COLUMNS = [
    "run",
    "round",
    "episode_id",
    "turn",
    "task_type",
    "observation",
    "action",
    "format_ok",
    "admissible",
    "feedback",
    "response_text",
    "response_ids",
]
ANNOTATION_COLUMNS = ["episode_id", "turn", "label", "label_source", "rule_flags", "judge_output", "confidence"]
_RERUN_ANNOTATE = "rerun `sage-opd annotate` with --force"


def load_round(
    turns_dir: Path,
    annotations_dir: Path,
    turn_columns: Sequence[str] = TURN_COLUMNS,
    annotation_columns: Sequence[str] = ANNOTATION_COLUMNS,
) -> pd.DataFrame:
    """The round's turns joined with their annotations, one row per turn, in episode/turn order.

    UserError unless every turn has exactly one annotation and the reverse, every label is one we know
    and every confidence list covers the turn's response tokens: those are what inspect is there to trust.
    The column lists (which must hold the defaults' key, label, confidence and response ids) let the
    viewer read what it shows beside them.
    """
    turns = read_stage(turns_dir, "turns", columns=list(turn_columns)).to_pandas()
    notes = read_stage(annotations_dir, "annotations", columns=list(annotation_columns)).to_pandas()
    _check_unique(turns, turns_dir, "rerun `sage-opd rollout` with --force")
    _check_unique(notes, annotations_dir, _RERUN_ANNOTATE)
    _check_paired(turns, notes, turns_dir, annotations_dir)
    # Keys are unique and paired, so sorting both sides lines them up row for row.
    turns, notes = (frame.sort_values(KEY, ignore_index=True) for frame in (turns, notes))
    joined = pd.concat([turns, notes.drop(columns=KEY)], axis=1)
    if unknown := sorted(set(joined["label"]) - set(LABELS)):
        raise UserError(
            f"{annotations_dir} holds unknown label(s) {', '.join(map(repr, unknown))} "
            f"(expected {', '.join(LABELS)}): {_RERUN_ANNOTATE}"
        )
    short = int((joined["confidence"].map(len) != joined["response_ids"].map(len)).sum())
    if short:
        raise UserError(
            f"{short} annotation(s) in {annotations_dir} have a confidence list whose length differs from "
            f"the turn's response_ids: {_RERUN_ANNOTATE}"
        )
    # Null means "a rule decided, no judge ran"; pandas reads it as NaN, which is truthy.
    joined["judge_output"] = joined["judge_output"].fillna("")
    return joined


def _check_unique(frame: pd.DataFrame, directory: Path, fix: str) -> None:
    if repeated := int(frame.duplicated(KEY).sum()):
        raise UserError(f"{directory} holds {repeated} repeated (episode_id, turn) row(s): {fix}")


def _check_paired(turns: pd.DataFrame, notes: pd.DataFrame, turns_dir: Path, annotations_dir: Path) -> None:
    turn_keys = set(zip(turns["episode_id"], turns["turn"], strict=True))
    note_keys = set(zip(notes["episode_id"], notes["turn"], strict=True))
    lonely_turns, lonely_notes = sorted(turn_keys - note_keys), sorted(note_keys - turn_keys)
    if not lonely_turns and not lonely_notes:
        return
    episode, turn = (lonely_turns or lonely_notes)[0]
    raise UserError(
        f"turns and annotations do not pair up: {len(lonely_turns)} turn(s) in {turns_dir} have no annotation "
        f"and {len(lonely_notes)} annotation(s) in {annotations_dir} have no turn (first: episode {episode} "
        f"turn {turn}): {_RERUN_ANNOTATE}"
    )


def apply_filters(
    frame: pd.DataFrame, episode: str | None = None, label: str | None = None, task_type: str | None = None
) -> pd.DataFrame:
    """The turns matching every filter given (None: no filter). An unknown label is a typo, not an empty result."""
    if label is not None and label not in LABELS:
        raise UserError(f"unknown label {label!r}: expected one of {', '.join(LABELS)}")
    keep = pd.Series(True, index=frame.index)
    for column, value in (("episode_id", episode), ("label", label), ("task_type", task_type)):
        if value is not None:
            keep &= frame[column] == value
    return frame[keep].reset_index(drop=True)


def label_counts(frame: pd.DataFrame, by: str) -> pd.DataFrame:
    """Turns per label for each value of `by`; every label is a column (absent ones as 0), plus `total`."""
    counts = pd.crosstab(frame[by], frame["label"]).reindex(columns=list(LABELS), fill_value=0)
    counts.columns.name = None
    counts["total"] = counts.sum(axis=1)
    return counts


def label_summary(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Label counts per task type and per turn index: where in a game, and in which games, the teacher steps in."""
    return {"task_type": label_counts(frame, "task_type"), "turn": label_counts(frame, "turn")}


def turn_confidence(frame: pd.DataFrame) -> pd.Series:
    """Each turn's mean teacher confidence over its response tokens (NaN for a turn with no tokens)."""
    return frame["confidence"].map(lambda values: float(np.mean(values)) if len(values) else np.nan)


def mean_confidence_by_label(frame: pd.DataFrame) -> pd.DataFrame:
    """Per label: the number of turns and the mean over turns of each turn's mean token confidence.

    Averaging within a turn first weighs every turn equally whatever its length, as the judge does when it
    labels turns; pooling tokens would let long responses dominate. Labels with no turns get NaN.
    """
    per_turn = turn_confidence(frame).groupby(frame["label"])
    table = pd.DataFrame({"turns": per_turn.size(), "mean_confidence": per_turn.mean()}).reindex(list(LABELS))
    return table.fillna({"turns": 0}).astype({"turns": int})


def recorded_tokenizer(turns_dir: Path) -> str:
    """The tokenizer folder the rollout recorded: its ids are the ones in `response_ids`."""
    return read_manifest(turns_dir, "turns")["models"]["tokenizer"]


def token_strings(tokenizer, ids: Sequence[int]) -> list[str]:
    """Each response id decoded alone, so a per-token score can sit on the token it scores."""
    return tokenizer.batch_decode([[int(i)] for i in ids], clean_up_tokenization_spaces=False)
