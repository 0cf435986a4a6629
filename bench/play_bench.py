"""Rollout benchmarks: environment parallelism, the rollout loop's own overhead, and what the floors cost."""

from __future__ import annotations

from bench.table import Row
from pipeline.backends.hf import HFGenerator
from pipeline.config import FLOORS
from pipeline.envs.games import MINI_DATA
from pipeline.envs.prompts import PromptRenderer
from pipeline.envs.workers import EnvPool
from pipeline.episodes import EpisodeRunner, PlayTimings
from pipeline.floors import FloorPolicy
from pipeline.policies import ExpertPolicy, LMPolicy


def play(policy, tokenizer, specs, workers: int, batch_size: int, max_steps: int, data_root=MINI_DATA) -> PlayTimings:
    with EnvPool(workers, str(data_root)) as pool:
        runner = EpisodeRunner(
            policy,
            PromptRenderer(tokenizer, think=False),
            pool,
            batch_size=batch_size,
            max_steps=max_steps,
            history=2,
            think=False,
        )
        runner.play(specs[:2], seed=0)  # warm the workers' imports before timing
        runner.timings = PlayTimings()
        pool.wait_seconds = 0.0
        runner.play(specs, seed=1)
        return runner.timings


def env_parallelism(tokenizer, specs, workers: int, label: str, data_root=MINI_DATA) -> Row:
    expert = ExpertPolicy(tokenizer, think=False)
    one = play(expert, tokenizer, specs, 1, len(specs), 50, data_root)
    many = play(expert, tokenizer, specs, workers, len(specs), 50, data_root)
    rate_one, rate_many = one.steps / one.wall_seconds, many.steps / many.wall_seconds
    ratio = rate_many / rate_one
    return Row(
        f"env parallelism, {label} (W={workers})",
        ratio,
        f">= {0.8 * workers:.2f}",
        ratio >= 0.8 * workers,
        f"{rate_one:.1f} -> {rate_many:.1f} expert steps/s over {len(specs)} episodes",
    )


def rollout_overhead(tokenizer, model, specs, config) -> Row:
    policy = LMPolicy("student", HFGenerator(model, tokenizer), config.sampling, config.sampling.temperature)
    timings = play(policy, tokenizer, specs, config.env.num_workers, config.sampling.batch_size, config.env.max_steps)
    inside = timings.policy_seconds + timings.env_seconds
    ratio = timings.wall_seconds / inside
    return Row(
        "rollout overhead",
        ratio,
        "<= 1.10",
        ratio <= 1.10,
        f"wall {timings.wall_seconds:.2f}s = generate {timings.policy_seconds:.2f}s + env wait "
        f"{timings.env_seconds:.2f}s + ours {timings.wall_seconds - inside:.2f}s, {timings.steps} turns",
    )


def floor_costs(tokenizer, specs, workers: int, max_steps: int) -> list[Row]:
    """Per floor: the share of its wall time spent choosing actions, over 60 episodes of the mini games.

    The floors stand beside every rate in the tables, so reporting them must stay cheap: their time should be
    the environments' (≤ 5% in the policy), and the detail says what 60 games cost.
    """
    episodes = (specs * (60 // len(specs) + 1))[:60]
    rows = []
    for floor in FLOORS:
        timings = play(FloorPolicy(floor, tokenizer, think=False), tokenizer, episodes, workers, 60, max_steps)
        share = timings.policy_seconds / timings.wall_seconds
        rows.append(
            Row(
                f"floor:{floor}, choosing over wall",
                share,
                "<= 0.05",
                share <= 0.05,
                f"60 episodes (at most {max_steps} steps) in {timings.wall_seconds:.1f}s wall, "
                f"{timings.policy_seconds:.2f}s choosing, {timings.steps} turns",
            )
        )
    return rows
