"""The one place that reads `sampling.backend`: stages ask for a generator or a teacher, never for a backend.

A `Generator` samples responses (rollout, eval, the prompt judge); a `Teacher` is a scorer and a
generator on one loaded model (annotate: per-token scores, the likelihood and prompt judges). `hf`
loads the checkpoint with transformers; `vllm` uses the process's engine for the model and is imported
only when chosen, so nothing else needs vLLM installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from pipeline.backends.hf import Generation, HFGenerator, load_causal_lm, resolve_device, resolve_dtype
from pipeline.backends.hf_score import HFScorer, TokenScores
from pipeline.config import Config
from pipeline.provenance import provenance


class Generator(Protocol):
    tokenizer: Any

    def generate(
        self,
        prompts: list[list[int]],
        *,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int,
        allowed: list[list[list[int]]] | None = None,
    ) -> list[Generation]:
        """One response per prompt (token ids); the same `seed` and batch give the same responses.

        `allowed`, when given, holds per prompt the token sequences the response must be one of
        (`sampling.admissible_only`; an empty list leaves that prompt free).
        """
        ...


class Scorer(Protocol):
    def score(self, items: list[tuple[list[int], list[int]]]) -> list[TokenScores]:
        """Teacher log-probs, top-k and confidence of each (prompt_ids, response_ids) item's response tokens."""
        ...

    def action_scores(self, prompt_ids: list[int], candidates: list[list[int]]) -> list[float]:
        """Length-normalized log-prob of each candidate continuation of the prompt."""
        ...


@dataclass
class Teacher:
    scorer: Scorer
    generator: Generator


def load_generator(config: Config, model: str, tokenizer) -> Generator:
    """A generator for the checkpoint folder `model` on the configured backend."""
    if config.sampling.backend == "vllm":
        from pipeline.backends.vllm import VLLMGenerator, engine_for

        return VLLMGenerator(engine_for(config, model), tokenizer, model)
    return HFGenerator(load_hf_model(config, model), tokenizer)


def load_teacher(config: Config, tokenizer, scored_ids: int | None = None) -> Teacher:
    """`models.teacher` loaded once, its scorer and generator sharing the model (or the engine). `scored_ids`
    (see `annotate.scored_ids`) cuts the teacher's distribution to the first ids of its head; None keeps all."""
    model, settings = config.models.teacher, config.annotate
    if config.sampling.backend == "vllm":
        from pipeline.backends.vllm import VLLMGenerator, VLLMScorer, engine_for

        engine = engine_for(config, model)
        scorer = VLLMScorer(engine, k=settings.topk, scored_ids=scored_ids)
        return Teacher(scorer, VLLMGenerator(engine, tokenizer, model))
    loaded = load_hf_model(config, model)
    scorer = HFScorer(
        loaded, k=settings.topk, max_tokens_per_batch=settings.max_tokens_per_batch, scored_ids=scored_ids
    )
    return Teacher(scorer, HFGenerator(loaded, tokenizer))


@contextmanager
def stage_backend(config: Config) -> Iterator[None]:
    """A stage's models live inside: vLLM engines it started are shut down at the end (hf models are just freed)."""
    if config.sampling.backend != "vllm":
        yield
        return
    from pipeline.backends.vllm import stage_engines

    with stage_engines():
        yield


def load_hf_model(config: Config, model: str):
    """A checkpoint through transformers on `sampling.device` / `sampling.dtype` (what `hf` stages use)."""
    device = resolve_device(config.sampling.device)
    return load_causal_lm(model, device, resolve_dtype(config.sampling.dtype, device))


def backend_provenance(config: Config) -> dict[str, Any]:
    """The provenance of a stage whose models run on this backend: both backends place them on
    `sampling.device` in `sampling.dtype`, resolved the same way."""
    device = resolve_device(config.sampling.device)
    return provenance(device, resolve_dtype(config.sampling.dtype, device))
