"""The `sage-opd` command line: one typer app, one thin module per command."""

from __future__ import annotations

import typer

from pipeline.progress import showing
from stages.annotate import annotate
from stages.common import StageProgress, set_offline_defaults
from stages.evaluate import evaluate
from stages.inspect import inspect
from stages.prepare import prepare
from stages.report import report
from stages.rollout import rollout
from stages.round import round_
from stages.sweep import sweep
from stages.train import train
from stages.view import view

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Multi-turn on-policy distillation of LLM agents on ALFWorld (SAGE-OPD).",
)
app.command("prepare")(prepare)
app.command("rollout")(rollout)
app.command("eval")(evaluate)
app.command("annotate")(annotate)
app.command("train")(train)
app.command("round")(round_)
app.command("sweep")(sweep)
app.command("inspect")(inspect)
app.command("report")(report)
app.command("view")(view)


def main() -> None:
    set_offline_defaults()
    with showing(StageProgress):  # steps deep in the library (the trainer's) show their bars here too
        app()
