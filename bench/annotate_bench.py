"""Annotate benchmarks: scoring throughput per backend against a bare forward pass, and bytes stored per token."""

from __future__ import annotations

import math
import time
from functools import partial

import torch

from bench.table import Row
from pipeline.annotate import run_annotate
from pipeline.backends.factory import Scorer
from pipeline.backends.hf_score import HFScorer, pack_batches

NO_PREFIX_REUSE = "hf without prefix reuse"


def hf_scorers(model, config) -> dict[str, HFScorer]:
    """The `hf` scorer as annotate builds it, and the same without reusing the prompts' shared prefix."""
    settings = dict(k=config.annotate.topk, max_tokens_per_batch=config.annotate.max_tokens_per_batch)
    return {
        "hf": HFScorer(model, **settings),
        NO_PREFIX_REUSE: HFScorer(model, **settings, reuse_prefix=False),
    }


def scoring_rows(scorers: dict[str, Scorer], model, rows: list[dict], config) -> list[Row]:
    """Teacher scoring tokens/s of each scorer over a plain batched `model(...)` forward, on the same turns
    in the same groups of `annotate.turns_per_batch`, plus what reusing the shared prompt prefix saves.

    The bare pass is what scoring costs without any of its work: the same turns through the whole model,
    returning logits and nothing else (no log-softmax, top-k or copy to numpy; no prefix reuse either).
    Each contender runs twice, alternating, and keeps its best time: none pays another's warm-up.
    """
    items = [(list(r["prompt_ids"]), list(r["response_ids"])) for r in rows]
    step, budget = config.annotate.turns_per_batch, config.annotate.max_tokens_per_batch
    groups = [items[start : start + step] for start in range(0, len(items), step)]
    work = {"bare forward": lambda: [bare_forward(model, [p + r for p, r in g], budget) for g in groups]}
    work |= {name: partial(_score_groups, scorer, groups) for name, scorer in scorers.items()}
    best = dict.fromkeys(work, math.inf)
    for _ in range(2):
        for name, run in work.items():
            best[name] = min(best[name], timed(run))
    tokens = sum(len(p) + len(r) for p, r in items)
    what = f"{len(items)} turns, {tokens:,} tokens, k={config.annotate.topk}"
    table = [
        _speed_row(f"annotate scoring tokens/s, {name} / bare forward", best["bare forward"], best[name], 0.8, what)
        for name in scorers
        if name != NO_PREFIX_REUSE
    ]
    if NO_PREFIX_REUSE in scorers:
        name = "annotate scoring, hf prefix reuse: speed-up"
        table.append(_speed_row(name, best[NO_PREFIX_REUSE], best["hf"], 1.0, what))
    return table


def _score_groups(scorer: Scorer, groups: list[list[tuple[list[int], list[int]]]]) -> None:
    for group in groups:
        scorer.score(group)


def _speed_row(name: str, base_seconds: float, seconds: float, target: float, what: str) -> Row:
    """`base_seconds / seconds` as a row: how much faster than the base (below 1: slower)."""
    ratio = base_seconds / seconds
    return Row(name, ratio, f">= {target:.2f}", ratio >= target, f"{seconds:.2f}s vs {base_seconds:.2f}s over {what}")


def timed(work) -> float:
    tick = time.perf_counter()
    work()
    return time.perf_counter() - tick


@torch.inference_mode()
def bare_forward(model, sequences: list[list[int]], max_tokens_per_batch: int) -> None:
    for batch in pack_batches([len(s) for s in sequences], max_tokens_per_batch):
        width = max(len(sequences[i]) for i in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, index in enumerate(batch):
            ids[row, : len(sequences[index])] = torch.tensor(sequences[index])
            mask[row, : len(sequences[index])] = 1
        model(input_ids=ids, attention_mask=mask).logits.float()


def annotation_storage(config, round_: int, response_tokens: int) -> Row:
    """Bytes of annotation Parquet per response token, with the stage's real writer and settings."""
    tick = time.perf_counter()
    result = run_annotate(config, round_, force=True)
    seconds = time.perf_counter() - tick
    size = sum(p.stat().st_size for p in result.directory.glob("part-*.parquet"))
    per_token = size / response_tokens
    return Row(
        f"annotation bytes per token (k={config.annotate.topk})",
        per_token,
        "<= 200",
        per_token <= 200,
        f"{size:,} B for {response_tokens:,} response tokens; annotate stage ({config.annotate.judge} judge) "
        f"{result.turns} turns in {seconds:.1f}s",
    )
