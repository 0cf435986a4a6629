"""`round`: the next round of a run, stage after stage, and its line in `rounds.jsonl`.

A round is rollout → annotate → train → eval (annotate is left out for `sft`, which needs no teacher
labels). Each stage skips what it already finished, so calling `round` again after a stop carries on
where it stopped; the round counts as done once its line is in `rounds.jsonl`. Round 1 also
evaluates the initial student, the baseline every later round is compared with.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from pipeline.annotate import run_annotate
from pipeline.atomic import write_text
from pipeline.config import Config
from pipeline.play import run_eval, run_rollout
from pipeline.runs import RunLayout
from pipeline.shards import read_stage
from pipeline.train import run_train

ROUNDS_FILE = "rounds.jsonl"


def recorded_rounds(layout: RunLayout) -> list[dict[str, Any]]:
    path = layout.root / ROUNDS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def next_round(layout: RunLayout) -> int:
    """The first round without a line in rounds.jsonl (an unfinished round is carried on, not restarted)."""
    return max((entry["round"] for entry in recorded_rounds(layout)), default=0) + 1


def append_round(layout: RunLayout, entry: dict[str, Any]) -> None:
    """Rewrite rounds.jsonl whole with the new line (atomic: never a half-written line)."""
    lines = [json.dumps(e, sort_keys=True) for e in recorded_rounds(layout) if e["round"] != entry["round"]]
    lines.append(json.dumps(entry, sort_keys=True))
    write_text(layout.root / ROUNDS_FILE, "\n".join(lines) + "\n")


def success(summary: dict[str, Any] | None) -> float | None:
    return None if summary is None else summary["overall"]["success"]


def success_by_split(summary: dict[str, Any] | None) -> dict[str, float | None]:
    return {split: block["success"] for split, block in (summary or {}).get("splits", {}).items()}


def run_round(config: Config, progress_for=None) -> dict[str, Any]:
    """Run (or finish) the next round; returns the line it appended to rounds.jsonl.

    `progress_for(stage, round)` may return a progress sink for a stage (the CLI's bars).
    """
    layout = RunLayout.of(config)
    round_ = next_round(layout)
    seconds: dict[str, float] = {}

    def timed(stage: str, work):
        tick = time.perf_counter()
        result = work(progress_for(stage, round_) if progress_for else None)
        seconds[stage] = round(time.perf_counter() - tick, 2)
        return result

    timed("rollout", lambda bar: run_rollout(config, round_, progress=bar))
    annotate = None
    if config.train.loss != "sft":
        annotate = timed("annotate", lambda bar: run_annotate(config, round_, progress=bar))
    train = timed("train", lambda bar: run_train(config, round_))
    evaluation = timed("eval", lambda bar: run_eval(config, round_, progress=bar))
    entry: dict[str, Any] = {
        "round": round_,
        "student_success": success(evaluation.summary),
        "success_by_split": success_by_split(evaluation.summary),
        "rollout_success": rollout_success(layout, round_),
        "labels": dict(annotate.labels) if annotate else None,
        "train_loss": train.mean_loss,
        "train_steps": train.steps,
        "seconds": seconds,
    }
    if round_ == 1:
        initial = replace(config, eval=replace(config.eval, policy=config.models.student))
        baseline = timed("eval-initial", lambda bar: run_eval(initial, round_, progress=bar))
        entry["initial_success"] = success(baseline.summary)
        entry["initial_success_by_split"] = success_by_split(baseline.summary)
    append_round(layout, entry)
    return entry


def rollout_success(layout: RunLayout, round_: int) -> float | None:
    """Share of rolled-out episodes won (the on-policy data's own success, at rollout temperature)."""
    table = read_stage(layout.stage_dir(round_, "turns"), "turns", columns=["episode_id", "episode_won"])
    if table.num_rows == 0:
        return None
    episodes = table.group_by("episode_id").aggregate([("episode_won", "max")])
    return pc.mean(episodes["episode_won_max"].cast("int8")).as_py()


def rounds_path(config: Config) -> Path:
    return RunLayout.of(config).root / ROUNDS_FILE
