"""Where a run's files live, and which checkpoint "student" means at a given round.

Layout: `<runs_dir>/<run>/round-NNN/{turns,annotations,checkpoint,eval}/`. Round r rolls out the
student that entered it: the checkpoint round r-1 trained, or the configured initial student for
round 1. That is what keeps each round on-policy, so there is no falling back to an older model: a
missing or damaged checkpoint stops the stage with a line naming its round.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.checkpoints import verified_record
from pipeline.config import POLICY_NAMES, Config
from pipeline.errors import StorageError, UserError

ROUND_DIR = re.compile(r"^round-(\d{3,})$")
ROUNDS_FILE = "rounds.jsonl"  # one line per finished round, written by `round`


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @classmethod
    def of(cls, config: Config) -> RunLayout:
        return cls(Path(config.runs_dir) / config.run)

    def round_dir(self, round_: int) -> Path:
        return self.root / f"round-{round_:03d}"

    def stage_dir(self, round_: int, stage: str) -> Path:
        return self.round_dir(round_) / stage

    def rounds(self) -> list[int]:
        if not self.root.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.root.iterdir() if (m := ROUND_DIR.match(p.name)))

    def current_round(self) -> int:
        """The newest round that exists, or 1 for a new run (the default `--round`)."""
        return max(self.rounds(), default=1)

    def checkpoint(self, round_: int) -> Path | None:
        """Round `round_`'s trained checkpoint, checked against its recorded file hashes; None if it has none.

        A folder that is there but not whole (no record, a changed or missing file) is a StorageError
        naming the round, never treated as absent: that would silently use another model.
        """
        path = self.stage_dir(round_, "checkpoint")
        if not path.exists():
            return None
        verified_record(path, round_)
        return path

    def student_entering(self, round_: int, initial: str) -> str:
        """The checkpoint that round `round_` rolls out: round 1 the initial student, later rounds the
        checkpoint the round before trained (a StorageError naming that round when it is missing or damaged)."""
        if round_ == 1:
            return initial
        if (path := self.checkpoint(round_ - 1)) is None:
            raise StorageError(
                f"round {round_ - 1} has no checkpoint ({self.stage_dir(round_ - 1, 'checkpoint')} is missing), so "
                f"round {round_} has no student to start from: run `sage-opd train --round {round_ - 1}`"
            )
        return str(path)

    def student_leaving(self, round_: int, initial: str) -> str:
        """The checkpoint round `round_` trained, or the one it started from when it has not trained yet.

        A round recorded in rounds.jsonl has trained: without its checkpoint it is a StorageError.
        """
        if (trained := self.checkpoint(round_)) is not None:
            return str(trained)
        if any(entry["round"] == round_ for entry in recorded_rounds(self)):
            raise StorageError(
                f"round {round_} is recorded in {self.root / ROUNDS_FILE} but its checkpoint "
                f"{self.stage_dir(round_, 'checkpoint')} is missing: rerun `sage-opd train --round {round_} --force`"
            )
        return self.student_entering(round_, initial)


def recorded_rounds(layout: RunLayout) -> list[dict[str, Any]]:
    """The lines of rounds.jsonl; a damaged line is a StorageError naming the file and the line."""
    path = layout.root / ROUNDS_FILE
    if not path.is_file():
        return []
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise StorageError(
                f"{path} line {number} is not a whole JSON record ({err.msg}): remove or repair it"
            ) from None
        if not isinstance(entry, dict) or not isinstance(entry.get("round"), int):
            raise StorageError(f"{path} line {number} is not a round record: remove or repair it")
        entries.append(entry)
    return entries


def next_round(layout: RunLayout) -> int:
    """The first round without a line in rounds.jsonl (an unfinished round is carried on, not restarted)."""
    return max((entry["round"] for entry in recorded_rounds(layout)), default=0) + 1


@dataclass(frozen=True)
class ResolvedPolicy:
    """`label` goes into the `policy` column; `model` is the checkpoint folder (None for the experts and floors);
    `env_expert` is the expert the environments must run for it (`expert:search` plays its actions)."""

    label: str
    model: str | None
    env_expert: str | None = None


def resolve_policy(name: str, config: Config, layout: RunLayout, round_: int, after_training: bool) -> ResolvedPolicy:
    """`student` is the round's input checkpoint for rollout, and its output checkpoint for eval."""
    if name == "student":
        pick = layout.student_leaving if after_training else layout.student_entering
        return ResolvedPolicy("student", pick(round_, config.models.student))
    if name == "teacher":
        return ResolvedPolicy("teacher", config.models.teacher)
    if name in POLICY_NAMES:  # the experts and the floors: no model
        searcher = name.removeprefix("expert:") if name.startswith("expert:") else None
        return ResolvedPolicy(name, None, searcher)
    if not Path(name).is_dir():
        raise UserError(
            f"--policy must be one of {', '.join(POLICY_NAMES)} or a checkpoint folder; {name!r} is neither"
        )
    return ResolvedPolicy(name, name)


def eval_dir_name(policy_label: str) -> str:
    """`eval` for the student; other policies get their own folder so they never collide."""
    if policy_label == "student":
        return "eval"
    return "eval-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(policy_label).name)
