"""`sage-opd annotate`: the teacher judges and scores every turn of a round."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from stages.common import (
    BaseOpt,
    ConfigOpt,
    ExecutorOpt,
    ForceOpt,
    NumShardsOpt,
    RayAddressOpt,
    RoundOpt,
    RunOpt,
    SetOpt,
    ShardIndexOpt,
    StageProgress,
    build_config,
    executor_settings,
    note,
    pick_round,
    user_errors,
)

if TYPE_CHECKING:
    from pipeline.annotate import AnnotateResult

JudgeOpt = Annotated[str | None, typer.Option(help="rules | likelihood | prompt (overrides annotate.judge).")]
OutOpt = Annotated[str | None, typer.Option(help="Output folder in the round (overrides annotate.out).")]


def summary_line(result: AnnotateResult) -> str:
    labels = " / ".join(f"{label} {result.labels[label]}" for label in ("skip", "weak", "strong"))
    sources = ", ".join(f"{source} {count}" for source, count in sorted(result.sources.items()))
    state = "complete" if result.complete else "incomplete: other shards still to run"
    body = f"{result.turns} turns annotated ({labels}; by {sources})" if result.turns else "0 turns annotated"
    return (
        f"annotate: {body}; {result.parts_written} shards written, {result.parts_skipped} already done "
        f"-> {result.directory} [{state}]"
    )


@user_errors
def annotate(
    config: ConfigOpt = None,
    base: BaseOpt = None,
    run: RunOpt = None,
    round_: RoundOpt = None,
    set_: SetOpt = None,
    judge: JudgeOpt = None,
    out: OutOpt = None,
    shard_index: ShardIndexOpt = 0,
    num_shards: NumShardsOpt = None,
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
    force: ForceOpt = False,
) -> None:
    """Label every turn skip/weak/strong and store the teacher's per-token scores."""
    settings = executor_settings(executor, ray_address, shard_index, num_shards)
    cfg = build_config(config, run, set_, "annotate", base, judge=judge, out=out)
    round_ = pick_round(cfg, round_)
    from pipeline.executors import open_executor  # torch: only once the config is known to be good

    progress = StageProgress(f"annotate round {round_}", "turns")
    try:
        with open_executor(settings, note) as runner:
            result = runner.stage("annotate", cfg, round_, force, progress)
    finally:
        progress.close()
    typer.echo(summary_line(result))
