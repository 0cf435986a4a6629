"""The offline tokenizer and tiny models: ids survive a save/load cycle, ChatML masks, model shapes."""

import json
import unicodedata

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES

from pipeline.tiny_models import (
    SPECIAL_TOKENS,
    STUDENT_SPEC,
    TEACHER_SPEC,
    TinyModelSpec,
    build_tiny_model,
    save_model,
    train_tokenizer,
)

OBJECTS = ["apple", "mug", "bowl", "knife", "potato", "cellphone", "pencil", "lettuce", "egg", "book"]
PLACES = ["countertop", "fridge", "shelf", "desk", "drawer", "cabinet", "sinkbasin", "microwave"]

TRICKY = [
    "",
    "go to fridge 1",
    "You arrive at countertop 1. On the countertop 1, you see a apple 1, and a mug 2.",
    "  leading and trailing spaces   ",
    "tabs\tand\nnew\n\nlines\r\n\r\n   \n",
    "digits 1234567890 and 3.14159 and 007",
    "unicode: é, café, naïve, 中文字符, 😀🚀 and e\u0301 decomposed",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
    "<think>the mug is on desk 1</think><action>take mug 1 from desk 1</action>",
    "don't I'LL we've THEY'RE",
    "!!!???... ---- ____ ```code``` {'a': [1, 2]}",
]


def _corpus() -> list[str]:
    """A few dozen ALFWorld-like lines: observations, commands and tagged responses."""
    lines = []
    for i in range(20):
        obj, place, n = OBJECTS[i % len(OBJECTS)], PLACES[i % len(PLACES)], i % 3 + 1
        lines += [
            f"You arrive at {place} {n}. On the {place} {n}, you see a {obj} {n}, and a {OBJECTS[i % 7]} 2.",
            f"go to {place} {n}",
            f"move {obj} {n} to {PLACES[(i + 1) % 8]} 2",
            f"<think>I need the {obj}; it may be in the {place}.</think>"
            f"<action>take {obj} {n} from {place} {n}</action>",
            "Nothing happens.",
        ]
    return lines


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(_corpus(), vocab_size=512)


@pytest.fixture(scope="module")
def saved(tokenizer, tmp_path_factory):
    """A student folder written by save_model, and its tokenizer read back with AutoTokenizer."""
    path = tmp_path_factory.mktemp("models") / "student"
    save_model(build_tiny_model(tokenizer, STUDENT_SPEC, seed=0), tokenizer, path)
    return path, AutoTokenizer.from_pretrained(path)


def test_reloaded_tokenizer_gives_identical_ids(tokenizer, saved):
    path, reloaded = saved
    assert type(reloaded).__name__ == TOKENIZER_MAPPING_NAMES["qwen2"]
    for text in TRICKY:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert reloaded.encode(text, add_special_tokens=False) == ids, text
        # Qwen2 normalises to NFC, so a decomposed "e\u0301" comes back as the single character "é".
        assert tokenizer.decode(ids) == reloaded.decode(ids) == unicodedata.normalize("NFC", text)
    saved_pipeline = json.loads((path / "tokenizer.json").read_text())
    rebuilt_pipeline = json.loads(reloaded.backend_tokenizer.to_str())
    for part in ("normalizer", "pre_tokenizer", "decoder"):
        assert rebuilt_pipeline[part] == saved_pipeline[part], part


def test_training_is_deterministic(tokenizer):
    again = train_tokenizer(_corpus(), vocab_size=512)
    assert again.get_vocab() == tokenizer.get_vocab()
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


def test_too_small_vocab_is_refused():
    with pytest.raises(ValueError, match="vocab_size must be at least 259"):
        train_tokenizer(_corpus(), vocab_size=100)


def test_special_tokens(tokenizer, saved):
    _, reloaded = saved
    for tok in (tokenizer, reloaded):
        assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2]
        for i, token in enumerate(SPECIAL_TOKENS):
            assert tok.encode(token, add_special_tokens=False) == [i]
        assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
        assert tok.encode("hi", add_special_tokens=True) == tok.encode("hi", add_special_tokens=False)


CONVERSATION = [
    {"role": "system", "content": "You are an agent."},
    {"role": "user", "content": "Your task is to: put a mug in shelf.\nYou see a mug 1."},
    {"role": "assistant", "content": "<think>take it</think><action>take mug 1 from desk 1</action>"},
]


def test_chat_template_renders_chatml(saved):
    _, reloaded = saved
    text = reloaded.apply_chat_template(CONVERSATION, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are an agent.<|im_end|>\n"
        "<|im_start|>user\nYour task is to: put a mug in shelf.\nYou see a mug 1.<|im_end|>\n"
        "<|im_start|>assistant\n<think>take it</think><action>take mug 1 from desk 1</action><|im_end|>\n"
    )
    prompt = reloaded.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_assistant_mask_covers_content_and_im_end(tokenizer, saved):
    _, reloaded = saved
    for tok in (tokenizer, reloaded):
        out = tok.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
        ids, mask = out["input_ids"], out["assistant_masks"]
        masked = [i for i, m in zip(ids, mask, strict=True) if m]
        expected = tok.encode(CONVERSATION[2]["content"] + "<|im_end|>", add_special_tokens=False)
        assert masked == expected
        first = mask.index(1)
        assert mask[first : first + len(expected)] == [1] * len(expected)
        header = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
        assert ids[first - len(header) : first] == header
        assert ids[first + len(expected) :] == tok.encode("\n", add_special_tokens=False)


def test_specs_differ_and_share_vocab(tokenizer):
    student = build_tiny_model(tokenizer, STUDENT_SPEC, seed=0)
    teacher = build_tiny_model(tokenizer, TEACHER_SPEC, seed=0)
    assert teacher.num_parameters() > student.num_parameters()
    assert student.config.vocab_size == teacher.config.vocab_size == len(tokenizer)
    for spec in (STUDENT_SPEC, TEACHER_SPEC):
        assert spec.head_dim >= 32


def test_seed_decides_the_weights(tokenizer):
    first, same, other = (build_tiny_model(tokenizer, STUDENT_SPEC, seed=s).state_dict() for s in (1, 1, 2))
    assert all(torch.equal(first[k], same[k]) for k in first)
    assert not torch.equal(first["model.embed_tokens.weight"], other["model.embed_tokens.weight"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_heads": 4}, "head_dim = hidden_size / num_heads = 16 is below 32"),
        ({"num_heads": 3}, "must be divisible by num_heads"),
        ({"num_kv_heads": 3, "hidden_size": 192, "num_heads": 2}, "must be divisible by num_kv_heads"),
        ({"num_layers": 0}, "num_layers must be a positive integer"),
    ],
)
def test_bad_spec_is_refused(changes, message):
    fields = {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64}
    with pytest.raises(ValueError, match=message):
        TinyModelSpec(**{**fields, **changes})


def test_reloaded_model_generates_greedily_until_eos(tokenizer, saved):
    path, reloaded = saved
    model = AutoModelForCausalLM.from_pretrained(path)
    original = build_tiny_model(tokenizer, STUDENT_SPEC, seed=0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in original.state_dict().items())
    assert model.generation_config.do_sample is False
    assert model.generation_config.eos_token_id == [reloaded.eos_token_id, reloaded.pad_token_id]
    prompt = reloaded.apply_chat_template(CONVERSATION[:2], add_generation_prompt=True, return_tensors="pt")
    greedy = model.generate(**prompt, max_new_tokens=8)
    assert torch.equal(greedy, model.generate(**prompt, max_new_tokens=8))
    with torch.no_grad():
        # A zero final norm makes every logit 0; greedy then takes id 0, <|endoftext|>, which must stop it.
        model.model.norm.weight.zero_()
        out = model.generate(**prompt, max_new_tokens=8)
    assert out[0, prompt["input_ids"].shape[1] :].tolist() == [reloaded.pad_token_id]
