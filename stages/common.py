"""What every command shares: options, config loading, the user-error boundary, progress display.

Commands stay thin: parse options into a `Config`, call one `pipeline` function, print one line.
A `UserError` (or a bad config) becomes one line on stderr and exit code 2, a damaged file or an OS-level
failure one line and exit 1, Ctrl-C one line and exit 130: never a traceback.

Only light modules are imported here and at the top of every command module (config, run layout, typer,
rich): torch, transformers and TRL load when a stage runs, so `--help` and a config error answer at once.
"""

from __future__ import annotations

import functools
import importlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from pipeline.config import Config, load_config
from pipeline.errors import Interrupted, StorageError, UserError
from pipeline.runs import RunLayout

if TYPE_CHECKING:
    from pipeline.episodes import Episode
    from pipeline.play import StageResult

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # Ours show episodes and steps; weight-loading and dataset bars are noise (read by transformers/datasets
    # at import, so no import of theirs is needed to set it).
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}
PROGRESS_EVERY_S = 10.0  # when stderr is not a terminal: one progress line this often

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
NumShardsOpt = Annotated[
    int | None,
    typer.Option(help="Into how many shares the work is split (processes, or Ray tasks; ray default: what fits)."),
]
ExecutorOpt = Annotated[str, typer.Option(help="local (this process) | ray (the shards as tasks on a Ray cluster).")]
RayAddressOpt = Annotated[
    str | None, typer.Option(help="A running Ray cluster, host:port (default: a local one started for the command).")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Redo the stage from scratch, discarding its outputs.")]
PolicyOpt = Annotated[
    str | None,
    typer.Option(
        help="student | teacher | expert | expert:search | expert:sweep | floor:random|first|last|rule | a folder."
    ),
]
SplitOpt = Annotated[list[str] | None, typer.Option("--split", help="ALFWorld split (repeat for several).")]
NumGamesOpt = Annotated[int | None, typer.Option(help="Games per split (0 = all).")]
SamplesOpt = Annotated[int | None, typer.Option(help="Episodes per game.")]


def set_offline_defaults() -> None:
    """No hub traffic from any command (models and data are local by design), and no library's own bars.
    An empty ALFWORLD_DATA reads as unset, as our lookups treat it: importing alfworld would otherwise fail
    trying to create the folder "" (`export ALFWORLD_DATA=$UNSET_VARIABLE` makes one)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    if os.environ.get("ALFWORLD_DATA") == "":
        del os.environ["ALFWORLD_DATA"]


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """One line on stderr instead of a traceback: a `UserError` exits 2; a `StorageError` or an OS-level failure
    (permission denied, not a directory, a full disk) exits 1 naming the path; Ctrl-C exits 130 saying what was kept."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except StorageError as exc:
            code, label, message = 1, "error", str(exc)
        except UserError as exc:
            code, label, message = 2, "error", str(exc)
        except OSError as exc:
            paths = " -> ".join(str(name) for name in (exc.filename, exc.filename2) if name is not None)
            code, label, message = 1, "error", f"{exc.strerror or exc}: {paths or 'no path given'}"
        except Interrupted as exc:
            code, label, message = 130, "stopped", str(exc)
        except KeyboardInterrupt:
            code, label, message = 130, "stopped", "interrupted; what was finished is kept: run the command again"
        err_console.print(Text.assemble((f"{label}:", "bold red"), " ", message), highlight=False, soft_wrap=True)
        raise typer.Exit(code=code) from None

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
    """A stage's progress on stderr (stdout stays for the one-line summary), started once the total is known.

    On a terminal: a live bar. Elsewhere (a log file, CI, a pipe) a bar would be silent until the end or
    spill control characters, so a short line is written every `every` seconds instead, and one at the
    end. Closing is idempotent and happens by itself when the total is reached, so that the next stage's
    bar never shares the screen with a finished one.
    """

    def __init__(self, label: str, unit: str, every: float = PROGRESS_EVERY_S) -> None:
        self.label, self.unit, self.every = label, unit, every
        self.total = self.completed = 0
        self.note = ""
        self._started: float | None = None
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def begin(self, total: int) -> None:
        self.total, self._started = total, time.monotonic()
        if err_console.is_terminal:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(self.unit),
                TextColumn("{task.fields[note]}"),
                TimeElapsedColumn(),
                console=err_console,
            )
            self._task = self._bar.add_task(self.label, total=total, note="")
            self._bar.start()
        else:
            self._ticker = threading.Thread(target=self._tick, name=f"progress {self.label}", daemon=True)
            self._ticker.start()

    def advance(self, count: int = 1, note: str | None = None) -> None:
        self.completed += count
        self.note = self.note if note is None else note
        if self._bar is not None:
            self._bar.update(self._task, advance=count, note=self.note)
        if self.total and self.completed >= self.total:
            self.close()

    def __call__(self, _item: object = None) -> None:
        """One more item done (a `ProgressSink`: told each finished episode or game)."""
        self.advance()

    def close(self) -> None:
        if self._started is None:
            return
        if self._bar is not None:
            self._bar.stop()
        else:
            self._stop.set()
            note(self.line())
        self._started = None

    def line(self) -> str:
        """`rollout round 1: 12/96 episodes, success 25%, 31 s`: what the periodic line says."""
        elapsed = 0.0 if self._started is None else time.monotonic() - self._started
        extra = f", {self.note}" if self.note else ""
        return f"{self.label}: {self.completed}/{self.total} {self.unit}{extra}, {elapsed:.0f} s"

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            note(self.line())


class EpisodeProgress(StageProgress):
    """Episodes played, with the success rate so far."""

    def __init__(self, label: str, every: float = PROGRESS_EVERY_S) -> None:
        super().__init__(label, "episodes", every)
        self.won = 0
        self.done = 0

    def __call__(self, episode: Episode) -> None:
        self.done += 1
        self.won += episode.won
        self.advance(1, f"success {self.won / self.done:.0%}")


def note(line: str) -> None:
    """A line on stderr, whole and unstyled (stdout keeps the one-line summary)."""
    err_console.print(line, highlight=False, markup=False, soft_wrap=True)


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
        line += "; success " + split_success_text(
            {split: block["success"] for split, block in result.summary["splits"].items()},
            {split: block["episodes"] for split, block in result.summary["splits"].items()},
        )
    return line


def split_success_text(success: dict[str, float | None], episodes: dict[str, int] | None = None) -> str:
    """`train 16.7% (24 ep), valid_unseen 0.0% (12 ep)`: one rate per split, never one pooled over splits."""
    if not success:
        return "n/a"
    parts = []
    for split, value in success.items():
        rate = "n/a" if value is None else f"{value:.1%}"
        count = f" ({episodes[split]} ep)" if episodes and split in episodes else ""
        parts.append(f"{split} {rate}{count}")
    return ", ".join(parts)


def play_command(section: str, doc: str) -> Callable[..., None]:
    """A typer command for a stage that plays games (`rollout`, `eval`): same options, own config section.

    The stage runs through `pipeline.executors`, imported when the command runs (see the module docstring).
    """

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
        num_shards: NumShardsOpt = None,
        executor: ExecutorOpt = "local",
        ray_address: RayAddressOpt = None,
        force: ForceOpt = False,
    ) -> None:
        settings = executor_settings(executor, ray_address, shard_index, num_shards)
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
        executors = importlib.import_module("pipeline.executors")
        progress = EpisodeProgress(f"{section} round {round_}")
        try:
            with executors.open_executor(settings, note) as runner:
                result = runner.stage(section, cfg, round_, force, progress)
        finally:
            progress.close()
        typer.echo(play_summary_line(section, result))

    command.__doc__ = doc
    return command


def executor_settings(kind: str, address: str | None, shard_index: int = 0, num_shards: int | None = None) -> Any:
    """The command line's executor options, checked before any config or model is read."""
    from pipeline.executors import ExecutorSettings

    return ExecutorSettings(kind, address, shard_index, num_shards)
