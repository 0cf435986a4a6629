"""Episode rows and the success summary: overall and per task type, per split.

Rates are over what they count: success over episodes, invalid and repeated actions over turns.
An episode whose game failed to load counts as played and lost, with its error kept.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from pipeline.envs.games import TASK_TYPES
from pipeline.episodes import Episode, is_invalid


def episode_fields(ep: Episode) -> dict[str, Any]:
    """Columns every row of an episode shares (turns and eval rows alike)."""
    game = ep.spec.game
    return {
        "episode_id": ep.spec.episode_id,
        "game": game.game_id,
        "task_type": game.task_type,
        "split": game.split,
        "sample": ep.spec.sample,
    }


def eval_row(ep: Episode, base: dict[str, Any]) -> dict[str, Any]:
    return {
        **base,
        **episode_fields(ep),
        "won": ep.won,
        "turns": len(ep.turns),
        "invalid_actions": sum(is_invalid(t) for t in ep.turns),
        "repeated_actions": sum(t["repeated"] for t in ep.turns),
        "error": ep.error,
    }


def turn_rows(ep: Episode, base: dict[str, Any]) -> list[dict[str, Any]]:
    shared = {**base, **episode_fields(ep), "episode_won": ep.won, "episode_turns": len(ep.turns)}
    return [{**shared, **turn} for turn in ep.turns]


def _block(rows: list[dict[str, Any]]) -> dict[str, Any]:
    episodes = len(rows)
    turns = sum(r["turns"] for r in rows)
    return {
        "episodes": episodes,
        "success": sum(r["won"] for r in rows) / episodes if episodes else None,
        "mean_turns": turns / episodes if episodes else None,
        "invalid_action_rate": sum(r["invalid_actions"] for r in rows) / turns if turns else None,
        "repeated_action_rate": sum(r["repeated_actions"] for r in rows) / turns if turns else None,
        "errors": sum(r["error"] is not None for r in rows),
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """{"overall": block, "splits": {split: block + "task_types": {type: block}}}.

    A task type without episodes is absent rather than shown as 0% success.
    """
    by_split: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_split[row["split"]].append(row)
    splits = {}
    for split, split_rows in sorted(by_split.items()):
        per_type = {t: _block([r for r in split_rows if r["task_type"] == t]) for t in TASK_TYPES}
        splits[split] = {**_block(split_rows), "task_types": {t: b for t, b in per_type.items() if b["episodes"]}}
    return {"overall": _block(rows), "splits": splits}
