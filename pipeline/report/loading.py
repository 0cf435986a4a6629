"""Reading runs for a report: every number a report shows comes from the frames loaded here, once.

A report must show what is on disk and nothing else. A stage that was never run contributes no rows; one
that exists but cannot be trusted (incomplete, corrupt, another schema) contributes no rows and a line in
`notes`, and so does every row the report cannot use (an annotation with a label it does not know):
counted and named, never dropped silently. Tables and figures then show that round as missing, never as
zero. Shards go through `read_stage`, which verifies every part's hash, so a report never rests on a
half-written shard.

Beside the rows, each run brings what made it (round 1's rollout and annotate manifests and training
record, without the run name and seed) so that runs differing only in seed can be grouped, and each eval
row the data source and settings of the eval that played it, so that no number pools two kinds of eval.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.checkpoints import read_train_log
from pipeline.config import POLICY_NAMES
from pipeline.envs.listing import REMOVED_LISTINGS, REMOVED_REASON
from pipeline.errors import UserError
from pipeline.judges import LABELS
from pipeline.play import EPISODES_DIR
from pipeline.rounds import recorded_rounds
from pipeline.runs import RunLayout, eval_dir_name
from pipeline.schema import EVAL_SCHEMA
from pipeline.shards import fingerprint, read_manifest, read_stage
from pipeline.train import read_record

# The fixed policies a run may evaluate beside its students: teacher, experts (the searching ones are the
# ceiling) and the zero-parameter floors. Teacher and expert always get a row; the others where evaluated.
REFERENCE_POLICIES = tuple(name for name in POLICY_NAMES if name != "student")
ALWAYS_SHOWN = ("teacher", "expert")
FLOOR_ROWS = tuple(name for name in REFERENCE_POLICIES if name.startswith("floor:"))
INITIAL_ROUND = 0  # the student before any training; `round` evaluates it inside round 1
ANNOTATION_COLUMNS = ["episode_id", "turn", "label", "confidence", "teacher_logprobs"]
RESPONSE_PROBABILITIES = ["teacher_prob", "sampler_prob"]  # what an annotation row brings instead of its log-probs
ANNOTATION_FRAME = ["round", "episode_id", "turn", "label", "confidence", *RESPONSE_PROBABILITIES]
EVAL_COLUMNS = [*EVAL_SCHEMA.names, "source", "protocol"]
TURN_COLUMNS = ["episode_id", "turn", "sampler_logprobs"]
PER_RUN = ("run", "round", "seed")  # config keys that differ between the seeds of one configuration
# train settings that change how a training is logged, saved or computed, never its update
TRAIN_BOOKKEEPING = ("logging_steps", "save_steps", "report_to", "gradient_checkpointing")


@dataclass
class RunData:
    """One run as a report sees it.

    `evals`: eval episode rows (the eval schema) where `round` is the round whose student played
    (0 = the initial student) and `policy` is student | teacher | expert; a reference policy keeps the
    round folder it was found in. `annotations`: one row per annotated turn (round, episode_id, turn,
    label, per-token confidence, and the probability of the turn's whole response under the teacher,
    `teacher_prob`, and under the sampler that drew it in the rollout, `sampler_prob`: NaN where the
    rollout's turns cannot be read). `training`: one row per logged optimizer step (round, step, loss and
    the trainer's other logged numbers). `trained_turns`: turns trained on, per round. `log`: the
    rounds.jsonl line of each finished round. Each eval row also carries `source` (data.source of its
    eval, "" when unrecorded) and `protocol` (a fingerprint of that eval's other settings). `settings`:
    what made the run, one entry per record found ({} when none was); `seed`: its seed, None when unrecorded.
    """

    name: str
    seed: int | None
    settings: dict[str, Any]
    rounds: list[int]
    log: dict[int, dict[str, Any]]
    evals: pd.DataFrame
    annotations: pd.DataFrame
    training: pd.DataFrame
    trained_turns: dict[int, int]
    notes: list[str] = field(default_factory=list)


def load_runs(runs_dir: Path, names: Sequence[str], annotations: str = "annotations") -> list[RunData]:
    """The named runs of `runs_dir`, in the order given; UserError for a run that is not there or is empty."""
    if not names:
        raise UserError("name at least one run to report on (--run NAME)")
    if repeated := sorted({name for name in names if names.count(name) > 1}):
        raise UserError(f"run(s) {', '.join(repeated)} named more than once")
    for name in names:
        if not (runs_dir / name).is_dir():
            raise UserError(f"no run {name!r} in {runs_dir} ({runs_there(runs_dir)})")
    return [load_run(RunLayout(runs_dir / name), annotations) for name in names]


def runs_there(runs_dir: Path) -> str:
    """The runs of `runs_dir` (folders holding a round), for a message about a name that is not one of them."""
    names = sorted(path.name for path in runs_dir.iterdir() if RunLayout(path).rounds()) if runs_dir.is_dir() else []
    return f"runs there: {', '.join(names) or 'none'}"


def load_run(layout: RunLayout, annotations: str = "annotations") -> RunData:
    """Every round that has a folder or a rounds.jsonl line, with what each of its stages left on disk."""
    name = layout.root.name
    log = {entry["round"]: entry for entry in recorded_rounds(layout)}
    rounds = sorted(set(layout.rounds()) | set(log))
    if not rounds:
        raise UserError(f"run {name!r} in {layout.root} has no rounds yet: run `sage-opd round --run {name}` first")
    notes: list[str] = []
    evals: list[pd.DataFrame] = []
    annotated: list[pd.DataFrame] = []
    steps: list[dict[str, Any]] = []
    trained_turns: dict[int, int] = {}
    for round_ in rounds:
        evals.append(_eval_rows(layout.stage_dir(round_, "eval"), round_, "student", notes))
        folder = layout.stage_dir(round_, annotations)
        labelled = _read_or_note(folder, "annotations", notes, ANNOTATION_COLUMNS)
        if labelled is not None:
            turns = _read_or_note(layout.stage_dir(round_, "turns"), "turns", notes, TURN_COLUMNS)
            known = _known_labels(labelled, folder, notes)
            annotated.append(_with_response_probabilities(known, turns).assign(round=round_))
        checkpoint = layout.stage_dir(round_, "checkpoint")
        record = read_record(checkpoint)
        if record is not None:
            trained_turns[round_] = record["stats"]["turns"]
            steps += [{"round": round_, **entry} for entry in read_train_log(checkpoint, record) if "loss" in entry]
    evals.append(_initial_student_rows(layout, notes))
    for policy in REFERENCE_POLICIES:
        evals.append(_newest_reference(layout, rounds, policy, notes))
    seed, settings = _settings(layout, annotations)
    return RunData(
        name=name,
        seed=seed,
        settings=settings,
        rounds=rounds,
        log=log,
        evals=_concat([frame.assign(run=name) for frame in evals if frame is not None], EVAL_COLUMNS),
        annotations=_concat(annotated, ANNOTATION_FRAME),
        training=_concat([pd.DataFrame(steps)] if steps else [], ["round", "step", "loss"]),
        trained_turns=trained_turns,
        notes=notes,
    )


def _settings(layout: RunLayout, annotations: str) -> tuple[int | None, dict[str, Any]]:
    """The run's seed and what made its students, from round 1, where every seed of a configuration starts alike.

    Later rounds name the run's own checkpoints, so they would tell seeds apart; round 1's training record
    names the initial student instead (its `inputs` fingerprint the seed's own data: left out, like the
    data root, which is where the data lies on one machine, not which data it is). The methods
    differ in their training settings, so until round 1 has trained the run has no settings ({}): nothing
    shows which configuration it belongs to.
    """
    rollout = _manifest_config(layout.stage_dir(1, "turns"), "turns")
    record = read_record(layout.stage_dir(1, "checkpoint"))
    seed = (rollout or {}).get("seed", (record or {}).get("seed"))
    if record is None or "train" not in record:
        return seed, {}
    return seed, {
        "rollout": rollout and {**_without(rollout, PER_RUN), "data": _without(rollout.get("data", {}), ("path",))},
        "annotate": _manifest_config(layout.stage_dir(1, annotations), "annotations"),
        "train": _without(record["train"], TRAIN_BOOKKEEPING),
        "student": record["student"],
    }


def reference_rows(policies: Iterable[str]) -> list[str]:
    """The reference rows of a table whose rows hold `policies`: teacher and expert always, the rest if there."""
    present = set(policies)
    return [name for name in REFERENCE_POLICIES if name in ALWAYS_SHOWN or name in present]


def _manifest_config(directory: Path, stage: str) -> dict[str, Any] | None:
    """A stage folder's recorded config; None when there is none to trust (its rows' loading says why)."""
    if not directory.is_dir():
        return None
    try:
        return read_manifest(directory, stage)["config"]
    except UserError:
        return None


def _without(config: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    return {key: value for key, value in config.items() if key not in keys}


def _initial_student_rows(layout: RunLayout, notes: list[str]) -> pd.DataFrame | None:
    """`round` evaluates the initial student in round 1, in `eval-<its folder name>`; round 1's training
    record names that folder (the student it started from)."""
    record = read_record(layout.stage_dir(1, "checkpoint"))
    if record is None:
        return None
    return _eval_rows(layout.stage_dir(1, eval_dir_name(record["student"])), INITIAL_ROUND, "student", notes)


def _newest_reference(layout: RunLayout, rounds: list[int], policy: str, notes: list[str]) -> pd.DataFrame | None:
    """The newest round's eval of a fixed policy (teacher, expert): it does not change between rounds."""
    for round_ in reversed(rounds):
        rows = _eval_rows(layout.stage_dir(round_, eval_dir_name(policy)), round_, policy, notes)
        if rows is not None:
            return rows
    return None


def _eval_rows(directory: Path, round_: int, policy: str, notes: list[str]) -> pd.DataFrame | None:
    """An eval folder's episodes, with its data source and a fingerprint of its other settings.

    The policy (which the rows' `policy` holds), round, run and seed are left out of the fingerprint: they
    differ between evals that should compare. So is the data root, which differs between machines.
    """
    rows = _read_or_note(directory / EPISODES_DIR, "eval", notes)
    if rows is None:
        return None
    config = read_manifest(directory / EPISODES_DIR, "eval")["config"]
    listing = config.get("env", {}).get("go_to_order")  # the setting's name before issue #28
    if listing in REMOVED_LISTINGS:
        notes.append(f"{directory} was played under the removed listing {listing}: {REMOVED_REASON}")
    source = config.get("data", {}).get("source", "")
    play = _without(config.get("play", {}), ("policy",))
    protocol = fingerprint({**_without(config, (*PER_RUN, "policy", "data")), "play": play})
    return rows.assign(round=round_, policy=policy, source=source, protocol=protocol)


def _read_or_note(
    directory: Path, stage: str, notes: list[str], columns: list[str] | None = None
) -> pd.DataFrame | None:
    """The stage's rows; None when it was never run here, or (with a note saying why) when it cannot be trusted."""
    if not directory.is_dir():
        return None
    try:
        return read_stage(directory, stage, columns=columns).to_pandas()
    except UserError as err:
        notes.append(f"left out: {err}")
        return None


def _known_labels(rows: pd.DataFrame, folder: Path, notes: list[str]) -> pd.DataFrame:
    """The rows whose label is one of LABELS; the others are left out with a note that counts and names them."""
    known = rows["label"].isin(LABELS)
    if not known.all():
        unknown = rows.loc[~known, "label"]
        names = ", ".join(repr(name) for name in sorted(unknown.astype(str).unique()))
        notes.append(
            f"left out: {len(unknown)} annotation row(s) of {folder} with unknown label(s) {names} "
            f"(expected {', '.join(LABELS)})"
        )
    return rows[known]


def _with_response_probabilities(annotations: pd.DataFrame, turns: pd.DataFrame | None) -> pd.DataFrame:
    """The annotation rows with `teacher_prob` and `sampler_prob` in place of the teacher's per-token log-probs.

    A response's probability is the product over its tokens. Set side by side per label they show what a
    label meant in the data: a turn the judge skips because the teacher agrees with the student should
    have both high; one it marks weak, a student that was sure of what the teacher would not do.
    """
    probs = annotations.drop(columns="teacher_logprobs").assign(
        teacher_prob=[_response_probability(logprobs) for logprobs in annotations["teacher_logprobs"]]
    )
    if turns is None:
        return probs.assign(sampler_prob=float("nan"))
    sampler = turns[["episode_id", "turn"]].assign(
        sampler_prob=[_response_probability(logprobs) for logprobs in turns["sampler_logprobs"]]
    )
    return probs.merge(sampler, on=["episode_id", "turn"], how="left")


def _response_probability(logprobs: Sequence[float]) -> float:
    return math.exp(sum(logprobs))


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    frames = [frame for frame in frames if not frame.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
