"""Never silently wrong: checkpoint swaps under a kill, locks between real processes, one-line OS errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.atomic import atomic_dir

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO, capture_output=True, text=True, **kwargs
    )


@pytest.mark.parametrize("moment", ["while the old folder is removed", "right after it is removed"])
def test_a_kill_inside_the_folder_swap_leaves_a_whole_folder(tmp_path, moment):
    """SIGKILL at the removal of the old checkpoint: the new one is already in place, whole."""
    target = tmp_path / "checkpoint"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("old")
    partial = moment.startswith("while")
    killed = run_python(
        """
        import os, shutil, signal, sys
        from pathlib import Path
        from pipeline.atomic import atomic_dir

        real_rmtree = shutil.rmtree
        def rmtree_then_die(path, *args, **kwargs):
            if sys.argv[2] == "1":
                os.remove(os.path.join(path, "weights"))  # killed half way through the removal
            else:
                real_rmtree(path, *args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        shutil.rmtree = rmtree_then_die
        with atomic_dir(Path(sys.argv[1])) as tmp:
            (tmp / "weights").write_text("new")
        """,
        str(target),
        "1" if partial else "0",
    )
    assert killed.returncode == -9, killed.stderr
    assert (target / "weights").read_text() == "new"
