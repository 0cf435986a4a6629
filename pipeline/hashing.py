"""Content hashes: how manifests and training records name what they were made from.

A path says where something was, a hash says what it was: results are keyed by the hash, so a file
replaced at the same path (a retrained checkpoint, re-annotated turns) never passes for the old one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def fingerprint(obj: Any) -> str:
    """sha256 of the canonical JSON of `obj` (sorted keys; paths and other objects as str)."""
    return sha256_bytes(canonical_json(obj).encode("utf-8"))


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def as_json(obj: Any) -> Any:
    """`obj` as it reads back from a JSON file (tuples become lists, paths strings)."""
    return json.loads(canonical_json(obj))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
