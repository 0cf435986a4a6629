"""Tiny Qwen2-shaped teacher and student models with their own byte-level BPE tokenizer, built offline.

The default config runs the whole pipeline on a CPU in minutes and without a model hub, so we train a
small tokenizer on ALFWorld-like text and initialise two small Qwen2 models (a bigger "teacher" and a
smaller "student") that share it, as distillation requires.

The tokenizer must survive a save/load cycle bit for bit. transformers 5 loads any `model_type=qwen2`
folder with `Qwen2Tokenizer`, which rebuilds the normalizer and pre-tokenizer from its own definition
and keeps only the vocabulary and merges of `tokenizer.json`. So we train with exactly that pipeline
(NFC, Qwen2's split regex, byte-level without its own regex, byte-level decoder) and take the regex
from transformers itself; had we trained with any other pipeline, ids would silently change on reload.
The models use a head dimension of at least 32 because vLLM's CPU attention needs it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

from pipeline.atomic import atomic_dir

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)  # trained first, so their ids are 0, 1, 2

# ChatML, as Qwen2 uses it (without Qwen's default system message). The assistant's content and its
# closing <|im_end|> are a {% generation %} span, so `return_assistant_tokens_mask=True` marks the
# tokens the model is trained to produce.
_CHATML_MESSAGES = r"""{%- for message in messages %}
    {%- if message['role'] == 'assistant' %}
        {{- '<|im_start|>assistant\n' }}
        {%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}
        {{- '\n' }}
    {%- else %}
        {{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
"""
CHAT_TEMPLATE = (
    _CHATML_MESSAGES
    + r"""{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""
)
# The switch Qwen3's templates have, in our own template: `enable_thinking=False` closes an empty
# <think></think> block in the generation prompt, so the model answers at once; left out or true, the
# model opens its own thinking block. For tests of real-model prompts on tiny models.
THINKING_CHAT_TEMPLATE = (
    _CHATML_MESSAGES
    + r"""{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and not enable_thinking %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}
"""
)


def _qwen2_pipeline_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE tokenizer with the normalizer, pre-tokenizer and decoder of Qwen2."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train a Qwen2-compatible byte-level BPE tokenizer on `texts`, with the ChatML chat template.

    `vocab_size` counts the three special tokens; a small corpus may yield fewer tokens than asked.
    Every byte is in the initial alphabet, so any text encodes, whatever the corpus was.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (all bytes and the "
            f"special tokens), got {vocab_size}."
        )
    backend = _qwen2_pipeline_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return Qwen2Tokenizer(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        bos_token=None,
        chat_template=CHAT_TEMPLATE,
    )


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of a tiny Qwen2 model; the vocabulary comes from the tokenizer.

    Fields: hidden_size, num_layers, num_heads (query heads), num_kv_heads (key/value heads, grouped-query
    attention when fewer than num_heads), intermediate_size (MLP width), max_position_embeddings.
    """

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_position_embeddings: int = 4096

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads}).")
        if self.head_dim < 32:
            raise ValueError(
                f"head_dim = hidden_size / num_heads = {self.head_dim} is below 32, which "
                "vLLM's CPU attention cannot run; use fewer heads or a larger hidden_size."
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be divisible by num_kv_heads ({self.num_kv_heads}).")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_heads

    @classmethod
    def of_shape(cls, shape: str) -> TinyModelSpec:
        """`<hidden size>x<layers>`: heads of width 32, half as many key/value heads, an MLP 3x as wide."""
        hidden_size, num_layers = (int(part) for part in shape.split("x"))
        heads = max(1, hidden_size // 32)
        return cls(hidden_size, num_layers, heads, max(1, heads // 2), 3 * hidden_size)


# With a 2048-token vocabulary (tied embeddings): student 229,952 parameters, teacher 1,050,752.
STUDENT_SPEC = TinyModelSpec.of_shape("64x2")
TEACHER_SPEC = TinyModelSpec.of_shape("128x4")


def _token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    """The id of a special token, or a ValueError if the tokenizer lacks it (it is not one of ours)."""
    token_id = tokenizer.get_vocab().get(token)
    if token_id is None:
        raise ValueError(f"The tokenizer has no {token} token; build it with train_tokenizer().")
    return token_id


def build_tiny_model(tokenizer: PreTrainedTokenizerFast, spec: TinyModelSpec, seed: int) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 model of shape `spec` for `tokenizer`; one seed, one set of weights.

    Generation defaults to greedy and stops at <|im_end|> or <|endoftext|>; padding uses <|endoftext|>.
    """
    endoftext, im_end = _token_id(tokenizer, ENDOFTEXT), _token_id(tokenizer, IM_END)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=endoftext,
        eos_token_id=im_end,
        pad_token_id=endoftext,
    )
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        do_sample=False,
        bos_token_id=endoftext,
        eos_token_id=[im_end, endoftext],
        pad_token_id=endoftext,
    )
    return model.eval()


def save_model(model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerFast, path: str | os.PathLike) -> None:
    """Write model and tokenizer to the folder `path`, replacing it atomically.

    The folder loads with `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`.
    """
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
