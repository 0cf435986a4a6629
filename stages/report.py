"""`sage-opd report`: success per round and task type, runs side by side, PNG figures, in a report folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text

from pipeline.report import write_report
from pipeline.report.tables import Table, column_title
from stages.common import ConfigOpt, SetOpt, build_config, user_errors

RunsOpt = Annotated[
    list[str] | None, typer.Option("--run", help="A run to report on (repeat for several; default: the config's run).")
]
BaselineOpt = Annotated[
    str | None, typer.Option(help="Report every other run's improvement over this run (one of the --run runs).")
]
OutOpt = Annotated[
    Path | None, typer.Option(help="Report folder (default: reports/<runs> beside the config's runs_dir).")
]


@user_errors
def report(
    config: ConfigOpt = None,
    run: RunsOpt = None,
    set_: SetOpt = None,
    baseline: BaselineOpt = None,
    out: OutOpt = None,
) -> None:
    """Write report.md and figures/*.png for one or more runs, and print the success table."""
    cfg = build_config(config, None, set_)
    names = run or [cfg.run]
    runs_dir = Path(cfg.runs_dir)
    folder = out or runs_dir.parent / "reports" / "-".join(names)
    written = write_report(runs_dir, names, folder, baseline, cfg.train.annotations)
    console = Console(highlight=False)
    for table in written.headline:
        console.print(rich_table(table))
    for note in written.notes:
        console.print(f"note: {note}", markup=False, soft_wrap=True)
    rounds = ", ".join(f"{r.name} {len(r.rounds)} round{'s' if len(r.rounds) != 1 else ''}" for r in written.runs)
    typer.echo(f"report: {rounds}; {len(written.tables)} tables, {len(written.figures)} figures -> {written.page}")


def rich_table(table: Table) -> RichTable:
    """The same cells as the Markdown page, for the terminal."""
    shown = RichTable(title=table.title, caption=" ".join(table.notes), caption_justify="left")
    for name in table.frame.index.names:
        shown.add_column(name or "", overflow="fold")
    for column in table.frame.columns:
        shown.add_column(column_title(column, "\n"), justify="right", overflow="fold")
    for key, cells in table.frame.iterrows():
        keys = key if isinstance(key, tuple) else (key,)
        shown.add_row(*(Text(str(cell)) for cell in (*keys, *cells)))
    return shown
