"""The Parquet contract between stages: one Arrow schema per stage directory, kept in one place.

Rollout, annotate, train and eval run as separate commands (often separate processes or machines) and
share nothing but files on disk. Pinning every column's name, order and type here lets a stage refuse
data it does not understand, and lets anyone open a shard with pandas, datasets or duckdb without our
code. Bump `SCHEMA_VERSION` whenever a schema changes, and say in `OLDER_VERSIONS` what the older shards
lack: readers take those (a finished run stays readable, its missing columns filled in), writers add
parts to them only where the stage's schema did not change, and any other version is refused.

Absent text is "" and an empty list is [], never null. Only the columns built with `_nullable` may hold
null: `error` (the environment raised; the episode ended as failed) and `judge_output` (no judge ran
because a rule decided the label).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = 2

_INT_LIST = pa.list_(pa.int32())
_FLOAT_LIST = pa.list_(pa.float32())
_STRING_LIST = pa.list_(pa.string())


def _required(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=False)


def _nullable(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=True)


# One row per student turn; key (run, round, episode_id, turn).
TURNS_SCHEMA = pa.schema(
    [
        _required("run", pa.string()),
        _required("round", pa.int32()),
        _required("episode_id", pa.string()),
        _required("game", pa.string()),
        _required("task_type", pa.string()),
        _required("split", pa.string()),
        _required("sample", pa.int32()),
        _required("turn", pa.int32()),
        _required("prompt_text", pa.string()),
        _required("prompt_ids", _INT_LIST),
        _required("response_text", pa.string()),
        _required("response_ids", _INT_LIST),
        _required("sampler_logprobs", _FLOAT_LIST),
        _required("action", pa.string()),
        _required("format_ok", pa.bool_()),
        # The response hit max_new_tokens before an end token: it has no action (format_ok is false).
        _required("truncated", pa.bool_()),
        _required("admissible", pa.bool_()),
        _required("observation", pa.string()),
        _required("feedback", pa.string()),
        _required("admissible_commands", _STRING_LIST),
        _required("done", pa.bool_()),
        _required("won", pa.bool_()),
        _required("episode_won", pa.bool_()),
        _required("episode_turns", pa.int32()),
        _required("policy", pa.string()),
        # An exact repeat of an earlier (observation, action) pair in the same episode.
        _required("repeated", pa.bool_()),
        _nullable("error", pa.string()),
    ]
)

# One row per turn, same key as turns; per-token lists have len(response_ids) entries.
ANNOTATIONS_SCHEMA = pa.schema(
    [
        _required("run", pa.string()),
        _required("round", pa.int32()),
        _required("episode_id", pa.string()),
        _required("turn", pa.int32()),
        _required("label", pa.string()),
        _required("label_source", pa.string()),
        _required("rule_flags", _STRING_LIST),
        _nullable("judge_output", pa.string()),
        _required("teacher_logprobs", _FLOAT_LIST),
        _required("topk_ids", pa.list_(_INT_LIST)),
        _required("topk_logprobs", pa.list_(_FLOAT_LIST)),
        _required("confidence", _FLOAT_LIST),
        _required("teacher", pa.string()),
    ]
)

# One row per evaluated episode.
EVAL_SCHEMA = pa.schema(
    [
        _required("run", pa.string()),
        _required("round", pa.int32()),
        _required("policy", pa.string()),
        _required("split", pa.string()),
        _required("episode_id", pa.string()),
        _required("game", pa.string()),
        _required("task_type", pa.string()),
        _required("sample", pa.int32()),
        _required("won", pa.bool_()),
        _required("turns", pa.int32()),
        _required("invalid_actions", pa.int32()),
        _required("repeated_actions", pa.int32()),
        _nullable("error", pa.string()),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "turns": TURNS_SCHEMA,
    "annotations": ANNOTATIONS_SCHEMA,
    "eval": EVAL_SCHEMA,
}


# Per older version, per stage, the columns added since and the value they read as in its shards.
OLDER_VERSIONS: dict[int, dict[str, dict[str, Any]]] = {
    1: {"turns": {"truncated": False}},  # version 1 did not record cut responses: none is marked
}
READABLE_VERSIONS = (SCHEMA_VERSION, *OLDER_VERSIONS)


def schema_for(stage: str, version: int = SCHEMA_VERSION) -> pa.Schema:
    """The schema of a stage's shards at `version`; ValueError for a stage or version we do not know."""
    if stage not in SCHEMAS:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(SCHEMAS)}")
    if version not in READABLE_VERSIONS:
        raise ValueError(f"unknown schema version {version}; this sage-opd reads {READABLE_VERSIONS}")
    if not (added := OLDER_VERSIONS.get(version, {}).get(stage)):
        return SCHEMAS[stage]
    return pa.schema([field for field in SCHEMAS[stage] if field.name not in added])


def upgrade(table: pa.Table, stage: str, version: int) -> pa.Table:
    """A table read from a shard of schema `version`, with the columns added since filled in.

    `table` may hold any subset of that version's columns; the result holds them, plus the added ones,
    in the current schema's order.
    """
    current = SCHEMAS[stage]
    for name, value in OLDER_VERSIONS.get(version, {}).get(stage, {}).items():
        field = current.field(name)
        table = table.append_column(field, pa.array([value] * table.num_rows, type=field.type))
    return table.select([name for name in current.names if name in table.column_names])


def build_table(stage: str, rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """An Arrow table of `stage`'s schema from row dicts that carry exactly its columns.

    A row with a missing or extra column, a value of the wrong type, or a null in a required column is
    a bug in the stage that built it: ValueError naming the column.
    """
    schema = schema_for(stage)
    _check_columns(stage, schema, rows)
    arrays = [_column(stage, field, rows) for field in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _check_columns(stage: str, schema: pa.Schema, rows: Sequence[Mapping[str, Any]]) -> None:
    names = set(schema.names)
    for number, row in enumerate(rows):
        if row.keys() == names:
            continue
        problems = []
        if missing := sorted(names - row.keys()):
            problems.append(f"missing column(s) {', '.join(missing)}")
        if extra := sorted(row.keys() - names):
            problems.append(f"unexpected column(s) {', '.join(extra)}")
        raise ValueError(f"{stage} row {number}: {'; '.join(problems)}")


def _column(stage: str, field: pa.Field, rows: Sequence[Mapping[str, Any]]) -> pa.Array:
    values = [row[field.name] for row in rows]
    try:
        array = pa.array(values, type=field.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise ValueError(f"{stage} column {field.name} ({field.type}): {err}") from err
    if not field.nullable and array.null_count:
        first = next(number for number, value in enumerate(values) if value is None)
        raise ValueError(f"{stage} column {field.name} is null in row {first}; it must not be null")
    return array
