"""The report page: tables as Markdown pipe tables, figures with captions, and the notes a reader must see.

Plain Markdown with relative links, so the folder reads the same on GitHub, in an editor's preview or
pasted into a paper draft's notes; no HTML and no extra package to render it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pipeline.report.loading import RunData
from pipeline.report.plotting import FigureFile
from pipeline.report.tables import Table, column_title, round_span


def table_markdown(table: Table) -> str:
    names = [name or "" for name in table.frame.index.names]
    header = [*names, *(column_title(column, " · ") for column in table.frame.columns)]
    lines = [_row(header), _row(["---"] * len(names) + ["---:"] * len(table.frame.columns))]
    for key, cells in table.frame.iterrows():
        keys = key if isinstance(key, tuple) else (key,)
        lines.append(_row([*map(str, keys), *map(str, cells)]))
    return "\n".join(lines)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def report_page(
    runs: Sequence[RunData],
    runs_dir: Path,
    tables: Sequence[Table],
    figures: Sequence[FigureFile],
    notes: Sequence[str],
    page_dir: Path,
) -> str:
    """The whole page: what was read, every table, every figure, then notes on comparability and gaps."""
    described = ", ".join(f"**{run.name}** ({round_span(run.rounds)})" for run in runs)
    parts = [f"# sage-opd report: {', '.join(run.name for run in runs)}", f"Runs read from `{runs_dir}`: {described}."]
    for table in tables:
        parts += [f"## {table.title}", table_markdown(table), *(f"*{note}*" for note in table.notes)]
    if figures:
        parts.append("## Figures")
    for figure in figures:
        link = figure.path.relative_to(page_dir).as_posix()
        parts += [f"### {figure.title}", f"![{figure.title}]({link})", figure.caption]
    if notes:
        parts += ["## Notes", "\n".join(f"- {note}" for note in notes)]
    return "\n\n".join(parts) + "\n"
