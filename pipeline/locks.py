"""One writer per folder: an exclusive `flock` held for as long as a process works on it.

Two processes on the same stage would both do all of its work, and the slower one would rewrite
what the faster one finished. So a stage takes a writer lock on its folder first; a second process
is refused in one line that names the holder (pid, host, since when). Stages split across processes
(`--shard-index/--num-shards`) each lock their share: shares that have no part in common may run at
once, overlapping ones may not (shard i of n and j of m share a part exactly when i ≡ j mod gcd(n, m)).
The kernel drops a `flock` when its process dies, so a lock left by a killed process is simply taken
over; the holder note it left behind is overwritten. Lock files sit beside the folder, not in it,
so they survive the folder being swapped or cleared.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from pipeline.errors import UserError


def try_flock(handle: IO) -> bool:
    """Take an exclusive flock on an open file without waiting; False when another process holds it."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextmanager
def writer_lock(folder: Path, share: tuple[int, int] = (0, 1)) -> Iterator[None]:
    """Hold the writer lock of `folder` for share `share` = (index, count); UserError if it is taken."""
    index, count = share
    folder.parent.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(rf"^\.{re.escape(folder.name)}\.writer-(\d+)-of-(\d+)\.lock$")
    with _open(folder.parent / f".{folder.name}.writers.lock") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # checking the others and taking ours is one step
        for other in folder.parent.iterdir():
            if (match := pattern.match(other.name)) and _overlap((int(match[1]), int(match[2])), share):
                with _open(other) as handle:
                    if not try_flock(handle):
                        _refuse(folder, handle)
        mine = _open(folder.parent / f".{folder.name}.writer-{index}-of-{count}.lock")
        try_flock(mine)  # free: the loop above found no holder of an overlapping share, ours included
        mine.truncate(0)
        mine.write(json.dumps(_holder(share)))
        mine.flush()
    try:
        yield
    finally:
        mine.close()


def _overlap(first: tuple[int, int], second: tuple[int, int]) -> bool:
    return (first[0] - second[0]) % math.gcd(first[1], second[1]) == 0


def _open(path: Path) -> IO:
    return open(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+", encoding="utf-8")


def _holder(share: tuple[int, int]) -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "share": f"{share[0]} of {share[1]}",
    }


def _refuse(folder: Path, handle: IO) -> None:
    try:
        holder = json.loads(handle.read())
        who = f"pid {holder['pid']} on {holder['host']} (since {holder['since']}, shard {holder['share']})"
    except (ValueError, KeyError, TypeError):
        who = "another process"
    raise UserError(f"{folder} is being written by {who}: wait for it to finish or stop it, then run this again")
