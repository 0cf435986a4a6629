"""The annotate stage: for every student turn, the teacher's judgment and its per-token scores.

Reads a round's complete `turns` stage and writes `annotations` with the same parts: part i of the
annotations covers exactly the rows of part i of the turns, in the same order, so resume is per part
and a reader can join on (episode_id, turn) or simply zip the parts. The teacher model is loaded once
and shared by the scorer and the judge. Teacher and student must share a vocabulary: checked before
anything is written. The manifest names the teacher by the content hash of its folder, so a replaced
teacher at the same path is a changed input, not a reuse.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow.parquet as pq
import torch
from transformers import AutoConfig

from pipeline.backends.factory import Teacher, backend_provenance, load_teacher, stage_backend
from pipeline.backends.hf import load_tokenizer
from pipeline.checkpoints import check_model_dir, model_fingerprint
from pipeline.config import Config
from pipeline.errors import Interrupted, UserError
from pipeline.judges import Judgment, LikelihoodJudge, PromptJudge, RulesOnlyJudge, TurnJudge, judge_turns
from pipeline.locks import writer_lock
from pipeline.runs import RunLayout
from pipeline.schema import upgrade
from pipeline.sharding import ALL_PARTS, Sharding
from pipeline.shards import StageWriter, part_name, stage_fingerprint, verify_stage


@dataclass
class AnnotateResult:
    directory: Path
    turns: int = 0
    labels: Counter = field(default_factory=Counter)
    sources: Counter = field(default_factory=Counter)
    parts_written: int = 0
    parts_skipped: int = 0
    complete: bool = False


def check_same_vocabulary(student, teacher, student_name: str, teacher_name: str) -> None:
    """Per-token teacher scores only mean something over the student's own token ids."""
    problems = []
    if student.get_vocab() != teacher.get_vocab():
        problems.append(f"vocabularies differ ({len(student.get_vocab())} vs {len(teacher.get_vocab())} entries)")
    for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
        if getattr(student, name) != getattr(teacher, name):
            problems.append(f"{name} {getattr(student, name)} vs {getattr(teacher, name)}")
    if problems:
        raise UserError(
            f"teacher {teacher_name} and student {student_name} do not share a tokenizer: {'; '.join(problems)}"
        )


def judge_context(config: Config) -> int:
    """Tokens the teacher takes, request and answer: `sampling.max_model_len`, else its config's own limit."""
    return config.sampling.max_model_len or _text_config(config.models.teacher).max_position_embeddings


def head_rows(model: str) -> int:
    """Rows of a checkpoint's output head: its config's vocab_size, which may be padded past the tokenizer."""
    return _text_config(model).vocab_size


def _text_config(model: str) -> Any:
    """The language model's part of a checkpoint's config (the config itself for a text-only model)."""
    return AutoConfig.from_pretrained(model).get_text_config()


def scored_ids(student_rows: int, teacher_rows: int, student_name: str, teacher_name: str) -> int:
    """How many token ids the teacher scores: the student's head. Over one tokenizer, a teacher head with more
    rows (Qwen2.5-7B's 152,064 over 1.5B's 151,936) is cut to the student's, so every top-k id is one the
    student can score; a teacher head with fewer rows cannot score every id the student may sample."""
    if teacher_rows < student_rows:
        raise UserError(
            f"output heads differ (the tokenizers are the same): teacher {teacher_name} has {teacher_rows} rows, "
            f"fewer than student {student_name}'s {student_rows}, so it cannot score every id the student samples"
        )
    return student_rows


def episode_histories(rows: list[dict[str, Any]]) -> list[list[tuple[str, str]]]:
    """For each row, the (observation, action) pairs of its episode's earlier turns, oldest first."""
    by_episode: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_episode.setdefault(row["episode_id"], []).append(row)
    earlier = {
        (ep, t["turn"]): [(r["observation"], r["action"]) for r in turns if r["turn"] < t["turn"]]
        for ep, turns in by_episode.items()
        for t in turns
    }
    return [earlier[(row["episode_id"], row["turn"])] for row in rows]


def annotation_row(turn: dict[str, Any], judgment: Judgment, scores, teacher: str) -> dict[str, Any]:
    return {
        "run": turn["run"],
        "round": turn["round"],
        "episode_id": turn["episode_id"],
        "turn": turn["turn"],
        "label": judgment.label,
        "label_source": judgment.source,
        "rule_flags": list(judgment.flags),
        "judge_output": judgment.output,
        "teacher_logprobs": scores.teacher_logprobs.tolist(),
        "topk_ids": scores.topk_ids.tolist(),
        "topk_logprobs": scores.topk_logprobs.tolist(),
        "confidence": scores.confidence.tolist(),
        "teacher": teacher,
    }


class Annotator:
    """One teacher, one judge, one scorer: annotates lists of turn rows."""

    def __init__(self, config: Config, teacher_tokenizer, scored_ids: int | None = None) -> None:
        teacher = load_teacher(config, teacher_tokenizer, scored_ids)
        self.teacher = config.models.teacher
        self.batch = config.annotate.turns_per_batch
        self.scorer = teacher.scorer
        self.judge = self._build_judge(config, teacher, teacher_tokenizer)

    def _build_judge(self, config: Config, teacher: Teacher, tokenizer) -> TurnJudge:
        settings = config.annotate
        if settings.judge == "likelihood":
            return LikelihoodJudge(teacher.scorer, tokenizer, settings.strong_below, config.env.think)
        if settings.judge == "prompt":
            room = judge_context(config) - settings.judge_max_new_tokens
            return PromptJudge(teacher.generator, settings.judge_max_new_tokens, config.env.history, room)
        return RulesOnlyJudge()

    def annotate(
        self, rows: list[dict[str, Any]], on_batch: Callable[[int], None] | None = None
    ) -> list[dict[str, Any]]:
        histories = episode_histories(rows)
        out = []
        for start in range(0, len(rows), self.batch):
            batch = rows[start : start + self.batch]
            judgments = judge_turns(self.judge, batch, histories[start : start + self.batch])
            scores = self.scorer.score([(list(r["prompt_ids"]), list(r["response_ids"])) for r in batch])
            out += [annotation_row(r, j, s, self.teacher) for r, j, s in zip(batch, judgments, scores, strict=True)]
            if on_batch is not None:
                on_batch(len(batch))
        return out


class TurnProgress(Protocol):
    def begin(self, total: int) -> None: ...

    def advance(self, count: int = 1, note: str | None = None) -> None: ...


def run_annotate(
    config: Config,
    round_: int,
    sharding: Sharding = ALL_PARTS,
    force: bool = False,
    progress: TurnProgress | None = None,
) -> AnnotateResult:
    layout = RunLayout.of(config)
    turns_dir = layout.stage_dir(round_, "turns")
    turns_manifest = verify_stage(turns_dir, "turns")
    student_path = turns_manifest["models"]["tokenizer"]
    teacher_content = model_fingerprint(config.models.teacher)
    teacher_tokenizer = load_tokenizer(config.models.teacher)
    check_model_dir(student_path)
    check_same_vocabulary(load_tokenizer(student_path), teacher_tokenizer, student_path, config.models.teacher)
    teacher_rows = head_rows(config.models.teacher)
    scored = scored_ids(head_rows(student_path), teacher_rows, student_path, config.models.teacher)

    num_parts = turns_manifest["num_parts"]
    directory = layout.stage_dir(round_, config.annotate.out)
    with writer_lock(directory, (sharding.index, sharding.count)):
        writer = StageWriter(
            directory,
            "annotations",
            num_parts=num_parts,
            force=force,
            config={
                "annotate": asdict(config.annotate),
                "think": config.env.think,
                "history": config.env.history,
                "dtype": config.sampling.dtype,
                "backend": config.sampling.backend,
                # scored_ids < head_rows: the teacher's distribution was cut to the student's ids (padded head)
                "teacher_vocab": {"head_rows": teacher_rows, "scored_ids": scored},
            },
            inputs={"turns": stage_fingerprint(turns_dir, "turns"), "teacher": teacher_content},
            models={"teacher": config.models.teacher, "student_tokenizer": student_path},
            provenance=backend_provenance(config),
        )
        mine = [i for i in range(num_parts) if sharding.owns(i)]
        todo = writer.pending(mine)
        result = AnnotateResult(writer.directory, parts_skipped=len(mine) - len(todo))
        if todo:
            try:
                _annotate_parts(
                    config, turns_dir, turns_manifest, teacher_tokenizer, scored, todo, writer, result, progress
                )
            except KeyboardInterrupt:
                kept = num_parts - len(writer.pending(range(num_parts)))
                raise Interrupted(
                    f"annotate of round {round_} interrupted: {kept} of {num_parts} parts are kept in {directory}; "
                    "run the same command again to annotate the rest"
                ) from None
        result.complete = writer.finalize()
    return result


def _annotate_parts(
    config: Config,
    turns_dir: Path,
    turns_manifest: dict[str, Any],
    teacher_tokenizer,
    scored: int,
    todo: list[int],
    writer: StageWriter,
    result: AnnotateResult,
    progress: TurnProgress | None,
) -> None:
    if config.runtime.threads:
        torch.set_num_threads(config.runtime.threads)
    with stage_backend(config):
        annotator = Annotator(config, teacher_tokenizer, scored)
        if progress is not None:
            progress.begin(sum(turns_manifest["parts"][part_name(i)]["rows"] for i in todo))
        for index in todo:
            tick = time.perf_counter()
            part = pq.read_table(turns_dir / part_name(index))
            rows = upgrade(part, "turns", turns_manifest["schema_version"]).to_pylist()
            annotations = annotator.annotate(rows, progress.advance if progress is not None else None)
            writer.write_part(index, annotations, seconds=time.perf_counter() - tick)
            result.parts_written += 1
            result.turns += len(annotations)
            result.labels.update(a["label"] for a in annotations)
            result.sources.update(a["label_source"] for a in annotations)
