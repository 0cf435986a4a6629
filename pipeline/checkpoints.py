"""Model folders as inputs: whole, unchanged, and identified by their content rather than their path.

A trained checkpoint carries `_train.json`, written into the folder before it is swapped in, with the
sha256 of every other file. Whoever uses a checkpoint (the next round's rollout, eval, train's
"already done") verifies those hashes first, so a byte flipped in the weights or a half-deleted
folder is one line naming the round, never a model silently used. Any model folder (the initial
student, the teacher, a `--policy` folder) is identified in manifests by `model_fingerprint`, a hash
of its files' contents, so results made by one model are never reused for another at the same path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.errors import StorageError, UserError
from pipeline.hashing import fingerprint, sha256_file

RECORD_FILE = "_train.json"
TRAIN_LOG = "train_log.jsonl"  # the trainer's logged steps, one JSON object per line, beside the record
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


def file_hashes(directory: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {sha256, bytes}} of every file of a model folder but its record."""
    return {
        path.relative_to(directory).as_posix(): {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != RECORD_FILE
    }


def read_record(directory: Path) -> dict[str, Any] | None:
    """The checkpoint's `_train.json`, or None when there is none (the folder was never finished)."""
    path = Path(directory) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StorageError(f"cannot read {path} ({err}): rerun `sage-opd train` with --force") from None
    if not isinstance(record, dict):
        raise StorageError(f"{path} is not a sage-opd training record: rerun `sage-opd train` with --force")
    return record


def read_train_log(directory: Path, record: dict[str, Any]) -> list[dict[str, Any]]:
    """The checkpoint's logged steps (every entry of the trainer's log history, in order). Checkpoints
    trained before the log had a file of its own kept it in the record, as `log_history`."""
    path = Path(directory) / TRAIN_LOG
    if not path.is_file():
        return list(record.get("log_history", []))
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StorageError(f"cannot read {path} ({err}): rerun `sage-opd train` with --force") from None


def verified_record(directory: Path, round_: int) -> dict[str, Any]:
    """The record of round `round_`'s checkpoint after checking every file against it; StorageError otherwise."""
    redo = f"rerun `sage-opd train --round {round_} --force`"
    if not directory.is_dir():
        raise StorageError(f"round {round_}'s checkpoint {directory} is not a folder: {redo}")
    record = read_record(directory)
    if record is None or "files" not in record:
        raise StorageError(f"round {round_}'s checkpoint {directory} has no {RECORD_FILE} with file hashes: {redo}")
    if (actual := file_hashes(directory)) != record["files"]:
        changed = sorted(
            name for name in set(actual) | set(record["files"]) if actual.get(name) != record["files"].get(name)
        )
        raise StorageError(
            f"round {round_}'s checkpoint {directory} does not match {RECORD_FILE} ({', '.join(changed[:3])} "
            f"missing or changed): {redo}"
        )
    return record


def model_fingerprint(path: str | Path) -> str:
    """What a stage records about the model it used: a hash of the folder's contents (checked first)."""
    check_model_dir(path)
    return fingerprint(file_hashes(Path(path)))


def check_model_dir(path: str | Path) -> None:
    """A folder a model can be loaded from: config.json, weights, and weights whose header reads.

    Checked before a stage writes anything, so a half-copied folder fails in one line and leaves no
    manifest behind.
    """
    folder = Path(path)
    if not (folder / "config.json").is_file():
        hint = " (run `sage-opd prepare` to build the tiny default models)" if "data/models" in str(path) else ""
        raise UserError(f"model folder {path} does not exist or holds no config.json{hint}")
    weights = [file for pattern in _WEIGHT_PATTERNS for file in sorted(folder.glob(pattern))]
    if not weights:
        raise StorageError(f"model folder {path} holds no weights (*.safetensors or pytorch_model*.bin)")
    from safetensors import SafetensorError, safe_open  # here, so that `--help` never loads it

    for file in weights:
        if file.suffix != ".safetensors":
            continue
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise StorageError(f"weights file {file} is damaged ({err})") from None
