"""`sage-opd report`: success per round and task type, runs side by side, seeds aggregated, PNG figures."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text

from stages.common import BaseOpt, ConfigOpt, SetOpt, build_config, user_errors

if TYPE_CHECKING:
    from pipeline.report.tables import Table

RunsOpt = Annotated[
    list[str] | None, typer.Option("--run", help="A run to report on (repeat for several; default: the config's run).")
]
BaselineOpt = Annotated[
    str | None,
    typer.Option(
        help="Report every other run's (and group's) difference to this run or group of seeds "
        "(one of the --run runs, or a group of them: `opd` for opd-s0, opd-s1, …)."
    ),
]
OutOpt = Annotated[
    Path | None, typer.Option(help="Report folder (default: reports/<runs> beside the config's runs_dir).")
]


@user_errors
def report(
    config: ConfigOpt = None,
    base: BaseOpt = None,
    run: RunsOpt = None,
    set_: SetOpt = None,
    baseline: BaselineOpt = None,
    out: OutOpt = None,
) -> None:
    """Write report.md and figures/*.png for one or more runs, and print the success table.

    Runs that differ only in seed are a group: mean ± 95% t-interval over its seeds."""
    cfg = build_config(config, None, set_, base=base)
    from pipeline.report import write_report  # pandas, matplotlib, the stages' readers: only when it runs
    from pipeline.report.groups import several_seeds

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
    seeds = ", ".join(f"{g.name} {len(g.runs)} seed{'s' if len(g.runs) != 1 else ''}" for g in written.groups)
    grouped = f"; groups {seeds}" if several_seeds(written.groups) else ""
    typer.echo(
        f"report: {rounds}{grouped}; {len(written.tables)} tables, {len(written.figures)} figures -> {written.page}"
    )


def rich_table(table: Table) -> RichTable:
    """The same cells as the Markdown page, for the terminal."""
    from pipeline.report.tables import column_title

    shown = RichTable(title=table.title, caption=" ".join(table.notes), caption_justify="left")
    for name in table.frame.index.names:
        shown.add_column(name or "", overflow="fold")
    for column in table.frame.columns:
        shown.add_column(column_title(column, "\n"), justify="right", overflow="fold")
    for key, cells in table.frame.iterrows():
        keys = key if isinstance(key, tuple) else (key,)
        shown.add_row(*(Text(str(cell)) for cell in (*keys, *cells)))
    return shown
