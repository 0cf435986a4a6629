"""The viewer's data: rounds of a run as episodes of turns, small enough to embed in one HTML file.

A round of ~1,500 turns carries ~20 teacher alternatives per response token; stored as they are on disk
(float log-probs, repeated token strings) that is tens of megabytes of JSON. So the page gets what a
reader looks at, in compact form: every token id is decoded once into a shared `vocab`, probabilities
are integers in per mille, and only the `topk` most likely alternatives of each token are kept. The
turns and annotations are joined by `pipeline.inspection.load_round`, with its checks: a viewer must
not show a round whose stages disagree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.backends.hf import load_tokenizer
from pipeline.errors import UserError
from pipeline.inspection import ANNOTATION_COLUMNS, TURN_COLUMNS, load_round, recorded_tokenizer

VIEW_TURN_COLUMNS = [*TURN_COLUMNS, "game", "split", "sample", "episode_won", "error"]
VIEW_ANNOTATION_COLUMNS = [*ANNOTATION_COLUMNS, "teacher_logprobs", "topk_ids", "topk_logprobs"]
PER_MILLE = 1000


def load_view_round(turns_dir: Path, annotations_dir: Path) -> pd.DataFrame:
    """One round's turns joined with everything the viewer shows of their annotations."""
    return load_round(turns_dir, annotations_dir, VIEW_TURN_COLUMNS, VIEW_ANNOTATION_COLUMNS)


def per_mille(logprob: float) -> int:
    return round(math.exp(float(logprob)) * PER_MILLE)


def turn_record(row: Any, topk: int) -> dict[str, Any]:
    """One turn, keyed tersely (the page holds thousands): see `assets/viewer.js` for the names."""
    alternatives = [
        [
            value
            for pair in zip(ids[:topk], logprobs[:topk], strict=True)
            for value in (int(pair[0]), per_mille(pair[1]))
        ]
        for ids, logprobs in zip(row.topk_ids, row.topk_logprobs, strict=True)
    ]
    return {
        "t": int(row.turn),
        "o": row.observation,
        "a": row.action,
        "f": row.feedback,
        "ok": bool(row.format_ok),
        "ad": bool(row.admissible),
        "l": row.label,
        "s": row.label_source,
        "r": [str(flag) for flag in row.rule_flags],
        "j": row.judge_output,
        "x": [int(token) for token in row.response_ids],
        "c": [round(float(value) * PER_MILLE) for value in row.confidence],
        "q": [per_mille(value) for value in row.teacher_logprobs],
        "k": alternatives,
    }


def episode_records(frame: pd.DataFrame, round_: int, topk: int) -> list[dict[str, Any]]:
    """The round's episodes in episode order, each with its turns in turn order."""
    episodes = []
    for episode_id, turns in frame.groupby("episode_id", sort=True):
        first = turns.iloc[0]
        episodes.append(
            {
                "id": episode_id,
                "round": round_,
                "game": first["game"],
                "task": first["task_type"],
                "split": first["split"],
                "sample": int(first["sample"]),
                "won": bool(first["episode_won"]),
                "error": "" if pd.isna(first["error"]) else str(first["error"]),
                "turns": [turn_record(row, topk) for row in turns.sort_values("turn").itertuples(index=False)],
            }
        )
    return episodes


def used_ids(episodes: Sequence[dict[str, Any]]) -> list[int]:
    """Every token id the page shows: sampled tokens and the alternatives kept."""
    ids = set()
    for episode in episodes:
        for turn in episode["turns"]:
            ids.update(turn["x"])
            ids.update(value for alternatives in turn["k"] for value in alternatives[::2])
    return sorted(ids)


def decode_vocab(tokenizer: Any, ids: Sequence[int]) -> dict[str, str]:
    """Each id decoded alone (as `inspect` shows it); ids past the tokenizer (a teacher head with spare rows)
    show as `<id N>`."""
    known = [i for i in ids if i < len(tokenizer)]
    strings = tokenizer.batch_decode([[i] for i in known], clean_up_tokenization_spaces=False)
    vocab = {str(i): text for i, text in zip(known, strings, strict=True)}
    vocab.update({str(i): f"<id {i}>" for i in ids if i >= len(tokenizer)})
    return vocab


def view_payload(
    run: str, rounds: dict[int, pd.DataFrame], tokenizer: Any, topk: int, tokenizer_note: str = ""
) -> dict[str, Any]:
    """What the page embeds: the run, its rounds' episodes, the decoded vocabulary (None without a tokenizer)."""
    if topk < 1:
        raise UserError(f"--topk must be 1 or more, got {topk}")
    episodes = [episode for number, frame in sorted(rounds.items()) for episode in episode_records(frame, number, topk)]
    return {
        "run": run,
        "rounds": sorted(rounds),
        "topk": topk,
        "episodes": episodes,
        "vocab": None if tokenizer is None else decode_vocab(tokenizer, used_ids(episodes)),
        "note": tokenizer_note,
    }


def round_tokenizer(turns_dir: Path) -> tuple[Any, str]:
    """The tokenizer the rollout recorded, or (None, why): the page then shows token ids instead of text."""
    folder = recorded_tokenizer(turns_dir)
    try:
        return load_tokenizer(folder), ""
    except (UserError, OSError, ValueError):
        return None, f"tokenizer folder {folder} (recorded by the rollout) is gone or unreadable: tokens show as ids"
