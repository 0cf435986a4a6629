"""Where a long step shows its progress, without the step knowing who shows it.

The command line owns the console (a bar on a terminal, a periodic line on stderr elsewhere), but some long
steps sit deep inside the library, behind functions whose signatures carry no progress sink: the optimizer
steps of `train_student` run under `run_train`, under `run_round`, under warm starts. So the command line
installs a display for the length of a command (`showing`) and such a step opens its bar with
`open_progress`; without a display (a library caller, a test) the step runs silently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol


class Progress(Protocol):
    """Told the total once, then how much more is done (with an optional short note), then closed."""

    def begin(self, total: int) -> None: ...

    def advance(self, count: int = 1, note: str | None = None) -> None: ...

    def close(self) -> None: ...


Display = Callable[[str, str], Progress]  # (label, unit) -> a new progress bar

_display: ContextVar[Display | None] = ContextVar("sage_opd_progress_display", default=None)


@contextmanager
def showing(display: Display) -> Iterator[None]:
    """Progress opened with `open_progress` inside the block goes to `display`."""
    token = _display.set(display)
    try:
        yield
    finally:
        _display.reset(token)


def open_progress(label: str, unit: str) -> Progress | None:
    """A bar from the installed display, or None when nobody shows progress."""
    display = _display.get()
    return None if display is None else display(label, unit)
