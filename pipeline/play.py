"""The rollout and eval stages: plan episodes, play the parts this process owns, write shards.

Episodes are a fixed list (the round's games × samples, recorded in the manifest) cut into parts
of `episodes_per_shard`; a part is played and written whole, so a rerun after a kill replays exactly
the missing parts and nothing twice. Parts are dealt to processes by `index % num_shards ==
shard_index`. The settings that shape the data go into the manifest's config and the content hashes of
what was played (the model, its tokenizer, the game files) into its inputs, so a rerun with different
ones is refused, not mixed in: an eval after a retrain never reports the old checkpoint's results. One
process plays a share of a stage at a time (a writer lock); Ctrl-C keeps every finished part and says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from pipeline.atomic import write_json
from pipeline.backends.factory import backend_provenance, load_generator, stage_backend
from pipeline.backends.hf import load_tokenizer
from pipeline.checkpoints import model_fingerprint
from pipeline.config import ENGINE_SETTINGS, Config, PlayConfig
from pipeline.envs.games import Game, discover_games, resolve_data_root, sample_games
from pipeline.envs.prompts import PromptRenderer
from pipeline.envs.workers import EnvPool
from pipeline.episodes import Episode, EpisodeRunner, EpisodeSpec, PlayTimings
from pipeline.errors import Interrupted, UserError
from pipeline.evaluation import eval_row, summarize, turn_rows
from pipeline.floors import FloorPolicy
from pipeline.hashing import fingerprint, sha256_file
from pipeline.locks import writer_lock
from pipeline.policies import ExpertPolicy, LMPolicy, Policy, SearchingExpertPolicy
from pipeline.provenance import provenance
from pipeline.runs import ResolvedPolicy, RunLayout, eval_dir_name, resolve_policy
from pipeline.seeding import derive_seed
from pipeline.sharding import ALL_PARTS, Sharding
from pipeline.shards import StageWriter, read_stage

SUMMARY_FILE = "summary.json"
EPISODES_DIR = "episodes"  # eval shards sit one level down, so the folder reads as Parquet alone


@dataclass
class StageResult:
    """What a rollout or eval call did, for the one-line summary and the benchmarks."""

    directory: Path
    episodes: int = 0
    won: int = 0
    turns: int = 0
    parts_written: int = 0
    parts_skipped: int = 0
    complete: bool = False
    summary: dict[str, Any] | None = None
    timings: PlayTimings = field(default_factory=PlayTimings)


class ProgressSink(Protocol):
    """Told the number of episodes to play, then called once per finished episode."""

    def begin(self, total: int) -> None: ...

    def __call__(self, episode: Episode) -> None: ...


def plan_episodes(config: Config, play: PlayConfig, round_: int) -> tuple[Path, list[EpisodeSpec]]:
    """The data root and the round's episodes: each split's games (see `play.games`) x samples."""
    root = resolve_data_root(config.data.source, config.data.path)
    specs = [
        EpisodeSpec(game, sample)
        for split in play.splits
        for game in _split_games(discover_games(root, split), play, _draw_key(play, config.seed, round_, split))
        for sample in range(play.samples_per_game)
    ]
    return root, specs


def _draw_key(play: PlayConfig, seed: int, round_: int, split: str) -> str:
    """`per_round`: a new draw for every (seed, round); `fixed`: one per split, the same for every run."""
    return f"per_round/{seed}/{round_}/{split}" if play.games == "per_round" else f"fixed/{split}"


def _split_games(games: list[Game], play: PlayConfig, key: str) -> list[Game]:
    if play.num_games > len(games):
        raise UserError(
            f"{play.section}.num_games={play.num_games} but split {games[0].split} holds {len(games)} games"
        )
    return sample_games(games, play.num_games, key)


def game_ids(specs: list[EpisodeSpec]) -> list[str]:
    """The games the episodes play, once each, in play order."""
    return list(dict.fromkeys(spec.game.game_id for spec in specs))


def chunk(specs: list[EpisodeSpec], size: int) -> list[list[EpisodeSpec]]:
    return [specs[i : i + size] for i in range(0, len(specs), size)]


def run_rollout(
    config: Config,
    round_: int,
    sharding: Sharding = ALL_PARTS,
    force: bool = False,
    progress: ProgressSink | None = None,
) -> StageResult:
    """Write `round-NNN/turns`: one row per turn of every episode."""
    layout = RunLayout.of(config)
    policy = resolve_policy(config.rollout.policy, config, layout, round_, after_training=False)
    return _run_play(
        config,
        config.rollout,
        "turns",
        layout.stage_dir(round_, "turns"),
        round_,
        policy,
        turn_rows,
        sharding,
        force,
        progress,
    )


def run_eval(
    config: Config,
    round_: int,
    sharding: Sharding = ALL_PARTS,
    force: bool = False,
    progress: ProgressSink | None = None,
) -> StageResult:
    """Write `round-NNN/eval[-policy]/`: `episodes/` shards (a row per episode), then `summary.json`."""
    layout = RunLayout.of(config)
    policy = resolve_policy(config.eval.policy, config, layout, round_, after_training=True)
    directory = layout.stage_dir(round_, eval_dir_name(policy.label))
    result = _run_play(
        config,
        config.eval,
        "eval",
        directory / EPISODES_DIR,
        round_,
        policy,
        lambda ep, base: [eval_row(ep, base)],
        sharding,
        force,
        progress,
    )
    if result.complete:
        result.summary = summarize(read_stage(result.directory, "eval").to_pylist())
        write_json(directory / SUMMARY_FILE, result.summary)
    return result


def _run_play(
    config: Config,
    play: PlayConfig,
    stage: str,
    directory: Path,
    round_: int,
    policy: ResolvedPolicy,
    to_rows: Callable[[Episode, dict], list[dict]],
    sharding: Sharding,
    force: bool,
    progress: ProgressSink | None,
) -> StageResult:
    data_root, specs = plan_episodes(config, play, round_)
    tokenizer = _tokenizer_path(config, policy)
    content = {path: model_fingerprint(path) for path in {tokenizer, policy.model} - {None}}
    parts = chunk(specs, play.episodes_per_shard)
    temperature = play_temperature(config, play)
    with writer_lock(directory, (sharding.index, sharding.count)):
        writer = StageWriter(
            directory,
            stage,
            num_parts=len(parts),
            force=force,
            config=_work_config(config, play, round_, policy, temperature),
            inputs={
                "games": game_ids(specs),
                "game_files": fingerprint({spec.game.game_id: sha256_file(spec.game.path) for spec in specs}),
                "episodes": [s.episode_id for s in specs],
                "model": content.get(policy.model),
                "tokenizer": content[tokenizer],
            },
            models={
                "policy": policy.label,
                "checkpoint": policy.model,
                "tokenizer": tokenizer,
                "data_root": str(data_root),
            },
            provenance=backend_provenance(config) if policy.model else provenance(),
        )
        mine = [i for i in range(len(parts)) if sharding.owns(i)]
        todo = writer.pending(mine)
        result = StageResult(directory, parts_skipped=len(mine) - len(todo))
        if todo:
            base = {"run": config.run, "round": round_, "policy": policy.label}
            try:
                pool = EnvPool(
                    config.env.num_workers,
                    str(data_root.resolve()),
                    expert=policy.env_expert,
                    memory=config.env.memory,
                    games_per_worker=config.env.games_per_worker,
                )
                with pool, stage_backend(config):
                    runner = _build_runner(config, policy, temperature, pool)
                    if progress is not None:
                        progress.begin(sum(len(parts[i]) for i in todo))
                    for index in todo:
                        tick = time.perf_counter()
                        episodes = runner.play(parts[index], derive_seed(config.seed, round_, stage, index), progress)
                        _refuse_if_all_failed(episodes, index)
                        rows = [row for ep in episodes for row in to_rows(ep, base)]
                        writer.write_part(index, rows, seconds=time.perf_counter() - tick)
                        result.parts_written += 1
                        result.episodes += len(episodes)
                        result.won += sum(ep.won for ep in episodes)
                        result.turns += sum(len(ep.turns) for ep in episodes)
                    result.timings = runner.timings
            except KeyboardInterrupt:
                kept = len(parts) - len(writer.pending(range(len(parts))))
                raise Interrupted(
                    f"{play.section} of round {round_} interrupted: {kept} of {len(parts)} parts are kept in "
                    f"{directory}; run the same command again to play the rest"
                ) from None
        result.complete = writer.finalize()
    return result


def _refuse_if_all_failed(episodes: list[Episode], part: int) -> None:
    """One broken game is a failed episode; a part where every game failed means the environment is broken."""
    if episodes and all(ep.error for ep in episodes):
        raise UserError(
            f"every episode of part {part} failed, so the environment itself is broken (first error: "
            f"{episodes[0].error}); nothing was written for this part"
        )


def play_temperature(config: Config, play: PlayConfig) -> float:
    """The temperature a stage plays at: its own (`rollout.temperature`, `eval.temperature`) or `sampling`'s."""
    return config.sampling.temperature if play.temperature is None else play.temperature


def _work_config(
    config: Config, play: PlayConfig, round_: int, policy: ResolvedPolicy, temperature: float
) -> dict[str, Any]:
    """The settings that decide what a stage's rows contain (not how many workers made them)."""
    env = asdict(config.env)
    env.pop("num_workers")
    env.pop("games_per_worker")
    sampling = asdict(config.sampling)
    for name in ("device", *ENGINE_SETTINGS):
        sampling.pop(name)
    return {
        "run": config.run,
        "round": round_,
        "seed": config.seed,
        "data": asdict(config.data),
        "play": asdict(play),
        "env": env,
        "sampling": {**sampling, "temperature": temperature},
        "policy": policy.label,  # its model is an input, by content (see `_run_play`)
    }


def _tokenizer_path(config: Config, policy: ResolvedPolicy) -> str:
    """Prompts are tokenized by the policy's own tokenizer; expert turns use the student's."""
    return policy.model or config.models.student


def _build_runner(config: Config, policy: ResolvedPolicy, temperature: float, pool: EnvPool) -> EpisodeRunner:
    if config.runtime.threads:
        torch.set_num_threads(config.runtime.threads)
    tokenizer = load_tokenizer(_tokenizer_path(config, policy))
    actor: Policy
    if policy.model is not None:
        generator = load_generator(config, policy.model, tokenizer)
        actor = LMPolicy(policy.label, generator, config.sampling, temperature)
    elif policy.env_expert is not None:
        actor = SearchingExpertPolicy(policy.env_expert, tokenizer, think=config.env.think)
    elif policy.label.startswith("floor:"):
        actor = FloorPolicy(policy.label.removeprefix("floor:"), tokenizer, think=config.env.think)
    else:
        actor = ExpertPolicy(tokenizer, think=config.env.think)
    return EpisodeRunner(
        actor,
        PromptRenderer(tokenizer, config.env.think),
        pool,
        batch_size=config.sampling.batch_size,
        max_steps=config.env.max_steps,
        history=config.env.history,
        think=config.env.think,
        listing=config.env.listing,
        memory=config.env.memory,
    )
