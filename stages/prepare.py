"""`sage-opd prepare`: ALFWorld data in place, tiny offline models built; safe to run again."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.action_probe import ALL
from pipeline.envs.games import resolve_data_root
from stages.common import BaseOpt, ConfigOpt, ForceOpt, SetOpt, StageProgress, build_config, user_errors

ArchiveOpt = Annotated[Path | None, typer.Option(help="ALFWorld data archive to unpack under data/alfworld.")]
DownloadOpt = Annotated[bool, typer.Option("--download", help="Fetch the data with alfworld-download.")]


@user_errors
def prepare(
    config: ConfigOpt = None,
    base: BaseOpt = None,
    set_: SetOpt = None,
    archive: ArchiveOpt = None,
    download: DownloadOpt = False,
    force: ForceOpt = False,
) -> None:
    """Locate or unpack the ALFWorld data and build the tiny student and teacher models."""
    cfg = build_config(config, None, set_, base=base)
    from pipeline.prepare import prepare as run_prepare  # torch: only once the config is known to be good

    bars: list[StageProgress] = []

    def progress_for(label: str, unit: str) -> StageProgress:
        bars.append(StageProgress(label, unit))
        return bars[-1]

    try:
        report = run_prepare(cfg, archive, download, force, progress_for)
    finally:
        for bar in bars:
            bar.close()
    data = f"ALFWorld data at {report.data_root} ({report.data_note})" if report.data_root else report.data_note
    models = ", ".join([f"built {name}" for name in report.built] + [f"kept {name}" for name in report.kept])
    sft = "; ".join(
        f"{name} SFT: {record['steps']} steps on {record['games']} games, greedy success "
        f"{record['greedy_success']:.0%} on {record.get('greedy_games', record['games'])} of them"
        + _accuracy_note(record.get("action_accuracy", {}))
        for name, record in report.warm_starts.items()
        if record
    )
    if cfg.data.source == "bench":
        made = f"generated {report.bench_games} games in {report.bench_seconds:.0f} s" if report.bench_games else "kept"
        data = f"mini benchmark {made} at {resolve_data_root('bench', cfg.data.path)}; {data}"
    typer.echo(f"prepare: {data}; models: {models}" + (f"; {sft}" if sft else ""))


def _accuracy_note(accuracy: dict[str, dict[str, list[int]]]) -> str:
    """The summary's next-action clause over the probed splits: ", the expert's next action at 43% of …"."""
    parts = []
    for split, by_verb in accuracy.items():
        if ALL not in by_verb:  # a split without states
            continue
        right, total = by_verb[ALL]
        parts.append(f"{right / total:.0%} of {split} states (n={total})")
    return f", the expert's next action at {', '.join(parts)}" if parts else ""
