"""What every command shares: options, config loading, the user-error boundary, progress display.

Commands stay thin: parse options into a `Config`, call one `pipeline` function, print one line.
A `UserError` (or a bad config) becomes one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.config import Config, load_config
from pipeline.episodes import Episode
from pipeline.errors import UserError
from pipeline.play import Sharding, StageResult
from pipeline.runs import RunLayout

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

err_console = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (default: configs/default.yaml).")]
BaseOpt = Annotated[
    Path | None,
    typer.Option(help="Lay the config over this one instead of its own `base:` (an ablation over configs/bench.yaml)."),
]
RunOpt = Annotated[str | None, typer.Option(help="Run name (overrides the config's `run`).")]
RoundOpt = Annotated[int | None, typer.Option("--round", help="Round number (default: the newest round, or 1).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a config key: --set rollout.num_games=4.")]
ShardIndexOpt = Annotated[int, typer.Option(help="Which share of the work this process does (0-based).")]
NumShardsOpt = Annotated[int, typer.Option(help="Into how many shares the work is split across processes.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Redo the stage from scratch, discarding its outputs.")]
PolicyOpt = Annotated[str | None, typer.Option(help="student | teacher | expert | a checkpoint folder.")]
SplitOpt = Annotated[list[str] | None, typer.Option("--split", help="ALFWorld split (repeat for several).")]
NumGamesOpt = Annotated[int | None, typer.Option(help="Games per split (0 = all).")]
SamplesOpt = Annotated[int | None, typer.Option(help="Episodes per game.")]


def set_offline_defaults() -> None:
    """No hub traffic from any command: models and data are local by design."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a `UserError` into one line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper


def build_config(
    config: Path | None,
    run: str | None,
    overrides: list[str] | None,
    section: str | None = None,
    base: Path | None = None,
    **play: Any,
) -> Config:
    """Config file (over `base`, when given) + `--set` overrides + the command's own options (they win, being
    most specific)."""
    items = list(overrides or [])
    if run is not None:
        items.append(f"run={run}")
    for key, value in play.items():
        if value is not None and value != []:
            items.append(f"{section}.{key}={_yaml_value(value)}")
    return load_config(config or (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None), items, base)


def _yaml_value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def pick_round(config: Config, round_: int | None) -> int:
    if round_ is not None and round_ < 1:
        raise UserError(f"--round must be 1 or more, got {round_}")
    return round_ if round_ is not None else RunLayout.of(config).current_round()


class StageProgress:
    """A progress bar on stderr (stdout stays for the one-line summary), started once the total is known."""

    def __init__(self, label: str, unit: str) -> None:
        self.label = label
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(unit),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=err_console,
            transient=not sys.stderr.isatty(),
        )
        self._task = None

    def begin(self, total: int) -> None:
        self._task = self._progress.add_task(self.label, total=total, note="")
        self._progress.start()

    def advance(self, count: int = 1, note: str | None = None) -> None:
        fields = {} if note is None else {"note": note}
        self._progress.update(self._task, advance=count, **fields)

    def __call__(self, _item: object = None) -> None:
        """One more item done (a `ProgressSink`: told each finished episode or game)."""
        self.advance()

    def close(self) -> None:
        if self._task is not None:
            self._progress.stop()


class EpisodeProgress(StageProgress):
    """Episodes played, with the success rate so far."""

    def __init__(self, label: str) -> None:
        super().__init__(label, "episodes")
        self.won = 0
        self.done = 0

    def __call__(self, episode: Episode) -> None:
        self.done += 1
        self.won += episode.won
        self.advance(1, f"success {self.won / self.done:.0%}")


def play_summary_line(command: str, result: StageResult) -> str:
    """The line that ends `rollout` and `eval`."""
    state = "complete" if result.complete else "incomplete: other shards still to run"
    played = f"{result.episodes} episodes played"
    if result.episodes:
        played += f" ({result.won} won, {result.won / result.episodes:.1%}), {result.turns} turns"
    line = (
        f"{command}: {played}; {result.parts_written} shards written, {result.parts_skipped} already done "
        f"-> {result.directory} [{state}]"
    )
    if result.summary:
        overall = result.summary["overall"]
        line += f"; success {overall['success']:.1%} over {overall['episodes']} episodes"
    return line


def play_command(section: str, stage: Callable[..., StageResult], doc: str) -> Callable[..., None]:
    """A typer command for a stage that plays games (`rollout`, `eval`): same options, own config section."""

    @user_errors
    def command(
        config: ConfigOpt = None,
        base: BaseOpt = None,
        run: RunOpt = None,
        round_: RoundOpt = None,
        set_: SetOpt = None,
        policy: PolicyOpt = None,
        split: SplitOpt = None,
        num_games: NumGamesOpt = None,
        samples_per_game: SamplesOpt = None,
        shard_index: ShardIndexOpt = 0,
        num_shards: NumShardsOpt = 1,
        force: ForceOpt = False,
    ) -> None:
        cfg = build_config(
            config,
            run,
            set_,
            section,
            base,
            policy=policy,
            splits=split,
            num_games=num_games,
            samples_per_game=samples_per_game,
        )
        round_ = pick_round(cfg, round_)
        progress = EpisodeProgress(f"{section} round {round_}")
        try:
            result = stage(cfg, round_, Sharding(shard_index, num_shards), force, progress)
        finally:
            progress.close()
        typer.echo(play_summary_line(section, result))

    command.__doc__ = doc
    return command
