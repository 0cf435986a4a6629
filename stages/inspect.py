"""`sage-opd inspect`: a round's turns beside their labels, each response token shaded by teacher confidence."""

from __future__ import annotations

import math
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.color import Color
from rich.color_triplet import ColorTriplet
from rich.console import Console, Group
from rich.rule import Rule
from rich.style import Style
from rich.table import Table
from rich.text import Text

from pipeline.errors import UserError
from pipeline.runs import RunLayout
from stages.common import (
    BaseOpt,
    ConfigOpt,
    RoundOpt,
    RunOpt,
    SetOpt,
    build_config,
    err_console,
    pick_round,
    user_errors,
)

if TYPE_CHECKING:
    import pandas as pd

AnnotationsOpt = Annotated[
    str | None, typer.Option(help="Annotations folder inside the round (default: the config's annotate.out).")
]
EpisodeOpt = Annotated[str | None, typer.Option(help="Only this episode id.")]
LabelOpt = Annotated[str | None, typer.Option(help="Only turns with this label: skip | weak | strong.")]
TaskTypeOpt = Annotated[str | None, typer.Option(help="Only this task type.")]
LimitOpt = Annotated[int, typer.Option(help="Show at most this many turns.")]
SummaryOpt = Annotated[bool, typer.Option("--summary", help="Label counts and mean confidence instead of turns.")]

# Teacher confidence 0 -> red, 0.5 -> amber, 1 -> green, as token backgrounds under black text.
LOW, MID, HIGH = ColorTriplet(215, 48, 39), ColorTriplet(254, 224, 139), ColorTriplet(26, 152, 80)
LABEL_STYLES = {"skip": "dim", "weak": "yellow", "strong": "bold red"}


@user_errors
def inspect(
    config: ConfigOpt = None,
    base: BaseOpt = None,
    run: RunOpt = None,
    round_: RoundOpt = None,
    set_: SetOpt = None,
    annotations: AnnotationsOpt = None,
    episode: EpisodeOpt = None,
    label: LabelOpt = None,
    task_type: TaskTypeOpt = None,
    limit: LimitOpt = 20,
    summary: SummaryOpt = False,
) -> None:
    """Print a round's turns joined with their annotations (or, with --summary, label and confidence tables)."""
    if limit < 1:
        raise UserError(f"--limit must be 1 or more, got {limit}")
    cfg = build_config(config, run, set_, "annotate", base, out=annotations)
    round_ = pick_round(cfg, round_)
    from pipeline.inspection import apply_filters, load_round, token_strings  # torch: only for a good config

    layout = RunLayout.of(cfg)
    turns_dir = layout.stage_dir(round_, "turns")
    frame = load_round(turns_dir, layout.stage_dir(round_, cfg.annotate.out))
    chosen = apply_filters(frame, episode, label, task_type)
    where = f"round {round_}, {cfg.annotate.out}"
    if frame.empty:
        typer.echo(f"inspect: no turns in {where}")
        return
    if chosen.empty:
        given = {"--episode": episode, "--label": label, "--task-type": task_type}
        filters = " ".join(f"{flag} {value}" for flag, value in given.items() if value is not None)
        typer.echo(f"inspect: no turns match {filters} ({len(frame)} turns in {where})")
        return
    console = Console(highlight=False)
    if len(chosen) < len(frame):
        counted, where = f"{len(chosen)} matching turns", f"{where}; {len(frame)} turns in the round"
    else:
        counted = f"{len(frame)} turns"
    if summary:
        console.print(*summary_tables(chosen))
        typer.echo(f"inspect: {counted} summarized ({where})")
        return
    shown = chosen.head(limit)
    tokenizer = _tokenizer_or_note(turns_dir)
    if tokenizer is not None:
        console.print(confidence_legend())
    for row in shown.itertuples(index=False):
        tokens = token_strings(tokenizer, row.response_ids) if tokenizer is not None else None
        console.print(turn_view(row, tokens))
    typer.echo(f"inspect: {len(shown)} of {counted} shown ({where})")


def _tokenizer_or_note(turns_dir: Path) -> Any:
    """The rollout's tokenizer, or None after one line saying why the responses will not be shaded."""
    from pipeline.backends.hf import load_tokenizer
    from pipeline.inspection import recorded_tokenizer

    folder = recorded_tokenizer(turns_dir)
    try:
        return load_tokenizer(folder)
    except (UserError, OSError, ValueError):
        err_console.print(
            f"note: tokenizer folder {folder} (recorded by the rollout) is gone or unreadable; showing response_text "
            "without confidence shading",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        return None


def confidence_style(confidence: float) -> Style:
    """Black on a background blended red -> amber -> green as teacher confidence goes 0 -> 1."""
    value = min(max(confidence, 0.0), 1.0)
    start, end, fade = (LOW, MID, value * 2) if value < 0.5 else (MID, HIGH, value * 2 - 1)
    blended = ColorTriplet(*(round(a + (b - a) * fade) for a, b in zip(start, end, strict=True)))
    return Style(color="black", bgcolor=Color.from_triplet(blended))


def confidence_legend() -> Text:
    swatches = [(f" {value:.2f} ", confidence_style(value)) for value in (0.0, 0.25, 0.5, 0.75, 1.0)]
    return Text.assemble("teacher confidence (top-1 probability): ", *swatches)


def shaded_response(tokens: list[str], confidence: Any) -> Text:
    """The response token by token, each on the background of its teacher confidence."""
    text = Text()
    for token, value in zip(tokens, confidence, strict=True):
        text.append(token, confidence_style(float(value)))
    return text


def turn_view(row: Any, tokens: list[str] | None) -> Group:
    """One turn: what the student saw, did and got back, the teacher's label, and the shaded response."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("observation", Text(row.observation))
    grid.add_row(
        "action",
        Text.assemble(row.action, "  ", _mark("format", row.format_ok), " ", _mark("admissible", row.admissible)),
    )
    grid.add_row("feedback", Text(row.feedback))
    grid.add_row("label", Text.assemble((row.label, LABEL_STYLES[row.label]), f" ({row.label_source})"))
    grid.add_row("rule flags", Text(", ".join(row.rule_flags) or "-"))
    if row.judge_output:
        grid.add_row("judge", Text(row.judge_output))
    mean = _mean(fmean(row.confidence)) if len(row.confidence) else "-"
    grid.add_row("confidence", Text(f"mean {mean} over {len(row.confidence)} tokens"))
    response = shaded_response(tokens, row.confidence) if tokens is not None else Text(row.response_text)
    grid.add_row("response", response)
    # A line of its own, not a rule's title: a title longer than the console (80 columns when piped) is cut.
    title = Text(f"episode {row.episode_id} · turn {row.turn} · {row.task_type}", style="bold")
    return Group(Rule(style="dim"), title, grid)


def _mark(name: str, ok: bool) -> Text:
    return Text(f"✓ {name}", style="green") if ok else Text(f"✗ {name}", style="bold red")


def summary_tables(frame: pd.DataFrame) -> list[Table]:
    """Label counts per task type and per turn index, and mean teacher confidence per label."""
    from pipeline.inspection import label_summary, mean_confidence_by_label, turn_confidence
    from pipeline.judges import LABELS

    counts = label_summary(frame)
    tables = [
        _counts_table("labels by task type", "task type", counts["task_type"]),
        _counts_table("labels by turn", "turn", counts["turn"]),
    ]
    confidence = mean_confidence_by_label(frame)
    table = Table(title="teacher confidence by label")
    table.add_column("label")
    table.add_column("turns", justify="right")
    table.add_column("mean confidence (token mean per turn, then mean over turns)", justify="right")
    for name, values in confidence.iterrows():
        table.add_row(name, str(int(values["turns"])), _mean(values["mean_confidence"]), end_section=name == LABELS[-1])
    table.add_row("all", str(len(frame)), _mean(turn_confidence(frame).mean()))
    tables.append(table)
    return tables


def _mean(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def _counts_table(title: str, key: str, counts: pd.DataFrame) -> Table:
    from pipeline.judges import LABELS

    table = Table(title=title)
    table.add_column(key)
    for column in [*LABELS, "total"]:
        table.add_column(column, justify="right")
    rows = list(counts.iterrows())
    for index, (value, numbers) in enumerate(rows):
        table.add_row(str(value), *(str(int(n)) for n in numbers), end_section=index == len(rows) - 1)
    table.add_row("all", *(str(int(n)) for n in counts.sum()))
    return table
