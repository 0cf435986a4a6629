"""Training examples: turns joined with their annotations, cut into optimizer batches, weighted once per batch.

The weights of SAGE-OPD are normalized over one whole optimizer batch (w̃ = w·N/Σw, DESIGN §1 step 5). So
they are computed here, before the trainer splits a batch into micro-batches (gradient accumulation, data
parallel ranks): each example carries its final per-token weights and N of its optimizer batch, and the
trainer divides every micro-batch by that same N. The micro-batch split then cannot change the gradient.
That holds only if the trainer reads the examples in the order given here, which it does (no shuffling
there; the shuffle happens here, seeded).

A round stays Arrow from its Parquet parts to the trainer, so memory does not grow with the round:
`round_data` memory-maps the parts through `datasets`, only the columns the loss reads; the join and the
shuffle look at the keys alone; and one batched `map` whose batch is one optimizer batch gathers that
batch's rows, weighs them and appends them to an Arrow file, which the trainer then reads row by row.
Python holds one optimizer batch at a time, whatever the number of turns.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from pipeline import losses
from pipeline.config import TrainConfig
from pipeline.errors import UserError
from pipeline.schema import schema_for
from pipeline.shards import stage_parts

LABELS = losses.LABEL_NAMES
UNLABELED = "none"  # the label of a turn trained without annotations (sft on expert or teacher rollouts)
KEY = ("episode_id", "turn")
PER_TOKEN_NOTES = ("teacher_logprobs", "topk_ids", "topk_logprobs", "confidence")  # one entry per response token
EXAMPLES_FILE = "examples.arrow"  # in build_examples' cache_dir

# Turns or annotations: a `datasets.Dataset` (memory-mapped when read by `round_data`) or, for small sets
# (warm starts, tests), a list of row dicts.
Rows = datasets.Dataset | Sequence[Mapping[str, Any]]


def turn_columns(loss: str) -> list[str]:
    """The turns' columns that training with `loss` reads."""
    return [*KEY, "prompt_ids", "response_ids", *(["sampler_logprobs"] if loss == "rkl" else [])]


def note_columns(loss: str) -> list[str]:
    """The annotations' columns that training with `loss` reads (the top-k only for the top-k losses)."""
    return [
        *KEY,
        "label",
        "confidence",
        "teacher_logprobs",
        *(["topk_ids", "topk_logprobs"] if loss.startswith("topk_") else []),
    ]


def round_data(
    turns_dir: Path, annotations_dir: Path | None, loss: str, cache_dir: Path
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """The round's turns (and annotations, unless None) as datasets memory-mapped from Arrow files that
    `datasets` writes under `cache_dir` from the verified Parquet parts, with only the columns `loss` reads."""
    turns = stage_dataset(turns_dir, "turns", turn_columns(loss), cache_dir)
    notes = (
        None
        if annotations_dir is None
        else stage_dataset(annotations_dir, "annotations", note_columns(loss), cache_dir)
    )
    return turns, notes


def stage_dataset(directory: Path, stage: str, columns: list[str], cache_dir: Path) -> datasets.Dataset:
    parts = [str(part) for part in stage_parts(directory, stage)]
    features = datasets.Features.from_arrow_schema(pa.schema([schema_for(stage).field(name) for name in columns]))
    if not parts:
        return datasets.Dataset.from_dict({name: [] for name in columns}, features=features)
    with quiet_datasets():
        return datasets.Dataset.from_parquet(parts, columns=columns, features=features, cache_dir=str(cache_dir))


@contextmanager
def quiet_datasets() -> Iterator[None]:
    """No `datasets` progress bars ("Map", "Generating train split") on the console: the stage has its own."""
    was_enabled = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def world_batch_size(cfg: TrainConfig, num_processes: int = 1) -> int:
    """Rows per optimizer step over all ranks: per-device batch × gradient accumulation × processes."""
    return cfg.per_device_batch_size * cfg.gradient_accumulation_steps * num_processes


def with_fillers(examples: datasets.Dataset, world_batch: int) -> datasets.Dataset:
    """`examples` padded to a whole number of optimizer batches with filler rows that weigh 0 and count nowhere.

    Under data parallelism every rank must get whole micro-batches: accelerate fills a short last step
    with rows from the start of the data (`even_batches`), which carry their own weights and N and so
    change the gradient. A filler is a copy of the last row (same length, same N) with zero weights and
    `filler` set: its loss and gradient are 0, and the trainer's logs leave it out of every count.
    """
    short = -len(examples) % world_batch
    if not short:
        return examples
    last = examples[len(examples) - 1]
    filler = {**last, "weights": [0.0] * len(last["weights"]), "gain": 0.0, "batch_first": False, "filler": True}
    fillers = datasets.Dataset.from_list([filler] * short, features=examples.features)
    return datasets.concatenate_datasets([examples, fillers])


def build_examples(
    turns: Rows,
    annotations: Rows | None,
    cfg: TrainConfig,
    *,
    world_batch: int,
    seed: int,
    cache_dir: Path | None = None,
) -> tuple[datasets.Dataset, dict[str, Any]]:
    """Examples in optimizer-batch order (rows [s·world_batch, (s+1)·world_batch) are step s) and their stats.

    Each example holds the turn's `prompt_ids` and `response_ids`, `weights` (one per response token,
    final), what `cfg.loss` needs among `sampler_logprobs`, `teacher_logprobs`, `topk_ids` and
    `topk_logprobs`, and bookkeeping for the trainer's logs: `batch_index`, `batch_tokens` (N of its
    optimizer batch), `batch_first`, `batch_skipped`, `gain`, `label`, `filler` (False here, see
    `with_fillers`), and the turn's key (`episode_id`, `turn`).

    `annotations` may be None only for `loss == "sft"`: every turn then has weight 1. A turn without an
    annotation, or an annotation without its turn, is a UserError. Turns with an empty response are left
    out (nothing to train on). The examples are written to `cache_dir/examples.arrow` and memory-mapped
    from there, or kept in memory when `cache_dir` is None.
    """
    if world_batch < 1:
        raise ValueError(f"world_batch must be at least 1, not {world_batch}")
    if annotations is None and cfg.loss != "sft":
        raise UserError(f"loss {cfg.loss} needs the teacher's annotations: run `sage-opd annotate` first")
    turns = _as_dataset(turns, turn_columns(cfg.loss))
    notes = None if annotations is None else _as_dataset(annotations, note_columns(cfg.loss))
    pairs, empty = _join(turns, notes)
    random.Random(seed).shuffle(pairs)
    order = datasets.Dataset.from_dict(
        {"turn_row": [turn for turn, _ in pairs], "note_row": [note for _, note in pairs]},
        features=datasets.Features({"turn_row": datasets.Value("int64"), "note_row": datasets.Value("int64")}),
    )
    assemble = partial(
        _assemble_batch,
        turns=turns.with_format("arrow"),
        notes=None if notes is None else notes.with_format("arrow"),
        cfg=cfg,
        world_batch=world_batch,
    )
    with quiet_datasets():
        examples = order.with_format("arrow").map(
            assemble,
            batched=True,
            batch_size=world_batch,
            with_indices=True,
            remove_columns=["turn_row", "note_row"],
            keep_in_memory=cache_dir is None,
            cache_file_name=None if cache_dir is None else str(Path(cache_dir) / EXAMPLES_FILE),
            load_from_cache_file=False,
            new_fingerprint=f"sage-opd-examples-{seed}-{world_batch}",  # not a hash of the closure over the round
        )
    examples = examples.with_format(None)
    return examples, _stats(examples, empty)


def _as_dataset(rows: Rows, columns: list[str]) -> datasets.Dataset:
    """`rows` as a dataset of exactly `columns`; a missing column is a UserError naming it."""
    present = rows.column_names if isinstance(rows, datasets.Dataset) else (list(rows[0]) if rows else columns)
    if missing := [name for name in columns if name not in present]:
        raise UserError(f"training rows lack column(s) {', '.join(missing)}")
    if isinstance(rows, datasets.Dataset):
        return rows.select_columns(columns)
    return datasets.Dataset.from_dict({name: [row[name] for row in rows] for name in columns})


def arrow_column(rows: datasets.Dataset, name: str) -> pa.ChunkedArray:
    """One column as Arrow, without converting it to Python (zero-copy on a memory-mapped dataset)."""
    return rows.select_columns([name]).with_format("arrow")[:][name]


def _join(turns: datasets.Dataset, notes: datasets.Dataset | None) -> tuple[list[tuple[int, int]], int]:
    """(pairs of (turn row, annotation row or -1) sorted by key, count of empty responses left out).

    Only the keys and the list lengths are read: the joined rows themselves are gathered batch by batch."""
    turn_rows = _index(turns, "turn")
    lengths = pc.list_value_length(arrow_column(turns, "response_ids")).to_numpy(zero_copy_only=False)
    if notes is None:
        pairs = {key: (row, -1) for key, row in turn_rows.items()}
    else:
        note_rows = _index(notes, "annotation")
        if missing := [key for key in turn_rows if key not in note_rows]:
            raise UserError(
                f"{len(missing)} turn(s) have no annotation, e.g. episode {missing[0][0]!r} turn {missing[0][1]}: "
                "the annotations belong to other turns; rerun `sage-opd annotate` with --force"
            )
        if extra := [key for key in note_rows if key not in turn_rows]:
            raise UserError(
                f"{len(extra)} annotation(s) have no turn, e.g. episode {extra[0][0]!r} turn {extra[0][1]}: "
                "the annotations belong to other turns; rerun `sage-opd annotate` with --force"
            )
        pairs = {key: (row, note_rows[key]) for key, row in turn_rows.items()}
        _check_note_lengths(notes, pairs, lengths)
    kept = [(key, pair) for key, pair in pairs.items() if lengths[pair[0]]]
    kept.sort(key=lambda item: item[0])
    return [pair for _, pair in kept], len(pairs) - len(kept)


def _index(rows: datasets.Dataset, what: str) -> dict[tuple[str, int], int]:
    """{(episode_id, turn): row number}; a key seen twice is a UserError."""
    keys = zip(arrow_column(rows, "episode_id").to_pylist(), arrow_column(rows, "turn").to_pylist(), strict=True)
    indexed: dict[tuple[str, int], int] = {}
    for row, key in enumerate(keys):
        if key in indexed:
            raise UserError(f"{what} of episode {key[0]!r} turn {key[1]} appears twice: its shards overlap")
        indexed[key] = row
    return indexed


def _check_note_lengths(
    notes: datasets.Dataset, pairs: dict[tuple[str, int], tuple[int, int]], lengths: np.ndarray
) -> None:
    """Every per-token annotation column has one entry per response token of its turn."""
    keys = list(pairs)
    turn_rows = np.array([pairs[key][0] for key in keys], dtype=np.int64)
    note_rows = np.array([pairs[key][1] for key in keys], dtype=np.int64)
    for column in (name for name in PER_TOKEN_NOTES if name in notes.column_names):
        counts = pc.list_value_length(arrow_column(notes, column)).to_numpy(zero_copy_only=False)
        wrong = np.flatnonzero(counts[note_rows] != lengths[turn_rows])
        if wrong.size:
            first = wrong[0]
            key = keys[first]
            raise UserError(
                f"annotation of episode {key[0]!r} turn {key[1]} has {counts[note_rows[first]]} {column} for "
                f"{lengths[turn_rows[first]]} response tokens: rerun `sage-opd annotate` with --force"
            )


def _assemble_batch(
    order: pa.Table,
    positions: list[int],
    *,
    turns: datasets.Dataset,
    notes: datasets.Dataset | None,
    cfg: TrainConfig,
    world_batch: int,
) -> pa.Table:
    """One optimizer batch of examples (the rows `order` names, at `positions` in the final order), weighed."""
    rows = turns[order["turn_row"].to_pylist()]
    prompts = pc.list_value_length(rows["prompt_ids"]).to_numpy(zero_copy_only=False)
    if (prompts == 0).any():  # the first response token must be predicted from something
        row = int(np.flatnonzero(prompts == 0)[0])
        raise UserError(f"turn {rows['turn'][row]} of episode {rows['episode_id'][row]!r} has an empty prompt")
    lengths = pc.list_value_length(rows["response_ids"]).to_numpy(zero_copy_only=False)
    columns = {name: rows[name] for name in rows.column_names}
    if notes is None:
        labels = pa.array([UNLABELED] * rows.num_rows, pa.string())
        confidence = None
    else:
        annotated = notes[order["note_row"].to_pylist()]
        labels = annotated["label"]
        confidence = pc.list_flatten(annotated["confidence"]).to_numpy(zero_copy_only=False)
        columns |= {
            name: annotated[name] for name in annotated.column_names if name not in (*KEY, "label", "confidence")
        }
    weights, gains, skipped = _weigh_batch(labels.to_pylist(), confidence, lengths, cfg)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    size = rows.num_rows
    columns |= {
        "label": labels,
        "weights": pa.ListArray.from_arrays(pa.array(offsets), pa.array(weights, pa.float32())),
        "gain": pa.array(gains, pa.float32()),
        "batch_index": pa.array([positions[0] // world_batch] * size, pa.int64()),
        "batch_tokens": pa.array([int(lengths.sum())] * size, pa.int64()),
        "batch_first": pa.array([position % world_batch == 0 for position in positions]),
        "batch_skipped": pa.array([skipped] * size),
        "filler": pa.array([False] * size),
    }
    return pa.table(columns)


def _weigh_batch(
    labels: list[str], confidence: np.ndarray | None, lengths: np.ndarray, cfg: TrainConfig
) -> tuple[np.ndarray, np.ndarray, bool]:
    """(final weights of every response token, row after row; gain per turn; whether Σw = 0) for one optimizer
    batch. `confidence` holds the batch's confidences row after row, or is None for turns without annotations."""
    mask = torch.arange(int(lengths.max())).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    if confidence is not None:
        gains = losses.label_gains(labels, alpha=cfg.alpha, turn_selection=cfg.turn_selection, binary=cfg.binary_labels)
        padded = torch.zeros(mask.shape, dtype=torch.float32)
        padded[mask] = torch.tensor(confidence, dtype=torch.float32)  # row-major: row 0's tokens first
        weights = losses.token_weights(gains, padded, mask, cfg.confidence)
    else:
        gains = torch.ones(len(labels))
        weights = mask.to(torch.float32)
    if cfg.normalize:
        weights, skipped = losses.normalize_weights(weights, mask)
    else:
        weights = weights * mask
        skipped = bool(weights.sum().item() == 0)
    return weights[mask].numpy(), gains.numpy(), skipped


def _stats(examples: datasets.Dataset, empty: int) -> dict[str, Any]:
    """Plain numbers (JSON-ready) describing the training set, computed on its Arrow columns."""
    rows = len(examples)
    if not rows:
        return {
            "turns": 0,
            "empty_responses_dropped": empty,
            "labels": dict.fromkeys(LABELS, 0),
            "skipped_turn_fraction": 0.0,
            "tokens": 0,
            "nonzero_weight_fraction": 0.0,
            "batches": 0,
            "skipped_batches": 0,
        }
    table = examples.select_columns(["label", "weights", "gain", "batch_index", "batch_first", "batch_skipped"])
    table = table.with_format("arrow")[:]
    counts = {entry["values"]: entry["counts"] for entry in pc.value_counts(table["label"]).to_pylist()}
    labels = {name: counts.get(name, 0) for name in LABELS}
    if counts.get(UNLABELED):
        labels[UNLABELED] = counts[UNLABELED]
    weights = pc.list_flatten(table["weights"])
    tokens = len(weights)
    return {
        "turns": rows,
        "empty_responses_dropped": empty,
        "labels": labels,
        "skipped_turn_fraction": pc.sum(pc.equal(table["gain"], 0)).as_py() / rows,
        "tokens": tokens,
        "nonzero_weight_fraction": pc.sum(pc.not_equal(weights, 0)).as_py() / max(tokens, 1),
        "batches": pc.max(table["batch_index"]).as_py() + 1,
        "skipped_batches": pc.sum(pc.and_(table["batch_first"], table["batch_skipped"])).as_py(),
    }
