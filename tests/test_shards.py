"""Stage directories: read-back by any Parquet reader, resume, crashes, corruption, conflicts, concurrency."""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import platform
import re
from importlib import metadata
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_schema import ROW_BUILDERS, turn_row

import pipeline
from pipeline import shards
from pipeline.errors import UserError
from pipeline.provenance import provenance
from pipeline.schema import SCHEMA_VERSION, SCHEMAS, TURNS_SCHEMA
from pipeline.shards import (
    LOCK_NAME,
    MANIFEST_NAME,
    StageWriter,
    part_name,
    read_manifest,
    read_stage,
    stage_fingerprint,
    verify_stage,
)

CONFIG = {"rollout": {"temperature": 1.0, "max_steps": 50}, "seed": 7}
INPUTS = {"checkpoint": "data/runs/a/round-001/checkpoint", "games": "abc123"}
MODELS = {"student": "tiny-student"}
PACKAGES = ("torch", "transformers", "trl", "datasets", "pyarrow", "alfworld", "textworld", "vllm")


def writer(directory: Path, stage: str = "turns", num_parts: int = 3, **changes) -> StageWriter:
    options = {"config": CONFIG, "inputs": INPUTS, "models": MODELS, "num_parts": num_parts, **changes}
    return StageWriter(directory, stage, **options)


def part_rows(index: int, stage: str = "turns") -> list[dict]:
    """Rows of part `index`: two episodes of four turns each."""
    build = ROW_BUILDERS[stage]
    return [build(2 * index + episode, turn) for episode in range(2) for turn in range(4)]


def installed(package: str) -> bool:
    try:
        metadata.version(package)
    except metadata.PackageNotFoundError:
        return False
    return True


def escaped(path: Path) -> str:
    return re.escape(str(path))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_all(directory: Path, stage: str = "turns", num_parts: int = 3) -> list[dict]:
    stage_writer = writer(directory, stage, num_parts)
    for index in range(num_parts):
        stage_writer.write_part(index, part_rows(index, stage), seconds=0.5 * index)
    assert stage_writer.finalize() is True
    return [row for index in range(num_parts) for row in part_rows(index, stage)]


def plain(value):
    """pandas hands back list cells as numpy arrays and null strings as NaN; undo both."""
    if isinstance(value, np.ndarray):
        return [plain(item) for item in value.tolist()]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def edit_manifest(directory: Path, **changes) -> None:
    path = directory / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_part_name_is_zero_padded_and_bounded():
    assert part_name(7) == "part-00007.parquet"
    assert part_name(99999) == "part-99999.parquet"
    for bad in (-1, 100000):
        with pytest.raises(ValueError, match="outside 0..99999"):
            part_name(bad)


@pytest.mark.parametrize("stage", ["turns", "annotations", "eval"])
def test_written_stage_reads_back_identically_with_every_reader(tmp_path, monkeypatch, stage):
    directory = tmp_path / stage
    rows = write_all(directory, stage)
    (directory / ".part-00001.parquet.stray.tmp").write_bytes(b"half a shard")

    assert read_stage(directory, stage).to_pylist() == rows
    assert pq.read_table(directory).to_pylist() == rows

    frame = pd.read_parquet(directory)
    assert list(frame.columns) == SCHEMAS[stage].names
    assert [{key: plain(value) for key, value in row.items()} for row in frame.to_dict("records")] == rows

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    files = [str(directory / part_name(index)) for index in range(3)]
    dataset = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    assert dataset.column_names == SCHEMAS[stage].names
    assert dataset.to_list() == rows


def test_manifest_records_config_inputs_parts_and_versions(tmp_path):
    directory = tmp_path / "turns"
    write_all(directory)
    manifest = read_manifest(directory, "turns")
    assert set(manifest) == {
        "stage", "schema_version", "status", "config", "config_fingerprint", "inputs",
        "inputs_fingerprint", "models", "num_parts", "parts", "created", "updated", "finished", "versions",
        "provenance",
    }  # fmt: skip
    canonical = json.dumps(CONFIG, sort_keys=True, separators=(",", ":"))
    assert manifest["config_fingerprint"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert (manifest["stage"], manifest["schema_version"], manifest["status"]) == ("turns", SCHEMA_VERSION, "complete")
    assert (manifest["config"], manifest["inputs"], manifest["models"]) == (CONFIG, INPUTS, MODELS)
    assert manifest["num_parts"] == 3
    assert manifest["parts"] == {
        part_name(index): {
            "rows": 8,
            "sha256": sha256(directory / part_name(index)),
            "bytes": (directory / part_name(index)).stat().st_size,
            "seconds": 0.5 * index,
            "provenance": provenance(),  # a writer that was given no device: code and processes only
        }
        for index in range(3)
    }
    assert manifest["provenance"] == provenance()
    assert manifest["created"] <= manifest["updated"] <= manifest["finished"]
    assert manifest["versions"] == {
        "python": platform.python_version(),
        "sage-opd": pipeline.__version__,
        **{package: metadata.version(package) for package in PACKAGES if installed(package)},
    }
    assert manifest["versions"]["pyarrow"] == pa.__version__
    assert verify_stage(directory, "turns") == manifest
    assert pq.ParquetFile(directory / part_name(0)).metadata.row_group(0).column(0).compression == "ZSTD"


def test_empty_part_has_no_row_group_and_reads_as_nothing(tmp_path, monkeypatch):
    directory = tmp_path / "turns"
    stage_writer = writer(directory, num_parts=2)
    stage_writer.write_part(0, [])
    stage_writer.write_part(1, part_rows(1))
    assert stage_writer.finalize() is True
    assert pq.ParquetFile(directory / part_name(0)).metadata.num_row_groups == 0
    assert read_manifest(directory, "turns")["parts"][part_name(0)]["rows"] == 0
    assert read_stage(directory, "turns").to_pylist() == part_rows(1)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    files = [str(directory / part_name(index)) for index in range(2)]
    dataset = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    assert dataset.to_list() == part_rows(1)


def test_read_stage_selects_columns_in_part_order(tmp_path):
    directory = tmp_path / "turns"
    rows = write_all(directory)
    table = read_stage(directory, "turns", columns=["turn", "episode_id"])
    assert table.column_names == ["turn", "episode_id"]
    assert table.to_pylist() == [{"turn": row["turn"], "episode_id": row["episode_id"]} for row in rows]
    with pytest.raises(ValueError, match="turns has no column"):
        read_stage(directory, "turns", columns=["reward"])


def test_resume_skips_done_parts_without_rewriting_them(tmp_path):
    directory = tmp_path / "turns"
    first = writer(directory, num_parts=4)
    first.write_part(0, part_rows(0))
    first.write_part(2, part_rows(2))
    assert first.finalize() is False
    before = {index: (directory / part_name(index)).stat().st_mtime_ns for index in (0, 2)}
    hashes = {index: sha256(directory / part_name(index)) for index in (0, 2)}

    resumed = writer(directory, num_parts=4)
    assert [resumed.is_done(index) for index in range(4)] == [True, False, True, False]
    assert resumed.pending(range(4)) == [1, 3]
    for index in resumed.pending(range(4)):
        resumed.write_part(index, part_rows(index))
    assert resumed.pending(range(4)) == []
    assert resumed.finalize() is True

    for index in (0, 2):
        assert (directory / part_name(index)).stat().st_mtime_ns == before[index]
        assert sha256(directory / part_name(index)) == hashes[index]
    assert read_stage(directory, "turns").num_rows == 32
    with pytest.raises(ValueError, match=r"outside 0..3"):
        resumed.write_part(4, part_rows(4))


def test_finalize_completes_only_when_every_part_is_done(tmp_path):
    directory = tmp_path / "turns"
    stage_writer = writer(directory)
    for index in range(3):
        assert stage_writer.finalize() is False
        assert read_manifest(directory, "turns")["status"] == "running"
        assert read_manifest(directory, "turns")["finished"] is None
        stage_writer.write_part(index, part_rows(index))
    assert stage_writer.finalize() is True
    manifest = read_manifest(directory, "turns")
    assert manifest["status"] == "complete"
    assert manifest["finished"] is not None
    assert writer(directory).finalize() is True
    assert read_manifest(directory, "turns")["finished"] == manifest["finished"]


def test_crash_inside_write_leaves_no_part_and_the_part_pending(tmp_path, monkeypatch):
    directory = tmp_path / "turns"
    stage_writer = writer(directory)
    stage_writer.write_part(0, part_rows(0))
    seen_temporaries = []
    real_writer = pq.ParquetWriter

    def crashing_writer(path, *args, **kwargs):
        parquet_writer = real_writer(path, *args, **kwargs)
        seen_temporaries.append(sorted(name.name for name in directory.glob(".part-00001.parquet.*.tmp")))
        parquet_writer.close()
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(shards.pq, "ParquetWriter", crashing_writer)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        stage_writer.write_part(1, part_rows(1))
    monkeypatch.undo()

    assert len(seen_temporaries) == 1 and len(seen_temporaries[0]) == 1
    assert sorted(path.name for path in directory.iterdir()) == [LOCK_NAME, MANIFEST_NAME, part_name(0)]
    assert list(read_manifest(directory, "turns")["parts"]) == [part_name(0)]
    assert stage_writer.pending(range(3)) == [1, 2]


def test_stray_temporary_of_a_killed_writer_is_invisible(tmp_path):
    directory = tmp_path / "turns"
    stage_writer = writer(directory)
    stage_writer.write_part(0, part_rows(0))
    (directory / ".part-00001.parquet.k1ll3d.tmp").write_bytes(b"PAR1 half a shard")
    assert writer(directory).pending(range(3)) == [1, 2]
    assert verify_stage(directory, "turns", require_complete=False)["parts"].keys() == {part_name(0)}
    assert read_stage(directory, "turns", require_complete=False).to_pylist() == part_rows(0)
    assert pd.read_parquet(directory).shape == (8, len(TURNS_SCHEMA))


@pytest.mark.parametrize("damage", ["truncate", "flip_byte"])
def test_corrupt_part_is_refused_and_rewritten_on_resume(tmp_path, damage):
    directory = tmp_path / "turns"
    rows = write_all(directory)
    path = directory / part_name(1)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :])

    with pytest.raises(UserError, match=f"^corrupt shard {escaped(path)}: "):
        verify_stage(directory, "turns")
    with pytest.raises(UserError, match="corrupt shard"):
        read_stage(directory, "turns")
    with pytest.raises(UserError, match="corrupt shard"):
        stage_fingerprint(directory, "turns")

    resumed = writer(directory)
    assert resumed.pending(range(3)) == [1]
    assert resumed.finalize() is False
    assert read_manifest(directory, "turns")["status"] == "running"
    resumed.write_part(1, part_rows(1))
    assert resumed.finalize() is True
    assert read_stage(directory, "turns").to_pylist() == rows


def test_missing_part_is_refused(tmp_path):
    directory = tmp_path / "turns"
    write_all(directory)
    (directory / part_name(2)).unlink()
    with pytest.raises(UserError, match=f"^missing shard {escaped(directory / part_name(2))}: "):
        verify_stage(directory, "turns")


def test_part_not_in_manifest_is_a_foreign_shard(tmp_path):
    directory = tmp_path / "turns"
    write_all(directory)
    foreign = directory / part_name(5)
    foreign.write_bytes((directory / part_name(0)).read_bytes())
    with pytest.raises(UserError, match=f"^foreign shard {escaped(foreign)}: not listed in {MANIFEST_NAME}"):
        verify_stage(directory, "turns")
    with pytest.raises(UserError, match="foreign shard"):
        read_stage(directory, "turns", require_complete=False)


def test_part_of_another_schema_is_refused(tmp_path):
    directory = tmp_path / "turns"
    write_all(directory)
    path = directory / part_name(0)
    table = pq.read_table(path)
    wider = table.set_column(1, pa.field("round", pa.int64(), nullable=False), table.column(1).cast(pa.int64()))
    pq.write_table(wider, path)
    parts = read_manifest(directory, "turns")["parts"]
    parts[part_name(0)].update(sha256=sha256(path), bytes=path.stat().st_size)
    edit_manifest(directory, parts=parts)
    with pytest.raises(
        UserError,
        match=r"does not have the turns schema \(round is int64 not null, expected int32 not null\)",
    ):
        verify_stage(directory, "turns")


def test_incomplete_stage_is_refused_unless_partial_reads_are_asked_for(tmp_path):
    directory = tmp_path / "turns"
    stage_writer = writer(directory)
    stage_writer.write_part(2, part_rows(2))
    with pytest.raises(UserError, match=f"^turns in {escaped(directory)} is incomplete: 1 of 3 parts written; "):
        read_stage(directory, "turns")
    with pytest.raises(UserError, match="incomplete: 1 of 3"):
        stage_fingerprint(directory, "turns")
    assert read_stage(directory, "turns", require_complete=False).to_pylist() == part_rows(2)


def test_missing_or_unreadable_manifest_is_a_user_error(tmp_path):
    directory = tmp_path / "annotations"
    with pytest.raises(
        UserError,
        match=f"^no annotations outputs in {escaped(directory)}: run `sage-opd annotate` first$",
    ):
        read_stage(directory, "annotations")
    directory.mkdir()
    (directory / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(UserError, match=f"^cannot read {escaped(directory / MANIFEST_NAME)} .*--force$"):
        read_manifest(directory, "annotations")
    (directory / MANIFEST_NAME).write_text("[]")
    with pytest.raises(UserError, match="is not a sage-opd manifest"):
        read_manifest(directory, "annotations")


def test_other_schema_version_is_refused_with_force_hint(tmp_path):
    directory = tmp_path / "turns"
    write_all(directory)
    edit_manifest(directory, schema_version=0)
    message = "written with schema version 0, this sage-opd reads versions 2, 1: .*--force"
    with pytest.raises(UserError, match=message):
        read_stage(directory, "turns")
    with pytest.raises(UserError, match=message):
        writer(directory)


def as_version_1(directory: Path) -> None:
    """Rewrite a turns stage as schema version 1 wrote it: no `truncated` column."""
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    for name, entry in manifest["parts"].items():
        path = directory / name
        pq.write_table(pq.read_table(path).drop_columns(["truncated"]), path, compression="zstd")
        entry.update(sha256=hashlib.sha256(path.read_bytes()).hexdigest(), bytes=path.stat().st_size)
    manifest["schema_version"] = 1
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_a_version_1_stage_reads_with_the_columns_added_since_and_takes_no_new_part(tmp_path):
    directory = tmp_path / "turns"
    write_all(directory)
    current = read_stage(directory, "turns")
    as_version_1(directory)
    old = read_stage(directory, "turns")
    column = TURNS_SCHEMA.get_field_index("truncated")
    not_cut = pa.array([False] * current.num_rows)
    assert old.schema.equals(TURNS_SCHEMA)
    assert old.equals(current.set_column(column, TURNS_SCHEMA.field("truncated"), not_cut))
    assert read_stage(directory, "turns", columns=["truncated", "turn"]).column_names == ["truncated", "turn"]
    assert read_stage(directory, "turns", columns=["truncated"]).num_rows == current.num_rows
    with pytest.raises(UserError, match=r"made with schema version 1 \(this sage-opd writes 2\).*--force"):
        writer(directory)


def test_a_version_1_stage_whose_schema_is_unchanged_is_finished_in_place(tmp_path):
    directory = tmp_path / "annotations"
    stage_writer = writer(directory, "annotations")
    stage_writer.write_part(0, part_rows(0, "annotations"))
    edit_manifest(directory, schema_version=1)
    resumed = writer(directory, "annotations")
    assert resumed.pending(range(3)) == [1, 2]
    for index in (1, 2):
        resumed.write_part(index, part_rows(index, "annotations"))
    assert resumed.finalize() and read_stage(directory, "annotations").num_rows == 24


def test_other_stage_is_refused_with_force_hint(tmp_path):
    directory = tmp_path / "turns"
    write_all(directory)
    with pytest.raises(UserError, match=r"holds turns outputs, not eval: .*`sage-opd eval` with --force"):
        writer(directory, "eval")
    with pytest.raises(UserError, match="holds turns outputs, not annotations"):
        read_stage(directory, "annotations")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        (
            {"config": {**CONFIG, "rollout": {"temperature": 0.4, "max_steps": 50}}},
            r"different config \(rollout\.temperature\)",
        ),
        ({"config": {**CONFIG, "judge": "prompt"}}, r"different config \(judge\)"),
        ({"inputs": {**INPUTS, "games": "def456"}}, r"different inputs \(games\)"),
        ({"num_parts": 4}, r"3 parts \(this run: 4\)"),
        ({"num_parts": 2, "inputs": {}}, r"3 parts \(this run: 2\); different inputs \(checkpoint, games\)"),
    ],
)
def test_changed_config_inputs_or_split_is_refused_with_force_hint(tmp_path, changes, reason):
    directory = tmp_path / "turns"
    write_all(directory)
    expected = f"^{escaped(directory)} was made with {reason}: rerun `sage-opd rollout` with --force to redo"
    with pytest.raises(UserError, match=expected):
        writer(directory, **{"num_parts": 3, **changes})


def test_same_config_with_other_key_order_and_models_is_reused(tmp_path):
    directory = tmp_path / "turns"
    write_all(directory)
    reordered = {"seed": 7, "rollout": {"max_steps": 50, "temperature": 1.0}}
    assert writer(directory, config=reordered, models={"student": "other"}).pending(range(3)) == []


def test_force_clears_parts_manifest_and_temporaries_first(tmp_path):
    directory = tmp_path / "turns"
    write_all(directory)
    (directory / ".part-00001.parquet.k1ll3d.tmp").write_bytes(b"stale")
    new_config = {**CONFIG, "seed": 8}
    forced = writer(directory, config=new_config, force=True)
    assert sorted(path.name for path in directory.iterdir()) == [LOCK_NAME, MANIFEST_NAME]
    manifest = read_manifest(directory, "turns")
    assert (manifest["status"], manifest["parts"], manifest["config"]) == ("running", {}, new_config)
    assert forced.pending(range(3)) == [0, 1, 2]
    forced.write_part(0, part_rows(0))
    assert writer(directory, config=new_config).pending(range(3)) == [1, 2]


def test_shards_without_manifest_need_force(tmp_path):
    directory = tmp_path / "turns"
    write_all(directory)
    (directory / MANIFEST_NAME).unlink()
    with pytest.raises(UserError, match=rf"holds shards \({part_name(0)}, ...\) but no {MANIFEST_NAME}: .*--force"):
        writer(directory)
    assert writer(directory, force=True).pending(range(3)) == [0, 1, 2]


def test_fingerprint_is_over_part_hashes_and_follows_changes(tmp_path):
    directory = tmp_path / "turns"
    write_all(directory)
    listing = "".join(f"{part_name(i)} {sha256(directory / part_name(i))}\n" for i in range(3))
    before = stage_fingerprint(directory, "turns")
    assert before == hashlib.sha256(listing.encode()).hexdigest()

    changed = [{**row, "action": "look"} for row in part_rows(1)]
    (directory / part_name(1)).unlink()  # a finished part is never replaced: only a missing one is rewritten
    writer(directory).write_part(1, changed)
    assert writer(directory).finalize() is True
    after = stage_fingerprint(directory, "turns")
    listing = "".join(f"{part_name(i)} {sha256(directory / part_name(i))}\n" for i in range(3))
    assert after == hashlib.sha256(listing.encode()).hexdigest()
    assert after != before


def test_a_part_finished_by_another_writer_is_kept_and_the_stage_stays_complete(tmp_path):
    """The slower of two writers of one part drops its copy: a complete manifest is never set back to running."""
    directory = tmp_path / "turns"
    slower = writer(directory)
    write_all(directory)
    before = (directory / part_name(1)).read_bytes()
    assert slower.write_part(1, [{**row, "action": "look"} for row in part_rows(1)]) is False
    assert (directory / part_name(1)).read_bytes() == before
    assert read_manifest(directory, "turns")["status"] == "complete"
    assert [p.name for p in directory.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("name", ["notes.txt", "extra.parquet", "part-00009.parquet", "sub"])
def test_any_visible_file_that_is_not_a_listed_part_is_foreign(tmp_path, name):
    directory = tmp_path / "turns"
    write_all(directory)
    stray = directory / name
    stray.mkdir() if name == "sub" else stray.write_bytes((directory / part_name(0)).read_bytes())
    (directory / ".hidden").write_text("readers skip dot files")
    with pytest.raises(UserError, match=f"^foreign (shard|file) {escaped(stray)}: not listed in {MANIFEST_NAME}"):
        read_stage(directory, "turns")
    with pytest.raises(UserError, match="foreign"):
        writer(directory)  # refused before any work, not after it
    stray.rmdir() if name == "sub" else stray.unlink()
    assert pd.read_parquet(directory).shape == (24, len(TURNS_SCHEMA))


def test_a_part_renamed_in_by_a_writer_killed_before_its_manifest_entry_is_redone(tmp_path):
    """Readers refuse it (unlisted), the next writer of the stage rewrites it: it is one of its own parts."""
    directory = tmp_path / "turns"
    writer(directory).write_part(0, part_rows(0))
    (directory / part_name(1)).write_bytes((directory / part_name(0)).read_bytes())
    with pytest.raises(UserError, match="foreign shard"):
        verify_stage(directory, "turns", require_complete=False)
    resumed = writer(directory)
    assert resumed.pending(range(3)) == [1, 2]
    assert resumed.write_part(1, part_rows(1)) is True
    assert read_stage(directory, "turns", require_complete=False).num_rows == 16


def test_a_manifest_that_lists_no_part_is_replaced_by_the_next_writer(tmp_path):
    """A stage that failed before its first part (a bad model folder) must not block the corrected rerun."""
    directory = tmp_path / "turns"
    writer(directory)
    corrected = writer(directory, config={**CONFIG, "seed": 8})
    assert read_manifest(directory, "turns")["config"] == {**CONFIG, "seed": 8}
    corrected.write_part(0, part_rows(0))
    with pytest.raises(UserError, match="different config"):
        writer(directory)


def _write_every_other_part(directory: str, offset: int, num_parts: int, barrier) -> None:
    barrier.wait()
    stage_writer = writer(Path(directory), num_parts=num_parts)
    for index in range(offset, num_parts, 2):
        stage_writer.write_part(index, [turn_row(index, 0)], seconds=float(index))
    stage_writer.finalize()


def test_concurrent_writers_of_disjoint_parts_lose_no_manifest_entry(tmp_path):
    directory = tmp_path / "turns"
    num_parts = 24
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [
        context.Process(target=_write_every_other_part, args=(str(directory), offset, num_parts, barrier))
        for offset in (0, 1)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0]

    manifest = verify_stage(directory, "turns")
    assert manifest["status"] == "complete"
    assert sorted(manifest["parts"]) == [part_name(index) for index in range(num_parts)]
    assert [manifest["parts"][part_name(index)]["seconds"] for index in range(num_parts)] == [
        float(index) for index in range(num_parts)
    ]
    assert read_stage(directory, "turns").to_pylist() == [turn_row(index, 0) for index in range(num_parts)]
    assert sorted(path.name for path in directory.iterdir() if not path.name.startswith("part-")) == [
        LOCK_NAME,
        MANIFEST_NAME,
    ]
