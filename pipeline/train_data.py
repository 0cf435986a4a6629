"""Training examples: turns joined with their annotations, cut into optimizer batches, weighted once per batch.

The weights of SAGE-OPD are normalized over one whole optimizer batch (w̃ = w·N/Σw, DESIGN §1 step 5). So
they are computed here, before the trainer splits a batch into micro-batches (gradient accumulation, data
parallel ranks): each example carries its final per-token weights and N of its optimizer batch, and the
trainer divides every micro-batch by that same N. The micro-batch split then cannot change the gradient.
That holds only if the trainer reads the examples in the order given here, which it does (no shuffling
there; the shuffle happens here, seeded).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from pipeline import losses
from pipeline.config import TrainConfig
from pipeline.errors import UserError

LABELS = losses.LABEL_NAMES
UNLABELED = "none"  # the label of a turn trained without annotations (sft on expert or teacher rollouts)


def world_batch_size(cfg: TrainConfig, num_processes: int = 1) -> int:
    """Rows per optimizer step over all ranks: per-device batch × gradient accumulation × processes."""
    return cfg.per_device_batch_size * cfg.gradient_accumulation_steps * num_processes


def with_fillers(examples: list[dict[str, Any]], world_batch: int) -> list[dict[str, Any]]:
    """`examples` padded to a whole number of optimizer batches with filler rows that weigh 0 and count nowhere.

    Under data parallelism every rank must get whole micro-batches: accelerate fills a short last step
    with rows from the start of the data (`even_batches`), which carry their own weights and N and so
    change the gradient. A filler is a copy of the last row (same length, same N) with zero weights and
    `filler` set: its loss and gradient are 0, and the trainer's logs leave it out of every count.
    """
    short = -len(examples) % world_batch
    if not short:
        return examples
    last = examples[-1]
    filler = {**last, "weights": [0.0] * len(last["weights"]), "gain": 0.0, "batch_first": False, "filler": True}
    return [*({**example, "filler": False} for example in examples), *(dict(filler) for _ in range(short))]


def build_examples(
    turns: Sequence[dict[str, Any]],
    annotations: Sequence[dict[str, Any]] | None,
    cfg: TrainConfig,
    *,
    world_batch: int,
    seed: int,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Examples in optimizer-batch order (rows [s·world_batch, (s+1)·world_batch) are step s) and their stats.

    Each example holds `input_ids` (prompt + response), `response_start`, `weights` (one per response
    token, final), what `cfg.loss` needs among `sampler_logprobs`, `teacher_logprobs`, `topk_ids` and
    `topk_logprobs`, and bookkeeping for the trainer's logs: `batch_index`, `batch_tokens` (N of its
    optimizer batch), `batch_first`, `batch_skipped`, `gain`, `label`, and the turn's key (`episode_id`,
    `turn`).

    `annotations` may be None only for `loss == "sft"`: every turn then has weight 1. A turn without an
    annotation, or an annotation without its turn, is a UserError. Turns with an empty response are left
    out (nothing to train on).
    """
    if world_batch < 1:
        raise ValueError(f"world_batch must be at least 1, not {world_batch}")
    if annotations is None and cfg.loss != "sft":
        raise UserError(f"loss {cfg.loss} needs the teacher's annotations: run `sage-opd annotate` first")
    rows = _join(turns, annotations)
    empty = sum(not row[0]["response_ids"] for row in rows)
    rows = [row for row in rows if row[0]["response_ids"]]
    rows.sort(key=lambda row: (row[0]["episode_id"], int(row[0]["turn"])))
    random.Random(seed).shuffle(rows)

    examples: list[dict[str, Any]] = []
    skipped_batches = 0
    for index, start in enumerate(range(0, len(rows), world_batch)):
        batch = [_example(turn, note, cfg) for turn, note in rows[start : start + world_batch]]
        skipped = _weigh_batch(batch, annotations is not None, cfg)
        skipped_batches += skipped
        tokens = sum(len(example["weights"]) for example in batch)
        for position, example in enumerate(batch):
            example.update(batch_index=index, batch_tokens=tokens, batch_first=position == 0, batch_skipped=skipped)
        examples.extend(batch)
    return examples, _stats(examples, empty, skipped_batches)


def _join(
    turns: Sequence[dict[str, Any]], annotations: Sequence[dict[str, Any]] | None
) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    by_key = _index(turns, "turn")
    if annotations is None:
        return [(turn, None) for turn in by_key.values()]
    notes = _index(annotations, "annotation")
    if missing := [key for key in by_key if key not in notes]:
        raise UserError(
            f"{len(missing)} turn(s) have no annotation, e.g. episode {missing[0][0]!r} turn {missing[0][1]}: "
            "the annotations belong to other turns; rerun `sage-opd annotate` with --force"
        )
    if extra := [key for key in notes if key not in by_key]:
        raise UserError(
            f"{len(extra)} annotation(s) have no turn, e.g. episode {extra[0][0]!r} turn {extra[0][1]}: "
            "the annotations belong to other turns; rerun `sage-opd annotate` with --force"
        )
    joined = []
    for key, turn in by_key.items():
        note = notes[key]
        n = len(turn["response_ids"])
        for column in ("teacher_logprobs", "topk_ids", "topk_logprobs", "confidence"):
            if len(note[column]) != n:
                raise UserError(
                    f"annotation of episode {key[0]!r} turn {key[1]} has {len(note[column])} {column} for "
                    f"{n} response tokens: rerun `sage-opd annotate` with --force"
                )
        joined.append((turn, note))
    return joined


def _index(rows: Sequence[dict[str, Any]], what: str) -> dict[tuple[str, int], dict[str, Any]]:
    indexed: dict[tuple[str, int], dict[str, Any]] = {}
    for row in rows:
        key = (row["episode_id"], int(row["turn"]))
        if key in indexed:
            raise UserError(f"{what} of episode {key[0]!r} turn {key[1]} appears twice: its shards overlap")
        indexed[key] = row
    return indexed


def _example(turn: dict[str, Any], note: dict[str, Any] | None, cfg: TrainConfig) -> dict[str, Any]:
    prompt, response = list(turn["prompt_ids"]), list(turn["response_ids"])
    if not prompt:  # the first response token must be predicted from something
        raise UserError(f"turn {turn['turn']} of episode {turn['episode_id']!r} has an empty prompt")
    example: dict[str, Any] = {
        "episode_id": turn["episode_id"],
        "turn": int(turn["turn"]),
        "input_ids": prompt + response,
        "response_start": len(prompt),
        "label": UNLABELED if note is None else note["label"],
    }
    if cfg.loss == "rkl":
        example["sampler_logprobs"] = [float(x) for x in turn["sampler_logprobs"]]
    if note is not None:
        example["teacher_logprobs"] = [float(x) for x in note["teacher_logprobs"]]
        example["confidence"] = [float(x) for x in note["confidence"]]  # dropped once weighed
        if cfg.loss.startswith("topk_"):
            example["topk_ids"] = [list(ids) for ids in note["topk_ids"]]
            example["topk_logprobs"] = [[float(x) for x in lps] for lps in note["topk_logprobs"]]
    return example


def _weigh_batch(batch: list[dict[str, Any]], annotated: bool, cfg: TrainConfig) -> bool:
    """Set `weights` and `gain` of every example of one optimizer batch; return whether Σw = 0."""
    lengths = [len(example["input_ids"]) - example["response_start"] for example in batch]
    mask = torch.arange(max(lengths)).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    if annotated:
        gains = losses.label_gains(
            [example["label"] for example in batch],
            alpha=cfg.alpha,
            turn_selection=cfg.turn_selection,
            binary=cfg.binary_labels,
        )
        confidence = torch.zeros(mask.shape, dtype=torch.float32)
        for row, example in enumerate(batch):
            confidence[row, : lengths[row]] = torch.tensor(example.pop("confidence"), dtype=torch.float32)
        weights = losses.token_weights(gains, confidence, mask, cfg.confidence)
    else:
        gains = torch.ones(len(batch))
        weights = mask.to(torch.float32)
    if cfg.normalize:
        weights, skipped = losses.normalize_weights(weights, mask)
    else:
        weights = weights * mask
        skipped = bool(weights.sum().item() == 0)
    for row, example in enumerate(batch):
        example["weights"] = weights[row, : lengths[row]].tolist()
        example["gain"] = float(gains[row])
    return skipped


def _stats(examples: list[dict[str, Any]], empty: int, skipped_batches: int) -> dict[str, Any]:
    """Plain numbers (JSON-ready) describing the training set."""
    counts = Counter(example["label"] for example in examples)
    labels = {name: counts.get(name, 0) for name in LABELS}
    if counts.get(UNLABELED):
        labels[UNLABELED] = counts[UNLABELED]
    tokens = sum(len(example["weights"]) for example in examples)
    nonzero = sum(sum(w != 0 for w in example["weights"]) for example in examples)
    batches = len({example["batch_index"] for example in examples})
    return {
        "turns": len(examples),
        "empty_responses_dropped": empty,
        "labels": labels,
        "skipped_turn_fraction": sum(example["gain"] == 0 for example in examples) / max(len(examples), 1),
        "tokens": tokens,
        "nonzero_weight_fraction": nonzero / max(tokens, 1),
        "batches": batches,
        "skipped_batches": skipped_batches,
    }
