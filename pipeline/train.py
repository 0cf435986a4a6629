"""The train stage: the round's turns and annotations update the student into `round-NNN/checkpoint/`.

The checkpoint folder is written whole (atomically) by the trainer; `_train.json` beside the weights
records what produced it (settings, input fingerprints, the student it started from, the trainer's
log). A rerun with the same inputs skips training; different settings are refused until `--force`.
A crash before `_train.json` exists means the stage is redone.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.atomic import write_json
from pipeline.backends.hf import require_model_dir
from pipeline.config import Config
from pipeline.episodes import derive_seed
from pipeline.errors import UserError
from pipeline.runs import RunLayout
from pipeline.shards import fingerprint, read_stage, stage_fingerprint
from pipeline.train_data import build_examples
from pipeline.trainer import train_student

RECORD_FILE = "_train.json"


@dataclass
class TrainResult:
    directory: Path
    trained: bool
    steps: int = 0
    mean_loss: float | None = None
    seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)


def read_record(directory: Path) -> dict[str, Any] | None:
    path = directory / RECORD_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def run_train(config: Config, round_: int, force: bool = False) -> TrainResult:
    layout = RunLayout.of(config)
    settings = config.train
    turns_dir = layout.stage_dir(round_, "turns")
    turns = read_stage(turns_dir, "turns")
    annotations_dir = layout.stage_dir(round_, settings.annotations)
    annotations = None if settings.loss == "sft" else read_stage(annotations_dir, "annotations")
    student = layout.student_entering(round_, config.models.student)
    require_model_dir(student)
    directory = layout.stage_dir(round_, "checkpoint")
    setup = {
        "train": asdict(settings),
        "seed": config.seed,
        "student": student,
        "inputs": {
            "turns": stage_fingerprint(turns_dir, "turns"),
            "annotations": None if annotations is None else stage_fingerprint(annotations_dir, "annotations"),
        },
    }
    done = read_record(directory)
    if done is not None and not force:
        if done["fingerprint"] == fingerprint(setup):
            return TrainResult(directory, False, done["steps"], done["mean_loss"], done["seconds"], done["stats"])
        raise UserError(
            f"{directory} was trained with other settings or inputs: rerun `sage-opd train` with --force to redo it"
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    examples, stats = build_examples(
        turns.to_pylist(),
        None if annotations is None else annotations.to_pylist(),
        settings,
        world_batch=settings.per_device_batch_size * settings.gradient_accumulation_steps * world,
        seed=derive_seed(config.seed, round_, "train"),
    )
    summary = train_student(
        student, examples, stats, settings, directory, seed=config.seed, threads=config.runtime.threads or None
    )
    losses = [entry["loss"] for entry in summary.log_history if "loss" in entry]
    mean_loss = sum(losses) / len(losses) if losses else None
    write_json(
        directory / RECORD_FILE,
        {
            **setup,
            "fingerprint": fingerprint(setup),
            "status": "complete",
            "steps": summary.steps,
            "mean_loss": mean_loss,
            "seconds": summary.seconds,
            "stats": stats,
            "log_history": summary.log_history,
        },
    )
    return TrainResult(directory, True, summary.steps, mean_loss, summary.seconds, stats)
