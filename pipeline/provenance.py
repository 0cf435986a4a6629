"""What made an output: the code (git commit, and whether the checkout had uncommitted changes) and where
it ran (processes, device, dtype).

`versions` in a manifest names the packages; it cannot tell two commits of sage-opd apart, and a result
is only reproducible from the code that made it. Every stage manifest, training record and rounds.jsonl
line carries one of these records. The commit is read once per process: a checkout edited while a stage
runs is seen as it was when the stage started.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the checkout, when sage-opd runs from one


@functools.cache
def code_version(root: Path = _PACKAGE_ROOT) -> dict[str, Any]:
    """{"commit": sha or None, "dirty": bool or None} of the checkout at `root`. None when `root` is not the
    top of a git checkout (sage-opd installed as a wheel), so that an enclosing repository's commit is never
    taken for ours. Untracked files do not count as dirty: runs write their outputs into the checkout."""
    try:
        top = _git(root, "rev-parse", "--show-toplevel")
        if Path(top).resolve() != root.resolve():
            return {"commit": None, "dirty": None}
        commit = _git(root, "rev-parse", "HEAD")
        changes = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(changes)}


def provenance(
    device: torch.device | None = None, dtype: torch.dtype | None = None, world_size: int | None = None
) -> dict[str, Any]:
    """The code version, the number of processes (default: a launcher's WORLD_SIZE, else 1), and the device
    and dtype the models ran on (None where the writer loads no model). Torch is imported only by callers
    that have a device, so readers of manifests (report, inspect) do not pay for it."""
    return {
        **code_version(),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size,
        "device": None if device is None else describe_device(device),
        "dtype": None if dtype is None else str(dtype).removeprefix("torch."),
    }


def describe_device(device: torch.device) -> str:
    """`cpu`, or `cuda` with the card's name (`cuda (NVIDIA H100 80GB HBM3)`): timings depend on which."""
    if device.type == "cuda":
        import torch

        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.strip()
