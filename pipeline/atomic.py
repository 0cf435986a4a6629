"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Everything we write (shards, manifests, summaries, model folders) goes through a temporary name in
the same directory followed by `os.replace`, which is atomic on POSIX filesystems. A folder that
already exists cannot be replaced by a rename, so folders are swapped with Linux's
`renameat2(RENAME_EXCHANGE)`: the new folder takes the old one's name in one step, and only then is
the old one (now under the temporary name) removed. A kill at any moment leaves one whole folder.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _default_mode(base: int) -> int:
    """`base` under the process umask: what `open()` would have given (mkstemp would give 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return base & ~umask


_FILE_MODE = _default_mode(0o666)
_DIR_MODE = _default_mode(0o777)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed onto `path`.

    On an exception the temporary file is removed and `path` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, target)
    except OSError as err:
        if err.filename is not None:
            raise
        # A write that failed (a full disk) names no file: name the one we were writing.
        raise OSError(err.errno, err.strerror or str(err), str(target)) from err
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` (a directory) when the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, _DIR_MODE)
        swap_dir(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def swap_dir(new: Path, target: Path) -> None:
    """Put the directory `new` at `target`; an old `target` ends up at `new`'s name, for the caller to remove.

    A reader (or a kill) never finds `target` missing once it existed: the two names are exchanged
    atomically. Only where the OS cannot exchange (not Linux, or a filesystem without support) is
    the old folder moved aside first, which leaves a moment without `target`.
    """
    if not target.exists():
        os.replace(new, target)
        return
    if _exchange(new, target):
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", suffix=".tmp", dir=target.parent))
    os.replace(target, aside / target.name)
    os.replace(new, target)
    os.replace(aside / target.name, new)
    aside.rmdir()


def _exchange(first: Path, second: Path) -> bool:
    """Atomically exchange two paths with renameat2; False where the system does not offer it."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(second))
