"""Rollout benchmarks: environment parallelism and the rollout loop's own overhead."""

from __future__ import annotations

from bench.table import Row
from pipeline.backends.hf import HFGenerator
from pipeline.envs.games import MINI_DATA
from pipeline.envs.prompts import PromptRenderer
from pipeline.envs.workers import EnvPool
from pipeline.episodes import EpisodeRunner, PlayTimings
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
