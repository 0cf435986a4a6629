"""Sweep benchmark: wall time of a small grid at `--jobs 1` over the same grid at `--jobs 2`.

A sweep's children are whole processes (interpreter and model start-up, environment workers, tiny
matmuls that a second thread barely speeds up), so two runs at a time should take little more than
half as long as one at a time with all the cores. Both sweeps run here back to back, from empty runs
folders, with the command's own thread rule (cores // jobs per child) and without the teacher's eval.
Run alone: `.venv/bin/python -m bench.sweep_bench` (after `make prepare`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bench.table import Row, print_table
from pipeline.sweep import available_cores, plan_sweep, run_sweep

REPO = Path(__file__).resolve().parents[1]
GRID = (REPO / "configs" / "ablations" / "opd.yaml", REPO / "configs" / "ablations" / "sage.yaml")
SEEDS = "0,1"
SMALL = (
    "env.max_steps=4",
    "rollout.num_games=4",
    "rollout.samples_per_game=1",
    "eval.splits=[valid_unseen]",
    "eval.num_games=2",
    "eval.samples_per_game=1",
)
TARGET = 1.6


def sweep_speedup(bench_dir: Path, jobs: int = 2) -> Row:
    """Both sweeps of the grid (2 configs × 2 seeds × 1 round on small settings); the ratio of their times."""
    seconds: dict[int, float] = {}
    threads: dict[int, int] = {}
    for count in (1, jobs):
        runs_dir = bench_dir / f"sweep-jobs{count}"
        shutil.rmtree(runs_dir, ignore_errors=True)  # time fresh runs, not finished ones
        plan = plan_sweep(GRID, SEEDS, 1, count, [f"runs_dir={runs_dir}", *SMALL], teacher=False)
        result = run_sweep(plan)
        if result.failed or result.interrupted:
            errors = "; ".join(f"{o.name} {o.error}" for o in result.failed) or "interrupted"
            raise RuntimeError(f"the --jobs {count} sweep did not finish: {errors}")
        seconds[count], threads[count] = result.seconds, plan.child_threads
    ratio = seconds[1] / seconds[jobs]
    return Row(
        f"sweep --jobs {jobs} over --jobs 1",
        ratio,
        f">= {TARGET}",
        ratio >= TARGET,
        f"wall time {seconds[1]:.0f}s vs {seconds[jobs]:.0f}s for {len(plan.runs)} runs × 1 round; "
        f"{threads[1]} vs {threads[jobs]} threads per child on {available_cores()} cores",
    )


if __name__ == "__main__":
    print_table([sweep_speedup(REPO / "data" / "bench")])
