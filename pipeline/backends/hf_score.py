"""Teacher scoring on the `hf` backend: per-token log-probs, top-k and confidence, and action likelihoods.

Scoring (DESIGN §1 step 3) runs the transformer body once over a right-padded batch of (prompt, response)
sequences, then applies the LM head only at the positions that predict response tokens, a chunk of
positions at a time. The model's own forward would return [batch, seq, vocab] logits for every prompt
position; for 16 rows of 600 tokens and Qwen's 152k vocabulary that is ~6 GB in float32, almost all of it
thrown away. The chunked head holds one [chunk, vocab] float32 block at a time, sized to have no more
elements than the body's own [batch, seq, hidden] output, so scoring needs no more memory than the body.

Every turn of a round starts with the same system prompt, and the turns of one episode also share its task:
the rows of a batch whose prompts begin alike run that shared prefix once, with a KV cache, and continue
from copies of it (at least `MIN_SHARED_PREFIX` tokens; measured in `make bench`).

The likelihood judge (§1 step 2) scores the 30–50 admissible actions of a turn, which all share one long
prompt. The prompt is encoded once with a KV cache and the candidates continue from copies of that cache
as one right-padded batch: one prompt pass plus a few short candidate tokens, not 50 prompt passes.
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

MIN_SHARED_PREFIX = 16  # tokens: a shorter shared prefix is not worth a pass of its own


@dataclass
class TokenScores:
    """Teacher view of one response, aligned with its response_ids."""

    teacher_logprobs: np.ndarray  # [n] float32: log π_T(x_j | prefix) of each sampled response token
    topk_ids: np.ndarray  # [n, k] int32: teacher's top-k token ids, sorted by log-prob descending
    topk_logprobs: np.ndarray  # [n, k] float32: their log-probs (full-vocab log-softmax, temperature 1)
    confidence: np.ndarray  # [n] float32: top-1 teacher probability = exp(topk_logprobs[:, 0])


def head_chunk_positions(max_tokens_per_batch: int, hidden_size: int, vocab_size: int) -> int:
    """How many positions the LM head scores at once.

    The [chunk, vocab] float32 block then has no more elements than the body's [batch, seq, hidden] output
    for a full batch of `max_tokens_per_batch` tokens; at least one position, whatever the vocabulary.
    """
    return max(1, max_tokens_per_batch * hidden_size // vocab_size)


def pack_batches(lengths: Sequence[int], max_tokens_per_batch: int) -> list[list[int]]:
    """Indices into `lengths`, grouped so that each group's rows × longest length ≤ `max_tokens_per_batch`.

    Longest first, so rows of similar length share a batch and little is padding; a row longer than the
    budget gets a batch of its own.
    """
    batches: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_tokens_per_batch:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


class HFScorer:
    """Teacher scoring with one causal LM (any device and dtype); reused for every batch of a stage."""

    def __init__(
        self, model, *, k: int, max_tokens_per_batch: int, scored_ids: int | None = None, reuse_prefix: bool = True
    ) -> None:
        self.model = model
        self.body = model.get_decoder()
        self.head = model.get_output_embeddings()
        rows = self.head.out_features
        if scored_ids is not None and not 1 <= scored_ids <= rows:
            raise ValueError(f"scored_ids must be between 1 and the teacher's {rows} head rows, got {scored_ids}.")
        # Log-softmax, top-k and action scores over the first `vocab_size` ids: the whole head, or the part of a
        # padded head that the student has (the rows past it are cut before the softmax, not after).
        self.vocab_size = rows if scored_ids is None else scored_ids
        if not 1 <= k <= self.vocab_size:
            raise ValueError(f"top-k must be between 1 and the teacher's vocabulary size {self.vocab_size}, got {k}.")
        if max_tokens_per_batch < 1:
            raise ValueError(f"max_tokens_per_batch must be a positive number of tokens, got {max_tokens_per_batch}.")
        _require_plain_head(model.config)
        self.k = k
        self.max_tokens_per_batch = max_tokens_per_batch
        self.chunk_positions = head_chunk_positions(max_tokens_per_batch, self.head.in_features, self.vocab_size)
        self.device = next(model.parameters()).device
        self.cache_name = cache_argument(self.body)
        self.reuse_prefix = reuse_prefix

    @torch.inference_mode()
    def score(self, items: list[tuple[list[int], list[int]]]) -> list[TokenScores]:
        """Teacher log-probs, top-k and confidence of every response token; items are (prompt_ids, response_ids)."""
        require_prompts(items)
        results = [empty_scores(self.k) for _ in items]
        active = [i for i, (_, response) in enumerate(items) if response]
        for group in pack_batches([len(items[i][0]) + len(items[i][1]) for i in active], self.max_tokens_per_batch):
            batch = [active[g] for g in group]
            for index, scores in zip(batch, self._score_batch([items[i] for i in batch]), strict=True):
                results[index] = scores
        return results

    @torch.inference_mode()
    def action_scores(self, prompt_ids: list[int], candidates: list[list[int]]) -> list[float]:
        """Length-normalized log-prob of each candidate continuation: Σ_j log π(c_j | prompt, c_<j) / len(c)."""
        if not candidates:
            return []
        require_candidates(prompt_ids, candidates)
        prompt = self.body(input_ids=torch.tensor([prompt_ids], device=self.device), use_cache=True)
        first = torch.log_softmax(self._logits(prompt.last_hidden_state[0, -1:]), dim=-1)[0]
        totals = first[torch.tensor([c[0] for c in candidates], device=self.device)]
        lengths = [len(prompt_ids) + len(c) - 1 for c in candidates]
        for group in pack_batches(lengths, self.max_tokens_per_batch):
            rest = self._continuation_logprobs(
                getattr(prompt, self.cache_name), len(prompt_ids), [candidates[i] for i in group]
            )
            totals[group] += rest
        sizes = torch.tensor([len(c) for c in candidates], device=self.device)
        return (totals / sizes).tolist()

    def _score_batch(self, items: list[tuple[list[int], list[int]]]) -> list[TokenScores]:
        """One body pass over a right-padded batch (after one over the prompts' shared prefix, if any); the
        head only where a response token is predicted."""
        shared = self._shared_prefix([prompt for prompt, _ in items])
        cache = None
        if shared:
            prefix = torch.tensor([items[0][0][:shared]], device=self.device)
            cache = getattr(self.body(input_ids=prefix, use_cache=True), self.cache_name)
            cache.batch_repeat_interleave(len(items))
        hidden = self._continue(cache, shared, [prompt[shared:] + response for prompt, response in items])
        rows, cols, targets = _prediction_sites(
            [(len(prompt) - shared, response) for prompt, response in items], self.device
        )
        sampled, top_ids, top_logprobs = [], [], []
        for block, span in self._log_softmax_blocks(hidden[rows, cols]):
            sampled.append(block.gather(-1, targets[span, None]).squeeze(-1))
            values, indices = block.topk(self.k, dim=-1, sorted=True)
            top_logprobs.append(values)
            top_ids.append(indices.to(torch.int32))
        ends = np.cumsum([len(response) for _, response in items])[:-1]
        columns = [torch.cat(parts).cpu().numpy() for parts in (sampled, top_ids, top_logprobs)]
        return [token_scores(*parts) for parts in zip(*(np.split(c, ends) for c in columns), strict=True)]

    def _continuation_logprobs(self, prompt_cache, prompt_len: int, candidates: list[list[int]]) -> torch.Tensor:
        """Σ_{j≥1} log π(c_j | prompt, c_<j) per candidate, continuing one batch from a copy of the prompt cache."""
        inputs = [c[:-1] for c in candidates]  # the last token is only ever predicted, never a context
        if not any(inputs):
            return torch.zeros(len(candidates), device=self.device)
        cache = copy.deepcopy(prompt_cache)  # the forward extends the cache it is given; keep the prompt's intact
        cache.batch_repeat_interleave(len(candidates))
        hidden = self._continue(cache, prompt_len, inputs)
        rows, cols, targets = _prediction_sites([(1, c[1:]) for c in candidates], self.device)
        blocks = self._log_softmax_blocks(hidden[rows, cols])
        picked = torch.cat([block.gather(-1, targets[span, None]).squeeze(-1) for block, span in blocks])
        return torch.zeros(len(candidates), device=self.device).index_add_(0, rows, picked)

    def _shared_prefix(self, prompts: list[list[int]]) -> int:
        """How many leading tokens every prompt has in common, short of each one's last token (it predicts
        the first response token, so it must be in the batch); 0 when reuse is off or not worth it."""
        if not self.reuse_prefix or len(prompts) < 2:
            return 0
        shared = min(len(os.path.commonprefix(prompts)), min(len(p) for p in prompts) - 1)
        return shared if shared >= MIN_SHARED_PREFIX else 0

    def _continue(self, cache, prefix_len: int, sequences: list[list[int]]) -> torch.Tensor:
        """[rows, longest, hidden] body states of right-padded `sequences`, each continuing the `prefix_len`
        tokens held in `cache` (one copy per row), or starting the text when `cache` is None."""
        ids, mask = _right_pad(sequences, self.device)
        positions = prefix_len + torch.arange(ids.shape[1], device=self.device).expand_as(ids)
        if cache is None:
            return self.body(
                input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False
            ).last_hidden_state
        attention = torch.cat([torch.ones(len(sequences), prefix_len, dtype=mask.dtype, device=self.device), mask], 1)
        hidden = self.body(
            input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True, **{self.cache_name: cache}
        )
        return hidden.last_hidden_state

    def _log_softmax_blocks(self, hidden: torch.Tensor) -> Iterator[tuple[torch.Tensor, slice]]:
        """Float32 log-softmax of the LM head over [positions, hidden] states, `chunk_positions` rows at a time."""
        for start in range(0, hidden.shape[0], self.chunk_positions):
            span = slice(start, start + self.chunk_positions)
            yield torch.log_softmax(self._logits(hidden[span]), dim=-1), span

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits of the scored ids."""
        return self.head(hidden)[..., : self.vocab_size].float()


def cache_argument(body) -> str:
    """The KV-cache keyword of this transformers release: `cache` now, `past_key_values` before the rename.

    Passing the wrong one is silently swallowed by `**kwargs`, and candidates would be scored without
    their prompt, so the name is read off the model's own signature rather than assumed.
    """
    return "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"


def _right_pad(sequences: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """[rows, longest] ids (padding with id 0, which the mask hides) and the attention mask."""
    width = max(len(s) for s in sequences)
    ids = torch.zeros((len(sequences), width), dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        mask[row, : len(sequence)] = 1
    return ids.to(device), mask.to(device)


def _prediction_sites(
    rows: list[tuple[int, list[int]]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row, position, target) of every predicted token, for rows of (context length, tokens to predict).

    Token j of a row is predicted at position context_len + j − 1.
    """
    row_ids = [row for row, (_, tokens) in enumerate(rows) for _ in tokens]
    positions = [context + j - 1 for context, tokens in rows for j in range(len(tokens))]
    targets = [token for _, tokens in rows for token in tokens]
    return tuple(torch.tensor(values, dtype=torch.long, device=device) for values in (row_ids, positions, targets))


def token_scores(sampled: np.ndarray, top_ids: np.ndarray, top_logprobs: np.ndarray) -> TokenScores:
    """One response's arrays, with the confidence derived from the top-1 log-prob (shared by every backend)."""
    return TokenScores(sampled, top_ids, top_logprobs, confidence=np.exp(top_logprobs[:, 0]))


def empty_scores(k: int) -> TokenScores:
    """The scores of an empty response: arrays of shape [0] and [0, k]."""
    return token_scores(np.zeros(0, np.float32), np.zeros((0, k), np.int32), np.zeros((0, k), np.float32))


def require_prompts(items: Sequence[tuple[list[int], list[int]]]) -> None:
    """Scoring's input check, the same under every backend: each (prompt, response) item needs a prompt."""
    for number, (prompt, _) in enumerate(items):
        _require_prompt(prompt, f"score: item {number}")


def require_candidates(prompt_ids: list[int], candidates: list[list[int]]) -> None:
    """Action scoring's input check, the same under every backend: a prompt and no empty candidate."""
    _require_prompt(prompt_ids, "action_scores")
    if empty := [i for i, c in enumerate(candidates) if not c]:
        raise ValueError(f"candidate(s) {empty} are empty; an action needs at least one token to be scored.")


def _require_prompt(prompt: list[int], where: str) -> None:
    if not prompt:
        raise ValueError(f"{where}: the prompt is empty; the first token is predicted from the last prompt position.")


def _require_plain_head(config) -> None:
    """Refuse models that transform logits after the LM head: scoring applies the head alone."""
    for name in ("final_logit_softcapping", "logit_scale"):
        if getattr(config.get_text_config(), name, None):
            raise ValueError(f"the teacher rescales its logits after the LM head ({name}); HFScorer cannot score it.")
