"""The train stage: the round's turns and annotations update the student into `round-NNN/checkpoint/`.

The trainer saves into a staging folder beside the checkpoint; the trainer's logged steps go into that
folder as `train_log.jsonl`, then `_train.json` with what produced it (settings, the content hashes of
the student and of the turns and annotations, the code and device) and the sha256 of every other file;
only then is the staging folder swapped in for `checkpoint/`. So a checkpoint is never seen without its
record, and a kill at any moment leaves the old checkpoint or the new one, whole. A rerun with the same
inputs skips training once the files match their hashes; other settings or inputs are refused until
`--force`. One process trains a round at a time (a writer lock beside the folder); what a killed one
left behind (staging folders, trainer scratch) is removed when the next one starts. With
`train.save_steps` the trainer's state is saved in the round as it goes (`.train-states/`), and a train
killed midway resumes from the last saved step, if it has the same settings and inputs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.atomic import swap_dir, write_json, write_text
from pipeline.checkpoints import (
    RECORD_FILE,
    TRAIN_LOG,
    file_hashes,
    model_fingerprint,
    read_record,
    verified_record,
)
from pipeline.config import Config
from pipeline.errors import StorageError, UserError
from pipeline.hashing import fingerprint
from pipeline.locks import writer_lock
from pipeline.losses import LABEL_NAMES
from pipeline.runs import RunLayout
from pipeline.seeding import derive_seed
from pipeline.shards import read_manifest, stage_fingerprint, stage_parts
from pipeline.train_data import build_examples, round_data, world_batch_size
from pipeline.trainer import train_student
from pipeline.trainer_args import check_trainer_settings

__all__ = ["RECORD_FILE", "TrainResult", "read_record", "run_train"]

_STAGED = ".checkpoint.staged.tmp"  # the next checkpoint, with its record, before it is swapped in
_SCRATCH = ".checkpoint.scratch.tmp"  # the trainer's temporary files (its output_dir), inside the run
_LEFTOVERS = ".*checkpoint*.tmp"  # what a killed train leaves in the round folder (atomic_dir's names too)
_SAVED_STATES = ".train-states"  # the trainer's saved states while a round trains (train.save_steps)
_SAVES_STAMP = "setup.fingerprint"  # which training saved them
TRACKER_DIR = "logs"  # where `train.report_to`'s trackers write in the round (TensorBoard events, W&B files)


@dataclass
class TrainResult:
    directory: Path
    trained: bool
    steps: int = 0
    mean_loss: float | None = None
    seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] | None = None  # None for a checkpoint trained before provenance was recorded


def run_train(config: Config, round_: int, force: bool = False) -> TrainResult:
    check_trainer_settings(config.train)
    layout = RunLayout.of(config)
    directory = layout.stage_dir(round_, "checkpoint")
    # Under torchrun every rank runs this; rank 0 alone writes the checkpoint, so it alone holds the lock.
    writer = int(os.environ.get("RANK", "0")) == 0
    with writer_lock(directory) if writer else nullcontext():
        if writer:
            _remove_leftovers(directory.parent)
        return _train(config, layout, round_, directory, force, writer)


def sampler_is_policy(rollout: dict[str, Any]) -> bool:
    """Whether the rollout (its manifest's `config`) sampled from the student's own distribution: the student
    played, at temperature 1, unrestricted. Otherwise the recorded log-probs are another distribution's q,
    and `rkl` needs the student's own as π_old (`losses.rkl_loss`)."""
    sampling = rollout.get("sampling", {})  # what older manifests lack was the only setting there was
    return (
        rollout.get("policy", "student") == "student"
        and sampling.get("temperature", 1.0) == 1.0
        and sampling.get("top_p", 1.0) == 1.0
        and not sampling.get("admissible_only", False)
    )


def _train(config: Config, layout: RunLayout, round_: int, directory: Path, force: bool, writer: bool) -> TrainResult:
    settings = config.train
    turns_dir = layout.stage_dir(round_, "turns")
    annotations_dir = layout.stage_dir(round_, settings.annotations) if settings.loss != "sft" else None
    if annotations_dir is not None:
        _check_labels(annotations_dir)
    student = layout.student_entering(round_, config.models.student)
    on_policy = settings.loss != "rkl" or sampler_is_policy(read_manifest(turns_dir, "turns")["config"])
    setup = {
        "train": asdict(settings),
        "seed": config.seed,
        "inputs": {
            "student": model_fingerprint(student),
            "turns": stage_fingerprint(turns_dir, "turns"),
            "annotations": None if annotations_dir is None else stage_fingerprint(annotations_dir, "annotations"),
        },
    }
    if settings.loss == "rkl":
        setup["sampler_is_policy"] = on_policy
    if directory.exists() and not force:
        done = verified_record(directory, round_)
        if done.get("fingerprint") == fingerprint(setup):
            return TrainResult(
                directory,
                False,
                done["steps"],
                done["mean_loss"],
                done["seconds"],
                done["stats"],
                done.get("provenance"),
            )
        raise UserError(
            f"{directory} was trained with other settings or inputs: rerun `sage-opd train` with --force to redo it"
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    staged = directory.parent / _STAGED
    saves = directory.parent / _SAVED_STATES
    if writer:
        if force:
            shutil.rmtree(saves, ignore_errors=True)
        _keep_saves_only_for(saves, {**setup, "world_size": world} if settings.save_steps else None)
    # The writer's scratch is in the round (a kill leaves nothing elsewhere); the other ranks' in TMPDIR.
    scratch = _scratch_tempdir(directory.parent / _SCRATCH) if writer else tempfile.TemporaryDirectory()
    with scratch as scratch_dir:
        cache = Path(scratch_dir) / "examples"
        examples, stats = build_examples(
            *round_data(turns_dir, annotations_dir, settings.loss, cache),
            settings,
            world_batch=world_batch_size(settings, world),
            seed=derive_seed(config.seed, round_, "train"),
            cache_dir=cache,
        )
        summary = train_student(
            student,
            examples,
            stats,
            settings,
            staged,
            seed=config.seed,
            threads=config.runtime.threads or None,
            sampler_is_policy=on_policy,
            logging_dir=layout.round_dir(round_) / TRACKER_DIR,
            state_dir=saves,
        )
    losses = [entry["loss"] for entry in summary.log_history if "loss" in entry]
    mean_loss = sum(losses) / len(losses) if losses else None
    if writer:
        record = {
            **setup,
            "student": student,
            "fingerprint": fingerprint(setup),
            "status": "complete",
            "steps": summary.steps,
            "mean_loss": mean_loss,
            "seconds": summary.seconds,
            "stats": stats,
            "provenance": summary.provenance,
            "resumed_from_step": summary.resumed_from_step,
        }
        write_text(
            staged / TRAIN_LOG, "".join(json.dumps(entry, sort_keys=True) + "\n" for entry in summary.log_history)
        )
        write_json(staged / RECORD_FILE, {**record, "files": file_hashes(staged)})
        swap_dir(staged, directory)
        shutil.rmtree(staged, ignore_errors=True)  # the checkpoint it replaced, if any
        shutil.rmtree(saves, ignore_errors=True)  # the checkpoint is whole: nothing to resume any more
    return TrainResult(directory, True, summary.steps, mean_loss, summary.seconds, stats, summary.provenance)


def _check_labels(directory: Path) -> None:
    """A label the loss does not know is damaged data: one line naming the shard, not a trainer crash."""
    for part in stage_parts(directory, "annotations"):
        unknown = set(pc.unique(pq.read_table(part, columns=["label"])["label"]).to_pylist()) - set(LABEL_NAMES)
        if unknown:
            raise StorageError(
                f"annotations shard {part} holds label {sorted(unknown)[0]!r} (expected one of "
                f"{', '.join(LABEL_NAMES)}): rerun `sage-opd annotate` with --force"
            )


def _keep_saves_only_for(saves: Path, setup: dict[str, Any] | None) -> None:
    """Keep the trainer states saved in `saves` only if they were saved by this very training (same settings,
    inputs and number of processes): resuming another one's would mix two trainings. `setup` None (this one
    saves nothing) clears them."""
    stamp = saves / _SAVES_STAMP
    if setup is not None and stamp.is_file() and stamp.read_text(encoding="utf-8") == fingerprint(setup):
        return
    shutil.rmtree(saves, ignore_errors=True)
    if setup is not None:
        saves.mkdir(parents=True)
        write_text(stamp, fingerprint(setup))


def _remove_leftovers(round_dir: Path) -> None:
    """Staging folders and trainer scratch of a train that was killed (we hold the round's writer lock)."""
    if round_dir.is_dir():
        for leftover in round_dir.glob(_LEFTOVERS):
            shutil.rmtree(leftover, ignore_errors=True)


@contextmanager
def _scratch_tempdir(scratch: Path) -> Iterator[Path]:
    """Temporary files of the training step (the round's examples as Arrow, the Trainer's own
    `sage-opd-trainer-*` output folder) go inside the run, where the next train removes what a kill left,
    instead of piling up in TMPDIR."""
    scratch.mkdir(parents=True, exist_ok=True)
    previous, tempfile.tempdir = tempfile.tempdir, str(scratch)
    try:
        yield scratch
    finally:
        tempfile.tempdir = previous
        shutil.rmtree(scratch, ignore_errors=True)
