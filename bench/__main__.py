"""`make bench`: env parallelism and rollout overhead, measured side by side in one run.

Rows are ratios, so they travel between machines better than raw times:
- env parallelism: expert steps/s with W workers over steps/s with one (target ≥ 0.8·W), on the mini
  games and, when $ALFWORLD_DATA is set, on 12 real valid_unseen games (resets ~15x slower);
- rollout overhead: wall time of a tiny-model rollout over the time spent inside the policy's
  generate plus the time spent waiting on environments (target ≤ 1.10: our own code costs ≤ 10%).
Results also go to data/bench/results.json.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.atomic import write_json
from pipeline.backends.hf import HFGenerator, load_causal_lm, load_tokenizer
from pipeline.config import load_config
from pipeline.envs.games import MINI_DATA, discover_games, select_games
from pipeline.envs.prompts import PromptRenderer
from pipeline.envs.workers import EnvPool
from pipeline.episodes import EpisodeRunner, EpisodeSpec, PlayTimings
from pipeline.policies import ExpertPolicy, LMPolicy

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "data" / "bench" / "results.json"


@dataclass
class Row:
    name: str
    value: float
    target: str
    ok: bool
    detail: str


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


def print_table(rows: list[Row]) -> None:
    width = max(len(r.name) for r in rows)
    print(f"\n{'benchmark':<{width}}  {'ratio':>7}  {'target':>8}  ok   detail")
    for r in rows:
        print(f"{r.name:<{width}}  {r.value:>7.3f}  {r.target:>8}  {'yes' if r.ok else 'NO ':<3}  {r.detail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "default.yaml"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--samples", type=int, default=2, help="episodes per mini training game")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = load_config(args.config)
    torch.set_num_threads(config.runtime.threads or os.cpu_count() or 1)
    tokenizer = load_tokenizer(config.models.student)
    model = load_causal_lm(config.models.student, torch.device("cpu"), torch.float32)
    specs = [EpisodeSpec(g, s) for g in discover_games(MINI_DATA, "train") for s in range(args.samples)]
    start = time.perf_counter()
    rows = [env_parallelism(tokenizer, specs, args.workers, "mini games")]
    full_data = os.environ.get("ALFWORLD_DATA")
    if full_data and (Path(full_data) / "json_2.1.1").is_dir():
        real = select_games(discover_games(Path(full_data), "valid_unseen"), 12)
        rows.append(env_parallelism(tokenizer, [EpisodeSpec(g, 0) for g in real], args.workers, "real", full_data))
    rows.append(rollout_overhead(tokenizer, model, specs, config))
    print_table(rows)
    write_json(RESULTS, {"rows": [r.__dict__ for r in rows], "seconds": time.perf_counter() - start})
    print(f"\nresults in {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
