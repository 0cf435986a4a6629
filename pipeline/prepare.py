"""`prepare`: put the ALFWorld data in place and build the tiny offline models of the default config.

Data comes from, in order: an archive given with `--archive` (unpacked under data/alfworld),
`alfworld-download` when asked, $ALFWORLD_DATA, or an earlier unpack in data/alfworld. A config on the
mini benchmark (`data.source: bench`) gets it generated once into data/alfworld-bench. The tiny
models share one byte-level BPE tokenizer trained on the prompts they will actually read: a
provisional tokenizer renders expert episodes of the config's games through the normal episode
runner, and the final tokenizer is trained on that text. Everything already in place is kept (idempotent).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.atomic import atomic_dir
from pipeline.backends.hf import load_tokenizer
from pipeline.config import Config
from pipeline.envs.benchmark import ensure_benchmark
from pipeline.envs.games import DEFAULT_FULL_DATA, discover_games, resolve_data_root
from pipeline.envs.prompts import SYSTEM_ACTION_ONLY, SYSTEM_WITH_THINKING, PromptRenderer, format_response
from pipeline.episodes import EpisodeSpec, play_games
from pipeline.errors import UserError
from pipeline.policies import ExpertPolicy
from pipeline.tiny_models import TinyModelSpec, build_tiny_model, save_model, train_tokenizer
from pipeline.warm_start import warm_start_models

TOKENIZER_VOCAB = 2048


@dataclass
class PrepareReport:
    data_root: Path | None = None
    data_note: str = ""
    built: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    warm_starts: dict[str, dict | None] = field(default_factory=dict)
    bench_games: int = 0  # games of the mini benchmark that this call generated (0: already there or not used)
    bench_seconds: float = 0.0


def locate_alfworld_data(archive: Path | None, download: bool, required: bool) -> tuple[Path | None, str]:
    """The full ALFWorld data root, unpacking or downloading it when asked; (None, why) if absent."""
    if archive is not None:
        return unpack_archive(archive, DEFAULT_FULL_DATA), f"unpacked {archive}"
    if download:
        return download_alfworld(DEFAULT_FULL_DATA), "downloaded with alfworld-download"
    env_root = os.environ.get("ALFWORLD_DATA")
    if env_root and (Path(env_root) / "json_2.1.1").is_dir():
        return Path(env_root), "from ALFWORLD_DATA"
    if (DEFAULT_FULL_DATA / "json_2.1.1").is_dir():
        return DEFAULT_FULL_DATA, "already unpacked"
    message = (
        "full ALFWorld data not found: set ALFWORLD_DATA to the folder holding json_2.1.1/, or pass "
        "--archive PATH/alfworld-json_2.1.1.tar.gz, or --download"
    )
    if required:
        raise UserError(message)
    return None, message + " (not needed: this config does not play the full data)"


def unpack_archive(archive: Path, dest: Path) -> Path:
    """Unpack an `alfworld-download`-layout archive into `dest`, atomically; kept if already there."""
    if not archive.is_file():
        raise UserError(f"archive not found: {archive}")
    if (dest / "json_2.1.1").is_dir():
        return dest
    try:
        with atomic_dir(dest) as tmp, tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
            if not (tmp / "json_2.1.1").is_dir():
                raise UserError(f"{archive} does not hold a json_2.1.1/ folder: not an ALFWorld data archive")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UserError(f"cannot unpack {archive}: {exc}") from None
    return dest


def download_alfworld(dest: Path) -> Path:
    if shutil.which("alfworld-download") is None:
        raise UserError("alfworld-download is not installed: install the `alfworld` extra or pass --archive")
    done = subprocess.run(["alfworld-download", "--data-dir", str(dest)], check=False)
    if done.returncode != 0 or not (dest / "json_2.1.1").is_dir():
        raise UserError(f"alfworld-download failed (exit {done.returncode}); pass --archive PATH instead")
    return dest


def expert_corpus(tokenizer, data_root: Path, splits: list[str], num_workers: int, memory: bool) -> list[str]:
    """The prompt and response text of expert episodes on every game of `splits`, rendered by `tokenizer`
    (with the memory line when `memory`, as the models' prompts will have it)."""
    games = [game for split in splits for game in discover_games(data_root, split)]
    episodes = play_games(
        ExpertPolicy(tokenizer, think=False),
        PromptRenderer(tokenizer, think=False),
        [EpisodeSpec(game, 0) for game in games],
        str(data_root),
        num_workers=num_workers,
        max_steps=50,
        history=2,
        think=False,
        memory=memory,
    )
    return [t["prompt_text"] + t["response_text"] for ep in episodes for t in ep.turns]


def build_tokenizer(config: Config):
    """Train the shared tokenizer on rendered expert prompts of the config's games (`prepare.tokenizer_splits`),
    plus the reasoning variant's extra text."""
    provisional = train_tokenizer([SYSTEM_WITH_THINKING, SYSTEM_ACTION_ONLY], vocab_size=300)
    reasoning_text = [SYSTEM_WITH_THINKING, format_response("look", reasoning="")]
    data_root = resolve_data_root(config.data.source, config.data.path)
    corpus = expert_corpus(
        provisional, data_root, config.prepare.tokenizer_splits, config.env.num_workers, config.env.memory
    )
    return train_tokenizer(corpus + reasoning_text, vocab_size=TOKENIZER_VOCAB)


def prepare_tiny_models(config: Config, force: bool) -> tuple[list[str], list[str]]:
    """Build the student and teacher folders that are missing; returns (built, kept)."""
    targets = {
        "student": (Path(config.models.student), TinyModelSpec.of_shape(config.prepare.student_shape), 1),
        "teacher": (Path(config.models.teacher), TinyModelSpec.of_shape(config.prepare.teacher_shape), 2),
    }
    present = {name: (path / "config.json").is_file() and not force for name, (path, _, _) in targets.items()}
    missing = [name for name, ok in present.items() if not ok]
    if not missing:
        return [], list(targets)
    existing = [targets[name][0] for name, ok in present.items() if ok]
    tokenizer = load_tokenizer(existing[0]) if existing else build_tokenizer(config)
    for name in missing:
        path, spec, seed = targets[name]
        save_model(build_tiny_model(tokenizer, spec, seed=config.seed * 1000 + seed), tokenizer, path)
    return missing, [name for name, ok in present.items() if ok]


def prepare(config: Config, archive: Path | None, download: bool, force: bool, progress_for=None) -> PrepareReport:
    """Data first (the tokenizer is trained on the config's games), then the models and their warm starts.

    `progress_for(label, unit)` may return a progress bar for the long steps (benchmark games, DAgger plays).
    """
    report = PrepareReport()
    report.data_root, report.data_note = locate_alfworld_data(
        archive, download, required=config.data.source == "alfworld"
    )
    if config.data.source == "bench" and config.data.path is None:
        report.bench_games, report.bench_seconds = ensure_benchmark(
            jobs=config.env.num_workers, progress=progress_for("mini benchmark", "games") if progress_for else None
        )
    report.built, report.kept = prepare_tiny_models(config, force)
    report.warm_starts = warm_start_models(config, progress_for)
    return report
