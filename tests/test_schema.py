"""The Parquet contract: exact columns, order, types and nullability, and table building from rows.

The row builders here are also used by test_shards.py.
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.schema import (
    ANNOTATIONS_SCHEMA,
    EVAL_SCHEMA,
    SCHEMA_VERSION,
    SCHEMAS,
    TURNS_SCHEMA,
    build_table,
    schema_for,
    upgrade,
)

INTS = pa.list_(pa.int32())
FLOATS = pa.list_(pa.float32())
STRINGS = pa.list_(pa.string())

TURNS_COLUMNS = [
    ("run", pa.string()),
    ("round", pa.int32()),
    ("episode_id", pa.string()),
    ("game", pa.string()),
    ("task_type", pa.string()),
    ("split", pa.string()),
    ("sample", pa.int32()),
    ("turn", pa.int32()),
    ("prompt_text", pa.string()),
    ("prompt_ids", INTS),
    ("response_text", pa.string()),
    ("response_ids", INTS),
    ("sampler_logprobs", FLOATS),
    ("action", pa.string()),
    ("format_ok", pa.bool_()),
    ("truncated", pa.bool_()),
    ("admissible", pa.bool_()),
    ("observation", pa.string()),
    ("feedback", pa.string()),
    ("admissible_commands", STRINGS),
    ("done", pa.bool_()),
    ("won", pa.bool_()),
    ("episode_won", pa.bool_()),
    ("episode_turns", pa.int32()),
    ("policy", pa.string()),
    ("repeated", pa.bool_()),
    ("error", pa.string()),
]

ANNOTATIONS_COLUMNS = [
    ("run", pa.string()),
    ("round", pa.int32()),
    ("episode_id", pa.string()),
    ("turn", pa.int32()),
    ("label", pa.string()),
    ("label_source", pa.string()),
    ("rule_flags", STRINGS),
    ("judge_output", pa.string()),
    ("teacher_logprobs", FLOATS),
    ("topk_ids", pa.list_(INTS)),
    ("topk_logprobs", pa.list_(FLOATS)),
    ("confidence", FLOATS),
    ("teacher", pa.string()),
]

EVAL_COLUMNS = [
    ("run", pa.string()),
    ("round", pa.int32()),
    ("policy", pa.string()),
    ("split", pa.string()),
    ("episode_id", pa.string()),
    ("game", pa.string()),
    ("task_type", pa.string()),
    ("sample", pa.int32()),
    ("won", pa.bool_()),
    ("turns", pa.int32()),
    ("invalid_actions", pa.int32()),
    ("repeated_actions", pa.int32()),
    ("error", pa.string()),
]


def turn_row(episode: int, turn: int) -> dict:
    """A turns row whose floats are exact in float32, so read-back compares with ==."""
    response_ids = list(range(turn))
    return {
        "run": "run-a",
        "round": 2,
        "episode_id": f"ep-{episode:03d}",
        "game": f"valid_seen/game-{episode}",
        "task_type": "pick_heat_then_place_in_recep",
        "split": "valid_seen",
        "sample": episode % 2,
        "turn": turn,
        "prompt_text": f"Your task is to heat some egg. Step {turn}.",
        "prompt_ids": [episode, turn, 151643],
        "response_text": "<think>é</think><action>go to fridge 1</action>",
        "response_ids": response_ids,
        "sampler_logprobs": [-0.25 * (i + 1) for i in response_ids],
        "action": "go to fridge 1" if turn % 3 else "",
        "format_ok": turn % 3 != 0,
        "truncated": turn == 1,
        "admissible": turn % 2 == 0,
        "observation": f"You are in the kitchen (episode {episode}).",
        "feedback": "Nothing happens." if turn % 2 else "You arrive at fridge 1.",
        "admissible_commands": ["go to fridge 1", "look"][: turn % 3],
        "done": turn == 3,
        "won": False,
        "episode_won": episode % 2 == 1,
        "episode_turns": 4,
        "policy": "student",
        "repeated": turn == 2,
        "error": "environment raised: boom" if episode == 3 and turn == 3 else None,
    }


def annotation_row(episode: int, turn: int) -> dict:
    length = turn
    return {
        "run": "run-a",
        "round": 2,
        "episode_id": f"ep-{episode:03d}",
        "turn": turn,
        "label": ["skip", "weak", "strong"][turn % 3],
        "label_source": "rule" if turn % 3 == 2 else "judge",
        "rule_flags": ["nothing_happens"] if turn % 3 == 2 else [],
        "judge_output": None if turn % 3 == 2 else "weak",
        "teacher_logprobs": [-0.5 * (i + 1) for i in range(length)],
        "topk_ids": [[i, i + 1, i + 2] for i in range(length)],
        "topk_logprobs": [[-0.125, -2.0, -4.5] for _ in range(length)],
        "confidence": [0.875 for _ in range(length)],
        "teacher": "tiny-teacher",
    }


def eval_row(episode: int, turn: int) -> dict:
    return {
        "run": "run-a",
        "round": 2,
        "policy": "student",
        "split": "valid_unseen",
        "episode_id": f"ep-{episode:03d}-{turn}",
        "game": f"valid_unseen/game-{episode}",
        "task_type": "pick_two_obj_and_place",
        "sample": turn,
        "won": episode % 2 == 0,
        "turns": 50 - episode,
        "invalid_actions": episode,
        "repeated_actions": turn,
        "error": "reset failed" if episode == 1 else None,
    }


ROW_BUILDERS = {"turns": turn_row, "annotations": annotation_row, "eval": eval_row}


@pytest.mark.parametrize(
    ("schema", "columns", "nullable"),
    [
        (TURNS_SCHEMA, TURNS_COLUMNS, {"error"}),
        (ANNOTATIONS_SCHEMA, ANNOTATIONS_COLUMNS, {"judge_output"}),
        (EVAL_SCHEMA, EVAL_COLUMNS, {"error"}),
    ],
)
def test_schema_columns_types_and_nullability_are_exact(schema, columns, nullable):
    assert [(field.name, field.type) for field in schema] == columns
    assert {field.name for field in schema if field.nullable} == nullable
    assert schema.metadata is None


def test_schemas_registry_and_version():
    assert SCHEMA_VERSION == 2
    assert SCHEMAS == {"turns": TURNS_SCHEMA, "annotations": ANNOTATIONS_SCHEMA, "eval": EVAL_SCHEMA}
    assert schema_for("annotations") is ANNOTATIONS_SCHEMA
    with pytest.raises(ValueError, match="unknown stage 'rollout'; expected one of turns, annotations, eval"):
        schema_for("rollout")


@pytest.mark.parametrize("stage", ["turns", "annotations", "eval"])
def test_build_table_keeps_every_value(stage):
    rows = [ROW_BUILDERS[stage](episode, turn) for episode in range(4) for turn in range(4)]
    table = build_table(stage, rows)
    assert table.schema.equals(SCHEMAS[stage])
    assert table.num_rows == 16
    assert table.to_pylist() == rows


def test_build_table_of_no_rows_is_empty_with_schema():
    table = build_table("turns", [])
    assert table.num_rows == 0
    assert table.schema.equals(TURNS_SCHEMA)


def test_build_table_names_missing_and_extra_columns():
    good = turn_row(0, 1)
    missing = {key: value for key, value in good.items() if key not in ("policy", "repeated")}
    with pytest.raises(ValueError, match=r"^turns row 1: missing column\(s\) policy, repeated$"):
        build_table("turns", [good, missing])
    with pytest.raises(ValueError, match=r"^turns row 0: missing column\(s\) repeated; unexpected column\(s\) repeat$"):
        build_table("turns", [{**missing, "policy": "student", "repeat": True}])
    with pytest.raises(ValueError, match=r"^eval row 0: unexpected column\(s\) reward$"):
        build_table("eval", [{**eval_row(0, 0), "reward": 1.0}])


def test_build_table_rejects_null_in_required_column_and_names_it():
    rows = [turn_row(0, 0), {**turn_row(0, 1), "action": None}]
    with pytest.raises(ValueError, match=r"^turns column action is null in row 1; it must not be null$"):
        build_table("turns", rows)


def test_build_table_allows_null_only_where_nullable():
    table = build_table("annotations", [annotation_row(0, 2)])
    assert table.column("judge_output").to_pylist() == [None]


def test_build_table_names_the_column_of_a_wrongly_typed_value():
    with pytest.raises(ValueError, match=r"^turns column prompt_ids \(list<item: int32>\): "):
        build_table("turns", [{**turn_row(0, 1), "prompt_ids": ["a"]}])
    with pytest.raises(ValueError, match=r"^eval column won \(bool\): "):
        build_table("eval", [{**eval_row(0, 0), "won": "yes"}])


def test_an_older_version_lacks_the_columns_added_since_and_upgrade_fills_them():
    assert schema_for("turns", 1).names == [name for name in TURNS_SCHEMA.names if name != "truncated"]
    assert schema_for("eval", 1) is EVAL_SCHEMA
    stored = build_table("turns", [turn_row(0, turn) for turn in range(3)]).drop_columns(["truncated"])
    upgraded = upgrade(stored, "turns", 1)
    assert upgraded.schema.equals(TURNS_SCHEMA)
    assert upgraded["truncated"].to_pylist() == [False, False, False]
    assert upgrade(stored.select(["turn"]), "turns", 1).column_names == ["turn", "truncated"]
    with pytest.raises(ValueError, match=r"unknown schema version 7; this sage-opd reads \(2, 1\)"):
        schema_for("turns", 7)
