"""`sage-opd prepare`: ALFWorld data in place, tiny offline models built; safe to run again."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.prepare import prepare as run_prepare
from stages.common import ConfigOpt, ForceOpt, SetOpt, build_config, user_errors

ArchiveOpt = Annotated[Path | None, typer.Option(help="ALFWorld data archive to unpack under data/alfworld.")]
DownloadOpt = Annotated[bool, typer.Option("--download", help="Fetch the data with alfworld-download.")]


@user_errors
def prepare(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    archive: ArchiveOpt = None,
    download: DownloadOpt = False,
    force: ForceOpt = False,
) -> None:
    """Locate or unpack the ALFWorld data and build the tiny student and teacher models."""
    cfg = build_config(config, None, set_)
    report = run_prepare(cfg, archive, download, force)
    data = f"ALFWorld data at {report.data_root} ({report.data_note})" if report.data_root else report.data_note
    models = ", ".join([f"built {name}" for name in report.built] + [f"kept {name}" for name in report.kept])
    sft = "; ".join(
        f"{name} SFT: {record['steps']} steps, greedy success {record['greedy_success']:.0%} on {record['games']} games"
        for name, record in report.warm_starts.items()
        if record
    )
    typer.echo(f"prepare: {data}; models: {models}" + (f"; {sft}" if sft else ""))
