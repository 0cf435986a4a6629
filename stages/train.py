"""`sage-opd train`: the round's turns and annotations update the student into `round-NNN/checkpoint/`."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import typer

from stages.common import BaseOpt, ConfigOpt, ForceOpt, RoundOpt, RunOpt, SetOpt, build_config, pick_round, user_errors

if TYPE_CHECKING:
    from pipeline.train import TrainResult


def summary_line(result: TrainResult) -> str:
    if not result.trained:
        return f"train: already done ({result.steps} steps) -> {result.directory}"
    loss = "n/a" if result.mean_loss is None else f"{result.mean_loss:.4f}"
    stats = result.stats
    processes = (result.provenance or {}).get("world_size", 1)
    on = f" on {processes} processes" if processes > 1 else ""
    return (
        f"train: {result.steps} steps{on}, mean loss {loss}, {stats.get('turns', 0)} turns "
        f"({stats.get('skipped_turn_fraction', 0):.0%} skipped) in {result.seconds:.1f}s -> {result.directory}"
    )


@user_errors
def train(
    config: ConfigOpt = None,
    base: BaseOpt = None,
    run: RunOpt = None,
    round_: RoundOpt = None,
    set_: SetOpt = None,
    force: ForceOpt = False,
) -> None:
    """Train the student on the round's turns weighted by the teacher's annotations."""
    cfg = build_config(config, run, set_, base=base)
    round_ = pick_round(cfg, round_)
    from pipeline.train import run_train  # torch and TRL: only once the config is known to be good

    result = run_train(cfg, round_, force)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun or accelerate launch, one line for all ranks
        typer.echo(summary_line(result))
