"""`sage-opd round`: the run's next round, rollout → annotate → train → eval, one line in rounds.jsonl."""

from __future__ import annotations

from typing import Any

import typer

from pipeline.rounds import rounds_path, run_round
from stages.common import BaseOpt, ConfigOpt, EpisodeProgress, RunOpt, SetOpt, StageProgress, build_config, user_errors


def summary_line(entry: dict[str, Any], where: str) -> str:
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1%}"

    initial = f" (initial student {pct(entry['initial_success'])})" if "initial_success" in entry else ""
    labels = entry["labels"] or {}
    label_text = " / ".join(f"{k} {labels.get(k, 0)}" for k in ("skip", "weak", "strong")) if labels else "no labels"
    stages = ", ".join(f"{stage} {sec:.0f}s" for stage, sec in entry["seconds"].items())
    return (
        f"round {entry['round']}: student success {pct(entry['student_success'])}{initial}; "
        f"rollout success {pct(entry['rollout_success'])}; {label_text}; {stages} -> {where}"
    )


@user_errors
def round_(config: ConfigOpt = None, base: BaseOpt = None, run: RunOpt = None, set_: SetOpt = None) -> None:
    """Run the next round of a run (or finish the one a stop interrupted)."""
    cfg = build_config(config, run, set_, base=base)
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
        entry = run_round(cfg, progress_for)
    finally:
        for bar in bars:
            bar.close()
    typer.echo(summary_line(entry, str(rounds_path(cfg))))
