"""Crash-safe stage directories: numbered Parquet parts plus a manifest that says what they are.

Stages run for hours, get killed, and are split across processes (`--shard-index/--num-shards`). So the
caller fixes how many parts a stage has; each part is written whole to a temporary name, renamed into
place and recorded in `_manifest.json` with its row count and sha256. Every read-modify-write of the
manifest holds an exclusive `flock` on a lock file in the directory, so concurrent writers never lose
each other's entries, and the manifest itself is replaced atomically. A rerun skips exactly the parts
that are listed and intact; a reader proves that every part is the one that was written, under the
config and inputs the manifest names, before it trusts any of them.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import re
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import __version__
from pipeline.atomic import atomic_path, write_json
from pipeline.errors import StorageError, UserError
from pipeline.hashing import as_json, fingerprint, sha256_bytes, sha256_file
from pipeline.provenance import provenance as code_provenance
from pipeline.schema import READABLE_VERSIONS, SCHEMA_VERSION, build_table, schema_for, upgrade

MANIFEST_NAME = "_manifest.json"
LOCK_NAME = ".manifest.lock"
_MAX_PARTS = 100_000
PART_FILE = re.compile(r"^part-\d{5}\.parquet$")
# The command that writes each stage, for messages that tell the user what to run.
_COMMANDS = {"turns": "rollout", "annotations": "annotate", "eval": "eval"}
_VERSIONED_PACKAGES = (
    "torch",
    "transformers",
    "trl",
    "datasets",
    "pyarrow",
    "alfworld",
    "textworld",
    "vllm",
)
_MANIFEST_KEYS = (
    "stage",
    "schema_version",
    "status",
    "config_fingerprint",
    "inputs_fingerprint",
    "num_parts",
    "parts",
)
_ABSENT = object()


def part_name(index: int) -> str:
    """File name of part `index`: zero-padded so that name order is index order."""
    if not 0 <= index < _MAX_PARTS:
        raise ValueError(f"part index {index} is outside 0..{_MAX_PARTS - 1}")
    return f"part-{index:05d}.parquet"


class StageWriter:
    """Writes the parts of one stage directory; resumable, and shareable between processes."""

    def __init__(
        self,
        directory: str | os.PathLike,
        stage: str,
        *,
        config: Mapping[str, Any],
        inputs: Mapping[str, Any],
        models: Mapping[str, Any],
        num_parts: int,
        force: bool = False,
        provenance: Mapping[str, Any] | None = None,
    ) -> None:
        schema_for(stage)
        if not 1 <= num_parts <= _MAX_PARTS:
            raise ValueError(f"num_parts must be in 1..{_MAX_PARTS}, got {num_parts}")
        self.directory = Path(directory)
        self.stage = stage
        self.num_parts = num_parts
        self.directory.mkdir(parents=True, exist_ok=True)
        # Parts may be written by other processes, even other commits: each part records its writer's.
        self.provenance = dict(provenance) if provenance is not None else code_provenance()
        self._fresh = _new_manifest(stage, config, inputs, models, num_parts, self.provenance)
        with _locked(self.directory, exclusive=True):
            if force:
                _clear(self.directory)
            existing = read_manifest(self.directory, stage) if (self.directory / MANIFEST_NAME).exists() else None
            if existing is None and (orphans := _part_files(self.directory)):
                raise UserError(
                    f"{self.directory} holds shards ({orphans[0]}, ...) but no {MANIFEST_NAME}: "
                    f"rerun `sage-opd {_command(stage)}` with --force to redo the stage"
                )
            # An unlisted part of ours is what a writer killed between rename and manifest left: it is redone.
            ours = {part_name(index) for index in range(num_parts)}
            _refuse_foreign(self.directory, ours | set(existing["parts"] if existing else ()), stage)
            if existing is not None and existing["parts"]:  # one that lists nothing has no work to lose
                _check_reusable(self.directory, existing, self._fresh)
                return
            write_json(self.directory / MANIFEST_NAME, self._fresh)

    def is_done(self, index: int) -> bool:
        """Whether part `index` is listed in the manifest and its file is intact."""
        return self._is_done(read_manifest(self.directory, self.stage), index)

    def pending(self, indices: Iterable[int]) -> list[int]:
        """The indices among `indices` whose parts still have to be written."""
        manifest = read_manifest(self.directory, self.stage)
        return [index for index in indices if not self._is_done(manifest, index)]

    def write_part(self, index: int, rows: Sequence[Mapping[str, Any]], seconds: float | None = None) -> bool:
        """Write part `index` from `rows` and record it; a reader never sees half a part.

        Returns False, keeping what is there, when another writer recorded the part first: a finished
        part is never replaced, so a complete manifest is never set back to running.
        """
        name = self._name(index)
        table = build_table(self.stage, rows)
        try:
            with ExitStack() as held:
                with atomic_path(self.directory / name) as tmp:
                    _write_parquet(table, tmp)
                    entry = {
                        "rows": table.num_rows,
                        "sha256": sha256_file(tmp),
                        "bytes": tmp.stat().st_size,
                        "seconds": seconds,
                        "provenance": self.provenance,
                    }
                    # Held from before the rename until the manifest lists the part, so a locked reader
                    # never sees a renamed part that the manifest does not yet know.
                    held.enter_context(_locked(self.directory, exclusive=True))
                    manifest = read_manifest(self.directory, self.stage)
                    _check_reusable(self.directory, manifest, self._fresh)
                    if self._is_done(manifest, index):
                        raise _AlreadyWritten
                manifest["parts"][name] = entry
                manifest.update(status="running", finished=None, updated=_now())
                write_json(self.directory / MANIFEST_NAME, manifest)
        except _AlreadyWritten:
            return False
        return True

    def finalize(self) -> bool:
        """Mark the stage complete if every part is done; return whether it is complete."""
        with _locked(self.directory, exclusive=True):
            manifest = read_manifest(self.directory, self.stage)
            complete = all(self._is_done(manifest, index) for index in range(self.num_parts))
            status = "complete" if complete else "running"
            if manifest["status"] != status:
                now = _now()
                manifest.update(status=status, finished=now if complete else None, updated=now)
                write_json(self.directory / MANIFEST_NAME, manifest)
        return complete

    def _name(self, index: int) -> str:
        if not 0 <= index < self.num_parts:
            raise ValueError(f"part index {index} is outside 0..{self.num_parts - 1}")
        return part_name(index)

    def _is_done(self, manifest: Mapping[str, Any], index: int) -> bool:
        name = self._name(index)
        entry = manifest["parts"].get(name)
        return entry is not None and _part_intact(self.directory / name, entry)


class _AlreadyWritten(Exception):
    """Raised inside `atomic_path` to drop our copy of a part that another writer finished first."""


def read_manifest(directory: str | os.PathLike, stage: str) -> dict[str, Any]:
    """The manifest of a stage directory, checked to be one of ours, for `stage`, at a schema version we read."""
    command = _command(stage)
    path = Path(directory) / MANIFEST_NAME
    if not path.exists():
        raise UserError(f"no {stage} outputs in {directory}: run `sage-opd {command}` first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StorageError(f"cannot read {path} ({err}): rerun `sage-opd {command}` with --force") from None
    if not isinstance(manifest, dict) or any(key not in manifest for key in _MANIFEST_KEYS):
        raise UserError(f"{path} is not a sage-opd manifest: rerun `sage-opd {command}` with --force")
    if manifest["stage"] != stage:
        raise UserError(
            f"{directory} holds {manifest['stage']} outputs, not {stage}: use another directory "
            f"or rerun `sage-opd {command}` with --force to replace them"
        )
    if manifest["schema_version"] not in READABLE_VERSIONS:
        raise UserError(
            f"{directory} was written with schema version {manifest['schema_version']}, this sage-opd "
            f"reads versions {', '.join(map(str, READABLE_VERSIONS))}: rerun `sage-opd {command}` with --force "
            "to redo the stage"
        )
    return manifest


def verify_stage(directory: str | os.PathLike, stage: str, *, require_complete: bool = True) -> dict[str, Any]:
    """Check that every listed part is present, intact and of the stage's schema; return the manifest."""
    directory = Path(directory)
    command = _command(stage)
    with _locked(directory, exclusive=False):
        manifest = read_manifest(directory, stage)
        on_disk = _visible_files(directory)
    parts = manifest["parts"]
    if require_complete:
        expected = [part_name(index) for index in range(manifest["num_parts"])]
        written = sum(name in parts for name in expected)
        if manifest["status"] != "complete" or written < len(expected):
            raise UserError(
                f"{stage} in {directory} is incomplete: {written} of {len(expected)} parts written; "
                f"run `sage-opd {command}` again (every --shard-index) to finish it"
            )
    _refuse_foreign(directory, parts, stage, on_disk)
    for name in sorted(parts):
        _verify_part(directory / name, parts[name], stage, manifest["schema_version"])
    return manifest


def read_stage(
    directory: str | os.PathLike,
    stage: str,
    *,
    require_complete: bool = True,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """All parts of a verified stage directory as one table, in part order, in the current schema
    (a shard of an older version gets the columns added since, see `schema.OLDER_VERSIONS`)."""
    schema = schema_for(stage)
    columns = schema.names if columns is None else list(columns)
    if unknown := [name for name in columns if name not in schema.names]:
        raise ValueError(f"{stage} has no column(s) {', '.join(unknown)}")
    manifest = verify_stage(directory, stage, require_complete=require_complete)
    version = manifest["schema_version"]
    stored = [name for name in columns if name in schema_for(stage, version).names]
    tables = [
        upgrade(pq.read_table(Path(directory) / name, columns=stored), stage, version).select(columns)
        for name in sorted(manifest["parts"])
    ]
    return pa.concat_tables(tables) if tables else pa.schema([schema.field(name) for name in columns]).empty_table()


def stage_parts(directory: str | os.PathLike, stage: str, *, require_complete: bool = True) -> list[Path]:
    """The Parquet parts of a verified stage directory, in part order (for readers that take files).

    They hold the columns of the manifest's schema version, which may lack ones added since.
    """
    parts = verify_stage(directory, stage, require_complete=require_complete)["parts"]
    return [Path(directory) / name for name in sorted(parts)]


def stage_fingerprint(directory: str | os.PathLike, stage: str) -> str:
    """Identifies a complete stage's outputs (for a later stage's `inputs`): sha256 over its parts."""
    parts = verify_stage(directory, stage)["parts"]
    listing = "".join(f"{name} {parts[name]['sha256']}\n" for name in sorted(parts))
    return sha256_bytes(listing.encode("utf-8"))


@contextmanager
def _locked(directory: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold the directory's flock. Readers of a directory no writer ever opened need no lock."""
    path = directory / LOCK_NAME
    if not exclusive and not path.exists():
        yield
        return
    fd = os.open(path, (os.O_RDWR | os.O_CREAT) if exclusive else os.O_RDONLY, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def _clear(directory: Path) -> None:
    """Remove a stage's outputs, manifest first, so nothing half-deleted ever looks complete."""
    (directory / MANIFEST_NAME).unlink(missing_ok=True)
    for name in _part_files(directory):
        (directory / name).unlink()
    for leftover in directory.glob(".*.tmp"):
        leftover.unlink(missing_ok=True)


def _refuse_foreign(directory: Path, known: Container[str], stage: str, on_disk: Sequence[str] | None = None) -> None:
    """Readers (pandas, datasets, duckdb) take every visible file of the folder for a shard: none may be a stranger."""
    if foreign := [name for name in (_visible_files(directory) if on_disk is None else on_disk) if name not in known]:
        kind = "shard" if PART_FILE.match(foreign[0]) else "file"
        raise UserError(
            f"foreign {kind} {directory / foreign[0]}: not listed in {MANIFEST_NAME}, yet every reader of the folder "
            f"would read it as a part; remove it or rerun `sage-opd {_command(stage)}` with --force"
        )


def _command(stage: str) -> str:
    schema_for(stage)
    return _COMMANDS[stage]


def _check_reusable(directory: Path, existing: Mapping[str, Any], fresh: Mapping[str, Any]) -> None:
    """UserError unless the existing manifest was made for the same split, config and inputs."""
    reasons = []
    stage, version = existing["stage"], existing["schema_version"]
    if not schema_for(stage, version).equals(schema_for(stage, fresh["schema_version"])):  # its parts would differ
        reasons.append(f"schema version {version} (this sage-opd writes {fresh['schema_version']})")
    if existing["num_parts"] != fresh["num_parts"]:
        reasons.append(f"{existing['num_parts']} parts (this run: {fresh['num_parts']})")
    for field in ("config", "inputs"):
        if existing[f"{field}_fingerprint"] != fresh[f"{field}_fingerprint"]:
            keys = _differing_keys(existing.get(field), fresh[field]) or [field]
            shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
            reasons.append(f"different {field} ({shown})")
    if reasons:
        raise UserError(
            f"{directory} was made with {'; '.join(reasons)}: rerun `sage-opd "
            f"{_command(existing['stage'])}` with --force to redo the stage"
        )


def _differing_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the values that differ between two JSON-like objects."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            path
            for key in sorted(set(old) | set(new))
            for path in _differing_keys(
                old.get(key, _ABSENT), new.get(key, _ABSENT), f"{prefix}.{key}" if prefix else key
            )
        ]
    return [] if old == new or not prefix else [prefix]


def _new_manifest(
    stage: str,
    config: Mapping[str, Any],
    inputs: Mapping[str, Any],
    models: Mapping[str, Any],
    num_parts: int,
    provenance: Mapping[str, Any],
) -> dict[str, Any]:
    now = _now()
    return {
        "stage": stage,
        "schema_version": SCHEMA_VERSION,
        "status": "running",
        "config": as_json(config),
        "config_fingerprint": fingerprint(config),
        "inputs": as_json(inputs),
        "inputs_fingerprint": fingerprint(inputs),
        "models": as_json(models),
        "num_parts": num_parts,
        "parts": {},
        "created": now,
        "updated": now,
        "finished": None,
        "versions": _versions(),
        "provenance": dict(provenance),
    }


def _verify_part(path: Path, entry: Mapping[str, Any], stage: str, version: int) -> None:
    command = _command(stage)
    if not path.exists():
        raise UserError(f"missing shard {path}: listed in {MANIFEST_NAME}; rerun `sage-opd {command}`")
    if not _part_intact(path, entry):
        raise StorageError(f"corrupt shard {path}: its sha256 differs from {MANIFEST_NAME}; rerun `sage-opd {command}`")
    actual, expected = pq.read_schema(path), schema_for(stage, version)
    if not actual.equals(expected):
        raise UserError(
            f"shard {path} does not have the {stage} schema ({_schema_difference(actual, expected)}): "
            f"rerun `sage-opd {command}` with --force"
        )


def _schema_difference(actual: pa.Schema, expected: pa.Schema) -> str:
    if actual.names != expected.names:
        return f"columns {', '.join(actual.names)}; expected {', '.join(expected.names)}"
    return "; ".join(
        f"{have.name} is {have.type}{'' if have.nullable else ' not null'}, expected "
        f"{want.type}{'' if want.nullable else ' not null'}"
        for have, want in zip(actual, expected, strict=True)
        if not have.equals(want)
    )


def _write_parquet(table: pa.Table, path: Path) -> None:
    """zstd Parquet. An empty part gets no row group at all: `datasets` fails on an empty row group."""
    with pq.ParquetWriter(path, table.schema, compression="zstd") as writer:
        if table.num_rows:
            writer.write_table(table)


def _part_intact(path: Path, entry: Mapping[str, Any]) -> bool:
    return path.is_file() and path.stat().st_size == entry["bytes"] and sha256_file(path) == entry["sha256"]


def _part_files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if PART_FILE.match(path.name))


def _visible_files(directory: Path) -> list[str]:
    """What a Parquet reader of the folder would open: every entry not starting with `.` or `_`."""
    return sorted(path.name for path in directory.iterdir() if not path.name.startswith((".", "_")))


def _versions() -> dict[str, str]:
    """Versions of Python and of the packages that shape a stage's outputs (those installed)."""
    versions = {"python": platform.python_version(), "sage-opd": __version__}
    for package in _VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
