"""Where a run's files live, and which checkpoint "student" means at a given round.

Layout: `<runs_dir>/<run>/round-NNN/{turns,annotations,checkpoint,eval}/`. Round r rolls out the
student that entered it: the newest checkpoint of an earlier round, or the configured initial student
for round 1. That is what keeps each round on-policy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import POLICY_NAMES, Config
from pipeline.errors import UserError

ROUND_DIR = re.compile(r"^round-(\d{3,})$")


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
        path = self.stage_dir(round_, "checkpoint")
        return path if (path / "config.json").is_file() else None

    def student_entering(self, round_: int, initial: str) -> str:
        """The checkpoint that round `round_` rolls out."""
        for earlier in range(round_ - 1, 0, -1):
            if (path := self.checkpoint(earlier)) is not None:
                return str(path)
        return initial

    def student_leaving(self, round_: int, initial: str) -> str:
        """The checkpoint round `round_` trained, or the one it started from when it has not trained yet."""
        trained = self.checkpoint(round_)
        return str(trained) if trained is not None else self.student_entering(round_, initial)


@dataclass(frozen=True)
class ResolvedPolicy:
    """`label` goes into the `policy` column; `model` is the checkpoint folder (None for the expert)."""

    label: str
    model: str | None


def resolve_policy(name: str, config: Config, layout: RunLayout, round_: int, after_training: bool) -> ResolvedPolicy:
    """`student` is the round's input checkpoint for rollout, and its output checkpoint for eval."""
    if name == "expert":
        return ResolvedPolicy("expert", None)
    if name == "student":
        pick = layout.student_leaving if after_training else layout.student_entering
        return ResolvedPolicy("student", pick(round_, config.models.student))
    if name == "teacher":
        return ResolvedPolicy("teacher", config.models.teacher)
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
