"""Annotate benchmarks: scoring throughput against a bare forward pass, and bytes stored per token."""

from __future__ import annotations

import time

import torch

from bench.table import Row
from pipeline.annotate import run_annotate
from pipeline.backends.hf_score import HFScorer, pack_batches


def scoring_throughput(model, rows: list[dict], k: int, max_tokens_per_batch: int) -> Row:
    """Teacher scoring tokens/s over a plain batched `model(...)` forward on the same batches.

    The bare pass is what scoring costs at least: the same padded batches through the whole model,
    returning logits and nothing else. Ours adds the log-softmax, top-k and the copy to numpy.
    """
    items = [(list(r["prompt_ids"]), list(r["response_ids"])) for r in rows]
    tokens = sum(len(p) + len(r) for p, r in items)
    scorer = HFScorer(model, k=k, max_tokens_per_batch=max_tokens_per_batch)
    sequences = [p + r for p, r in items]
    ours, bare = [], []
    for _ in range(2):  # alternate, keep each one's best: neither pays the other's warm-up
        ours.append(timed(lambda: scorer.score(items)))
        bare.append(timed(lambda: bare_forward(model, sequences, max_tokens_per_batch)))
    ours, bare = min(ours), min(bare)
    ratio = bare / ours
    return Row(
        "annotate scoring throughput",
        ratio,
        ">= 0.80",
        ratio >= 0.8,
        f"{tokens / ours:,.0f} vs bare forward {tokens / bare:,.0f} tokens/s over {len(items)} turns, k={k}",
    )


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
