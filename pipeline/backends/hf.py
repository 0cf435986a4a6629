"""The `hf` backend: batched generation with transformers, recording the sampler's log-probs.

One `generate` call covers every active episode (left-padded). Later losses need log π_old of each
sampled token under the distribution it was actually drawn from, so temperature and top-p are
applied by our own logits processor, which also keeps the log-softmax of that distribution for one
step at a time (O(batch × vocab) memory, never a [batch, steps, vocab] score history). Every other
sampling knob is pinned to neutral so a checkpoint's own generation_config (Qwen ships top_k,
top_p, repetition_penalty) cannot change the distribution behind our back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList

from pipeline.backends.admissible import AdmissibleOnly
from pipeline.errors import UserError

# Only passed when sampling: greedy decoding applies no warpers, and transformers warns about them.
NEUTRAL_SAMPLING = dict(
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    min_p=None,
    typical_p=1.0,
    repetition_penalty=1.0,
    no_repeat_ngram_size=0,
    epsilon_cutoff=0.0,
    eta_cutoff=0.0,
    num_beams=1,
)


@dataclass
class Generation:
    """One response: token ids up to and including the end token, their text and log-probs.

    `truncated`: the response ran into `max_new_tokens` before any end token, so it never finished.
    """

    ids: list[int]
    text: str
    logprobs: list[float]
    truncated: bool = False


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("sampling.device=cuda but no CUDA device is available here")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def load_tokenizer(path: str | Path):
    require_model_dir(path)
    return AutoTokenizer.from_pretrained(str(path))


def load_causal_lm(path: str | Path, device: torch.device, dtype: torch.dtype):
    """A local checkpoint in eval mode; a missing or unreadable folder is a user error."""
    require_model_dir(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load a model from {path}: {str(exc).splitlines()[0]}") from None
    return model.to(device).eval()


def require_model_dir(path: str | Path) -> None:
    """Fail early, in the user's words, before a stage writes anything."""
    if not (Path(path) / "config.json").is_file():
        hint = " (run `sage-opd prepare` to build the tiny default models)" if "data/models" in str(path) else ""
        raise UserError(f"model folder {path} does not exist or holds no config.json{hint}")


class SamplingDistribution(LogitsProcessor):
    """Applies temperature and top-p, and records log π(token) of the distribution it hands on.

    The token drawn at step s is only visible at step s+1 (as the last input id), so each call first
    settles the previous step's pending log-probs, then stores its own. Greedy decoding
    (temperature 0) records the model's untempered log-probs.
    """

    def __init__(self, temperature: float, top_p: float) -> None:
        self.temperature = temperature
        self.top_p = top_p
        self._pending: torch.Tensor | None = None
        self._settled: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._pending is not None:
            self._settle(input_ids[:, -1])
        scores = scores.float()
        if self.temperature > 0:
            scores = self._nucleus(scores / self.temperature)
        self._pending = torch.log_softmax(scores, dim=-1)
        return scores

    def _nucleus(self, scores: torch.Tensor) -> torch.Tensor:
        if self.top_p >= 1.0:
            return scores
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        probs = sorted_scores.softmax(dim=-1)
        outside = probs.cumsum(dim=-1) - probs > self.top_p  # the top token always stays
        return scores.masked_fill(outside.scatter(-1, order, outside), float("-inf"))

    def _settle(self, tokens: torch.Tensor) -> None:
        self._settled.append(self._pending.gather(-1, tokens[:, None]).squeeze(-1))
        self._pending = None

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        """[batch, steps] log-probs of the generated tokens, once generation is over."""
        self._settle(last_tokens)
        return torch.stack(self._settled, dim=1)


class HFGenerator:
    """Batched sampling from one causal LM; reused for every step of a stage."""

    def __init__(self, model, tokenizer) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.stop_ids = stop_ids(model.generation_config, tokenizer)

    @torch.inference_mode()
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
        input_ids, attention_mask = self._left_pad(prompts)
        recorder = SamplingDistribution(temperature, top_p)
        processors = [AdmissibleOnly(allowed, input_ids.shape[1])] if allowed is not None else []
        torch.manual_seed(seed)
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            logits_processor=LogitsProcessorList([*processors, recorder]),
            do_sample=temperature > 0,
            max_new_tokens=max_new_tokens,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            **(NEUTRAL_SAMPLING if temperature > 0 else {}),
        )
        new_tokens = output[:, input_ids.shape[1] :]
        logprobs = recorder.finish(new_tokens[:, -1]).cpu()
        return [
            trim_response(self.tokenizer, self.stop_ids, row.tolist(), lp.tolist())
            for row, lp in zip(new_tokens.cpu(), logprobs, strict=True)
        ]

    def _left_pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
        return ids.to(self.device), mask.to(self.device)


def trim_response(tokenizer, stop: list[int], tokens: list[int], logprobs: list[float]) -> Generation:
    """Cut after the first stop token (kept: the model must learn to end its turn); every backend's last step.

    Without a stop token the response hit the token limit: it is kept whole and marked truncated.
    """
    end = next((i + 1 for i, tok in enumerate(tokens) if tok in stop), None)
    ids = tokens[:end]
    return Generation(
        ids=ids,
        text=tokenizer.decode(ids, skip_special_tokens=True),
        logprobs=logprobs[: len(ids)],
        truncated=end is None,
    )


def stop_ids(generation_config, tokenizer) -> list[int]:
    """End-of-turn ids: the tokenizer's eos plus whatever the checkpoint's generation_config lists."""
    configured = generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)
