"""`sage-opd round`: the run's next round, rollout → annotate → train → eval, one line in rounds.jsonl."""

from __future__ import annotations

from typing import Any

import typer

from pipeline.errors import UserError
from stages.common import (
    BaseOpt,
    ConfigOpt,
    EpisodeProgress,
    ExecutorOpt,
    ForceOpt,
    NumShardsOpt,
    RayAddressOpt,
    RunOpt,
    SetOpt,
    StageProgress,
    build_config,
    executor_settings,
    note,
    split_success_text,
    user_errors,
)


def summary_line(entry: dict[str, Any], where: str) -> str:
    """`round 2: student success train 16.7%, valid_unseen 0.0%; …`: success per eval split, never pooled."""

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1%}"

    student = split_success_text(entry["success_by_split"])
    initial = ""
    if "initial_success_by_split" in entry:
        initial = f" (initial student {split_success_text(entry['initial_success_by_split'])})"
    labels = entry["labels"] or {}
    label_text = " / ".join(f"{k} {labels.get(k, 0)}" for k in ("skip", "weak", "strong")) if labels else "no labels"
    stages = ", ".join(f"{stage} {sec:.0f}s" for stage, sec in entry["seconds"].items())
    return (
        f"round {entry['round']}: student success {student}{initial}; "
        f"rollout success {pct(entry['rollout_success'])}; {label_text}; {stages} -> {where}"
    )


@user_errors
def round_(
    config: ConfigOpt = None,
    base: BaseOpt = None,
    run: RunOpt = None,
    set_: SetOpt = None,
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
    num_shards: NumShardsOpt = None,
    force: ForceOpt = False,
) -> None:
    """Run the next round of a run (or finish the one a stop interrupted; with --force, redo it from scratch)."""
    if num_shards is not None and executor != "ray":
        raise UserError("--num-shards on round needs --executor ray: a round's process plays every shard itself")
    settings = executor_settings(executor, ray_address, num_shards=num_shards)
    cfg = build_config(config, run, set_, base=base)
    from pipeline.executors import open_executor  # every stage's torch and TRL: only for a good config
    from pipeline.rounds import rounds_path, run_round

    bars: list[StageProgress] = []

    def progress_for(stage: str, number: int) -> StageProgress:
        bar = (
            StageProgress(f"{stage} round {number}", "turns")
            if stage == "annotate"
            else EpisodeProgress(f"{stage} round {number}")
        )
        bars.append(bar)
        return bar

    try:
        with open_executor(settings, note) as runner:
            entry = run_round(cfg, progress_for, force, runner)
    finally:
        for bar in bars:
            bar.close()
    typer.echo(summary_line(entry, str(rounds_path(cfg))))
