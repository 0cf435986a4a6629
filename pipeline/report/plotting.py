"""Conventions every report figure shares: one colour per run throughout, a size that fits a paper page,
PNGs written without a display, and the "n = …" text that says what each point rests on.

Figures are built on `matplotlib.figure.Figure` directly, never through `pyplot`: no global state, no
backend to select, nothing left open between figures, so a report can run in any process.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from pipeline.atomic import atomic_path
from pipeline.config import POLICY_NAMES

LABEL_COLORS = {"skip": "#b0b0b0", "weak": "#f2a93b", "strong": "#d7301f"}
# Line styles of the reference policies' levels: the teacher dashed, the experts (ceilings) dotted, the floors
# dash-dotted.
REFERENCE_STYLES = {
    "teacher": "--",
    **{name: ":" for name in POLICY_NAMES if name.startswith("expert")},
    **{name: "-." for name in POLICY_NAMES if name.startswith("floor:")},
}
DPI = 150


@dataclass(frozen=True)
class FigureFile:
    """A written figure and the caption the Markdown page puts under it."""

    path: Path
    title: str
    caption: str


def run_colors(names: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """The same colour for a run in every figure of a report."""
    palette = colormaps["tab10"]
    return {name: palette(index % palette.N) for index, name in enumerate(names)}


def new_figure(rows: int, cols: int, panel: tuple[float, float] = (4.2, 3.2), **grid) -> tuple[Figure, np.ndarray]:
    """A figure of rows × cols panels (always a 2-D array of axes)."""
    figure = Figure(figsize=(panel[0] * cols, panel[1] * rows), layout="constrained")
    return figure, figure.subplots(rows, cols, squeeze=False, **grid)


def suptitle(figure: Figure, text: str) -> None:
    """The figure's title, wrapped to the figure's width: a title wider than the figure is cut at both ends."""
    size = 12  # points, matplotlib's default for a suptitle
    chars = max(24, int(figure.get_figwidth() * 72 / (size * 0.55)))  # ~0.55 em per character
    figure.suptitle(textwrap.fill(text, chars), fontsize=size)


def save(figure: Figure, path: Path) -> Path:
    """Write the PNG atomically, like every other file of a run: a reader never sees half a figure."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=DPI, format="png")
    return path


def count_range(counts: Iterable[float]) -> str:
    """ "24" when every point rests on 24 items, "20–24" when they vary, "0" for none."""
    present = sorted({int(count) for count in counts if not np.isnan(count)})
    if not present:
        return "0"
    return str(present[0]) if len(present) == 1 else f"{present[0]}–{present[-1]}"


def round_axis(axes: Axes, rounds: Sequence[int], label: str = "round (0 = initial student)") -> None:
    """Integer ticks at every round, so a missing round shows as a gap at its own tick."""
    axes.set_xticks(list(rounds))
    if rounds:
        axes.set_xlim(min(rounds) - 0.5, max(rounds) + 0.5)
    axes.set_xlabel(label)
    axes.grid(True, alpha=0.3)


def legend_below(panel: Axes) -> None:
    """The panel's legend under its x axis, where it can never hide a line or a bar."""
    panel.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1, frameon=False)


def figure_legend(figure: Figure, handles: list, names: list[str]) -> None:
    """One legend for the whole figure, under its panels: never over a line, a bar or the title."""
    figure.legend(handles, names, loc="outside lower center", ncol=min(len(names), 4), frameon=False)


def unique_legend(panels: Iterable[Axes], order: Iterable[str] | None = None) -> tuple[list, list[str]]:
    """One legend entry per name across panels (for a figure-level legend), in `order` when given."""
    found: dict[str, object] = {}
    for panel in panels:
        for handle, name in zip(*panel.get_legend_handles_labels(), strict=True):
            found.setdefault(name, handle)
    names = [name for name in order if name in found] if order is not None else list(found)
    return [found[name] for name in names], names


def missing_text(missing: Sequence[int]) -> str:
    """The legend suffix for rounds without a value: shown as absent in words, not only as a gap."""
    if not missing:
        return ""
    return f"; none in round{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))}"
