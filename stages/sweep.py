"""`sage-opd sweep`: configs × seeds, each its own run `<config stem>-s<seed>`, brought to R rounds, then the report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from stages.common import BaseOpt, SetOpt, note, user_errors

if TYPE_CHECKING:
    from pipeline.report import Report
    from pipeline.sweep import SweepPlan, SweepResult

ConfigsOpt = Annotated[
    list[Path] | None, typer.Option("--config", "-c", help="A config of the grid (repeat for several).")
]
SeedsOpt = Annotated[str, typer.Option(help="Seeds: a comma list and ranges, e.g. 0,1,2 or 0-2.")]
RoundsOpt = Annotated[int, typer.Option(help="Rounds every run is brought to.")]
JobsOpt = Annotated[int, typer.Option(help="Runs driven at once.")]
ThreadsOpt = Annotated[int, typer.Option(help="torch/OpenMP threads per child (0 = cores // jobs).")]
TeacherOpt = Annotated[bool, typer.Option(help="Evaluate the teacher once per run (a reference row per seed).")]
FloorsOpt = Annotated[bool, typer.Option(help="Evaluate the zero-parameter floors once per run (floor:random, …).")]
BaselineOpt = Annotated[str | None, typer.Option(help="Compare the others with this config (stem) or run.")]
OutOpt = Annotated[Path | None, typer.Option(help="Report folder (default: reports/sweep-<configs> beside runs_dir).")]
INTERRUPTED = 130  # the shell's code for a stop by Ctrl-C


@user_errors
def sweep(
    config: ConfigsOpt = None,
    base: BaseOpt = None,
    seeds: SeedsOpt = "0",
    rounds: RoundsOpt = 1,
    jobs: JobsOpt = 1,
    set_: SetOpt = None,
    threads: ThreadsOpt = 0,
    teacher: TeacherOpt = True,
    floors: FloorsOpt = False,
    baseline: BaselineOpt = None,
    out: OutOpt = None,
) -> None:
    """Run every (config, seed) of the grid for --rounds rounds, --jobs at a time, and write the report."""
    from pipeline import sweep as sweeps  # torch, the report's matplotlib: only when the command runs

    plan = sweeps.plan_sweep(config or [], seeds, rounds, jobs, set_ or [], threads, teacher, baseline, base, floors)
    result = sweeps.run_sweep(plan, notify=note)
    if result.interrupted:
        note(kept_line(plan, result))
        raise typer.Exit(code=INTERRUPTED)
    typer.echo(summary_line(plan, result, sweeps.write_sweep_report(plan, out)))
    if result.failed:
        raise typer.Exit(code=1)


def kept_line(plan: SweepPlan, result: SweepResult) -> str:
    kept = ", ".join(f"{o.name} {o.rounds}/{plan.rounds} rounds" for o in result.outcomes)
    return f"sweep stopped: kept {kept} (finished stages of a round under way too); run it again to carry on"


def summary_line(plan: SweepPlan, result: SweepResult, report: Report | None) -> str:
    ran = sum(o.rounds_run for o in result.outcomes)
    there = sum(o.rounds - o.rounds_run for o in result.outcomes)
    failed = "".join(f"; {o.name} {o.error}" for o in result.failed)
    where = f"report -> {report.page}" if report else "no report: no run has a round"
    return (
        f"sweep: {len(plan.runs)} runs × {plan.rounds} rounds, {plan.jobs} at a time, "
        f"{plan.child_threads} threads each: {ran} rounds run, {there} already there, "
        f"{len(result.failed)} runs failed{failed} in {result.seconds:.0f}s; {where}"
    )
