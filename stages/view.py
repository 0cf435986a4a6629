"""`sage-opd view`: a round's trajectories in the browser, as one self-contained HTML file (or on localhost)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.errors import UserError
from pipeline.runs import RunLayout
from stages.common import BaseOpt, ConfigOpt, RunOpt, SetOpt, build_config, note, pick_round, user_errors

RoundsOpt = Annotated[
    list[int] | None,
    typer.Option("--round", help="A round to show (repeat to put several side by side; default: the newest)."),
]
AnnotationsOpt = Annotated[
    str | None, typer.Option(help="Annotations folder inside each round (default: the config's annotate.out).")
]
OutOpt = Annotated[
    Path | None, typer.Option(help="HTML file to write (default: view.html in the round, or in the run for several).")
]
TopkOpt = Annotated[int, typer.Option(help="Teacher alternatives shown per token (at most what annotate stored).")]
ServeOpt = Annotated[bool, typer.Option("--serve", help="Also serve the page on localhost until Ctrl-C.")]
PortOpt = Annotated[int, typer.Option(help="Port for --serve (0 = any free port).")]
PAGE_FILE = "view.html"


@user_errors
def view(
    config: ConfigOpt = None,
    base: BaseOpt = None,
    run: RunOpt = None,
    round_: RoundsOpt = None,
    set_: SetOpt = None,
    annotations: AnnotationsOpt = None,
    out: OutOpt = None,
    topk: TopkOpt = 5,
    serve: ServeOpt = False,
    port: PortOpt = 8765,
) -> None:
    """Write a trajectory viewer: turns, labels, tokens shaded by teacher confidence, teacher top-k on hover."""
    cfg = build_config(config, run, set_, "annotate", base, out=annotations)
    numbers = sorted({pick_round(cfg, number) for number in round_ or [None]})
    from pipeline.view.data import load_view_round, round_tokenizer, view_payload  # torch: for a good config
    from pipeline.view.page import serve_page, write_page

    layout = RunLayout.of(cfg)
    rounds = {n: load_view_round(layout.stage_dir(n, "turns"), layout.stage_dir(n, cfg.annotate.out)) for n in numbers}
    if all(frame.empty for frame in rounds.values()):
        raise UserError(f"no turns to show in round(s) {', '.join(map(str, numbers))} of run {cfg.run}")
    tokenizer, why = round_tokenizer(layout.stage_dir(numbers[-1], "turns"))
    if why:
        note(f"note: {why}")
    payload = view_payload(cfg.run, rounds, tokenizer, topk, why)
    default = layout.stage_dir(numbers[0], PAGE_FILE) if len(numbers) == 1 else layout.root / _name(numbers)
    path = out or default
    size = write_page(payload, path)
    turns = sum(len(frame) for frame in rounds.values())
    shown = ", ".join(map(str, numbers))
    typer.echo(
        f"view: run {cfg.run} round{'s' if len(numbers) > 1 else ''} {shown}: {len(payload['episodes'])} episodes, "
        f"{turns} turns -> {path} ({size / 1e6:.1f} MB)"
    )
    if serve:
        try:
            serve_page(path, port, lambda url: note(f"serving {path.name} at {url} (Ctrl-C to stop)"))
        except KeyboardInterrupt:
            note("stopped serving; the page stays on disk")


def _name(numbers: list[int]) -> str:
    return f"view-rounds-{'-'.join(map(str, numbers))}.html"
