"""`round`: the next round of a run, stage after stage, and its line in `rounds.jsonl`.

A round is rollout → annotate → train → eval (annotate is left out for `sft`, which needs no teacher
labels). Each stage skips what it already finished, so calling `round` again after a stop carries on
where it stopped; the round counts as done once its line is in `rounds.jsonl`. Round 1 also
evaluates the initial student, the baseline every later round is compared with.

The line describes the finished stages, not the process that wrote it: labels are counted in the
annotations, seconds are summed over the parts' manifests (and the training record), and `provenance`
holds each stage's own record (commit, dirty flag, processes, device, dtype), so a round that took
three processes to finish reads the same as one that ran straight through.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from pipeline.atomic import write_text
from pipeline.config import Config
from pipeline.executors import LocalExecutor
from pipeline.losses import LABEL_NAMES
from pipeline.runs import ROUNDS_FILE, RunLayout, next_round, recorded_rounds
from pipeline.shards import read_manifest, read_stage
from pipeline.trainer_args import check_trainer_settings


def append_round(layout: RunLayout, entry: dict[str, Any]) -> None:
    """Rewrite rounds.jsonl whole with the new line (atomic: never a half-written line)."""
    lines = [json.dumps(e, sort_keys=True) for e in recorded_rounds(layout) if e["round"] != entry["round"]]
    lines.append(json.dumps(entry, sort_keys=True))
    write_text(layout.root / ROUNDS_FILE, "\n".join(lines) + "\n")


def success(summary: dict[str, Any] | None) -> float | None:
    return None if summary is None else summary["overall"]["success"]


def success_by_split(summary: dict[str, Any] | None) -> dict[str, float | None]:
    return {split: block["success"] for split, block in (summary or {}).get("splits", {}).items()}


def run_round(config: Config, progress_for=None, force: bool = False, executor: Any = None) -> dict[str, Any]:
    """Run (or finish) the next round; returns the line it appended to rounds.jsonl.

    `progress_for(stage, round)` may return a progress sink for a stage (the CLI's bars). `force` redoes
    every stage of the round from scratch. `executor` (pipeline/executors.py) runs the stages: this
    process by default, or Ray tasks.
    """
    executor = executor or LocalExecutor()
    check_trainer_settings(config.train)  # before the rollout, not after it
    layout = RunLayout.of(config)
    round_ = next_round(layout)

    def bar(stage: str):
        return progress_for(stage, round_) if progress_for else None

    rollout = executor.stage("rollout", config, round_, force, bar("rollout"))
    seconds = {"rollout": stage_seconds(rollout.directory, "turns")}
    made_by = {"rollout": stage_provenance(rollout.directory, "turns")}
    labels = None
    if config.train.loss != "sft":
        annotate = executor.stage("annotate", config, round_, force, bar("annotate"))
        seconds["annotate"] = stage_seconds(annotate.directory, "annotations")
        made_by["annotate"] = stage_provenance(annotate.directory, "annotations")
        labels = label_counts(annotate.directory)
    train = executor.train(config, round_, force)
    seconds["train"] = round(train.seconds, 2)
    made_by["train"] = train.provenance
    evaluation = executor.stage("eval", config, round_, force, bar("eval"))
    seconds["eval"] = stage_seconds(evaluation.directory, "eval")
    made_by["eval"] = stage_provenance(evaluation.directory, "eval")
    entry: dict[str, Any] = {
        "round": round_,
        "student_success": success(evaluation.summary),
        "success_by_split": success_by_split(evaluation.summary),
        "rollout_success": rollout_success(layout, round_),
        "labels": labels,
        "train_loss": train.mean_loss,
        "train_steps": train.steps,
        "seconds": seconds,
        "provenance": made_by,
    }
    if round_ == 1:
        initial = replace(config, eval=replace(config.eval, policy=config.models.student))
        baseline = executor.stage("eval", initial, round_, force, bar("eval-initial"))
        seconds["eval-initial"] = stage_seconds(baseline.directory, "eval")
        made_by["eval-initial"] = stage_provenance(baseline.directory, "eval")
        entry["initial_success"] = success(baseline.summary)
        entry["initial_success_by_split"] = success_by_split(baseline.summary)
    append_round(layout, entry)
    return entry


def stage_seconds(directory: Path, stage: str) -> float:
    """Seconds spent on a stage's parts, whichever processes wrote them (each part records its own)."""
    parts = read_manifest(directory, stage)["parts"].values()
    return round(sum(entry.get("seconds") or 0.0 for entry in parts), 2)


def stage_provenance(directory: Path, stage: str) -> dict[str, Any] | None:
    """The code and device that made a stage (its manifest's record; None for one written before records)."""
    return read_manifest(directory, stage).get("provenance")


def label_counts(directory: Path) -> dict[str, int]:
    """Turns per label over the whole annotations stage (not only the parts this process wrote)."""
    counts = Counter(read_stage(directory, "annotations", columns=["label"])["label"].to_pylist())
    return {label: counts[label] for label in LABEL_NAMES}


def rollout_success(layout: RunLayout, round_: int) -> float | None:
    """Share of rolled-out episodes won (the on-policy data's own success, at rollout temperature)."""
    table = read_stage(layout.stage_dir(round_, "turns"), "turns", columns=["episode_id", "episode_won"])
    if table.num_rows == 0:
        return None
    episodes = table.group_by("episode_id").aggregate([("episode_won", "max")])
    return pc.mean(episodes["episode_won_max"].cast("int8")).as_py()


def rounds_path(config: Config) -> Path:
    return RunLayout.of(config).root / ROUNDS_FILE
