"""The `vllm` backend on the real engine (`make test-vllm`: vllm-cpu in .venv-vllm), held against `hf`.

Same tiny models, same token ids: teacher log-probs and top-k within 1e-3 (top-k ids equal wherever the
k-th and (k+1)-th log-probs differ by more than that), likelihood-judge scores likewise, greedy generation
token for token, sampled tokens' log-probs those of the distribution they were drawn from; then whole
rollout and annotate stages of the default config on `backend: vllm`. In the main .venv vLLM is missing
and the module is skipped; `make test-vllm` sets SAGE_OPD_REQUIRE_VLLM, so there a missing engine fails.
"""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.backends.hf import HFGenerator, SamplingDistribution, load_causal_lm, load_tokenizer
from pipeline.backends.hf_score import HFScorer
from pipeline.config import load_config
from pipeline.errors import UserError

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; unset, vLLM's CPU build reserves most of the host
if os.environ.get("SAGE_OPD_REQUIRE_VLLM"):
    import vllm  # noqa: F401
else:
    pytest.importorskip("vllm")

from pipeline.annotate import episode_histories, run_annotate  # noqa: E402
from pipeline.backends import vllm as vllm_backend  # noqa: E402
from pipeline.backends.vllm import VLLMGenerator, VLLMScorer, engine_for  # noqa: E402
from pipeline.judges import PromptJudge  # noqa: E402
from pipeline.play import run_rollout  # noqa: E402
from pipeline.schema import ANNOTATIONS_SCHEMA, TURNS_SCHEMA  # noqa: E402
from pipeline.shards import read_stage  # noqa: E402

pytestmark = pytest.mark.vllm

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
TOLERANCE = 1e-3
K = 20
TEXTS = [
    "You are in the middle of a room. Looking quickly around you, you see a cabinet 1, a countertop 1.",
    "Your task is to: put a clean mug in coffeemachine.",
    "<action>go to countertop 1</action>",
    "You arrive at countertop 1. On the countertop 1, you see a apple 1, a knife 2, and a mug 3.",
    "<action>take mug 3 from countertop 1</action>",
]


@pytest.fixture(scope="module")
def vllm_config(tiny_models):
    """The default config on `backend: vllm` with the tiny models: one engine per model for the module."""
    models = [f"models.{name}={path}" for name, path in tiny_models.items()]
    return load_config(DEFAULT_CONFIG, [*models, "sampling.backend=vllm", "runtime.threads=1"])


@pytest.fixture(scope="module")
def teacher(vllm_config):
    """The tiny teacher under both backends: (hf model, vLLM engine, tokenizer)."""
    path = vllm_config.models.teacher
    return load_causal_lm(path, torch.device("cpu"), torch.float32), engine_for(vllm_config, path), load_tokenizer(path)


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_teacher_scores_match_hf(teacher):
    model, engine, tokenizer = teacher
    items = [(encode(tokenizer, p), encode(tokenizer, r)) for p, r in zip(TEXTS, TEXTS[1:] + TEXTS[:1], strict=True)]
    items.append((encode(tokenizer, TEXTS[0]), []))
    ours = VLLMScorer(engine, k=K).score(items)
    reference = HFScorer(model, k=K + 1, max_tokens_per_batch=4096).score(items)
    compared = 0
    for (_, response), got, want in zip(items, ours, reference, strict=True):
        assert got.topk_ids.shape == got.topk_logprobs.shape == (len(response), K)
        assert got.teacher_logprobs.shape == got.confidence.shape == (len(response),)
        assert got.topk_ids.dtype == np.int32 and got.topk_logprobs.dtype == got.teacher_logprobs.dtype == np.float32
        np.testing.assert_allclose(got.teacher_logprobs, want.teacher_logprobs, atol=TOLERANCE, rtol=0)
        np.testing.assert_allclose(got.topk_logprobs, want.topk_logprobs[:, :K], atol=TOLERANCE, rtol=0)
        np.testing.assert_allclose(got.confidence, np.exp(got.topk_logprobs[:, 0]), rtol=1e-6)
        assert (np.diff(got.topk_logprobs, axis=1) <= 0).all()
        distinct = want.topk_logprobs[:, K - 1] - want.topk_logprobs[:, K] > TOLERANCE
        np.testing.assert_array_equal(np.sort(got.topk_ids[distinct], 1), np.sort(want.topk_ids[distinct, :K], 1))
        compared += int(distinct.sum())
    assert compared > 0


def test_a_head_cut_to_the_students_ids_is_refused_on_vllm(teacher):
    """vLLM normalizes log-probs over the whole head: cutting a padded teacher head is the hf backend's job."""
    _, engine, _ = teacher
    rows = engine.llm_engine.model_config.get_vocab_size()
    assert VLLMScorer(engine, k=K, scored_ids=rows).k == K  # the whole head: nothing to cut
    with pytest.raises(UserError, match=f"the teacher's output head has {rows} rows and the student's {rows - 1}"):
        VLLMScorer(engine, k=K, scored_ids=rows - 1)


def test_action_scores_match_hf(teacher):
    model, engine, tokenizer = teacher
    prompt = encode(tokenizer, TEXTS[3] + " " + TEXTS[1])
    candidates = [encode(tokenizer, f"<action>{a}</action>") for a in ("look", "go to cabinet 1", "take mug 3")]
    candidates.append([tokenizer.eos_token_id])
    got = VLLMScorer(engine, k=K).action_scores(prompt, candidates)
    want = HFScorer(model, k=K, max_tokens_per_batch=4096).action_scores(prompt, candidates)
    np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0)
    assert VLLMScorer(engine, k=K).action_scores(prompt, []) == []
    with pytest.raises(ValueError, match="are empty"):
        VLLMScorer(engine, k=K).action_scores(prompt, [[5], []])


@pytest.mark.parametrize("max_new_tokens", [24, 3])
def test_greedy_generation_matches_hf(teacher, vllm_config, max_new_tokens):
    """Also where the token limit cuts responses: both backends mark the same ones truncated."""
    model, engine, tokenizer = teacher
    prompts = [encode(tokenizer, text) for text in TEXTS]
    settings = dict(temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens, seed=0)
    ours = VLLMGenerator(engine, tokenizer, vllm_config.models.teacher).generate(prompts, **settings)
    reference = HFGenerator(model, tokenizer).generate(prompts, **settings)
    for got, want in zip(ours, reference, strict=True):
        assert (got.ids, got.text, got.truncated) == (want.ids, want.text, want.truncated)
        np.testing.assert_allclose(got.logprobs, want.logprobs, atol=TOLERANCE, rtol=0)
    assert max_new_tokens > 3 or any(got.truncated for got in ours)


def test_sampled_log_probs_are_of_the_tempered_nucleus_the_token_came_from(teacher, vllm_config):
    model, engine, tokenizer = teacher
    generator = VLLMGenerator(engine, tokenizer, vllm_config.models.teacher)
    prompts = [encode(tokenizer, text) for text in TEXTS]
    settings = dict(temperature=0.7, top_p=0.9, max_new_tokens=16, seed=3)
    first = generator.generate(prompts, **settings)
    assert [g.ids for g in generator.generate(prompts, **settings)] == [g.ids for g in first]
    for prompt, response in zip(prompts, first, strict=True):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + response.ids])).logits[0, len(prompt) - 1 : -1].float()
        tempered = SamplingDistribution(0.7, 0.9)(torch.tensor([prompt]), logits)
        expected = torch.log_softmax(tempered, -1)[torch.arange(len(response.ids)), response.ids]
        np.testing.assert_allclose(response.logprobs, expected.numpy(), atol=TOLERANCE, rtol=0)


def test_a_seeded_batch_longer_than_one_engine_step_is_reproducible(teacher, vllm_config):
    """40 prompts of 300 tokens exceed a step's token budget: vllm-cpu once crashed on such seeded batches."""
    _, engine, tokenizer = teacher
    generator = VLLMGenerator(engine, tokenizer, vllm_config.models.teacher)
    prompts = [[3 + (7 * row + col) % 300 for col in range(300)] for row in range(40)]
    first, again = (generator.generate(prompts, temperature=1.0, top_p=1.0, max_new_tokens=4, seed=9) for _ in "ab")
    assert [g.ids for g in first] == [g.ids for g in again]


def test_rollout_and_annotate_of_the_default_config(vllm_config, teacher, tmp_path):
    """Whole stages on `backend: vllm`: the same schema checks as `hf`'s, the same numbers and labels as `hf`'s."""
    config = load_config(DEFAULT_CONFIG, [f"runs_dir={tmp_path}", *_overrides(vllm_config)])
    turns_dir = run_rollout(config, 1).directory
    assert config.models.student not in {s.model for s in vllm_backend._ENGINES}  # the stage shut its engine down
    for part in sorted(turns_dir.glob("part-*.parquet")):
        assert pq.read_schema(part).remove_metadata() == TURNS_SCHEMA
    turns = read_stage(turns_dir, "turns").to_pandas()
    assert turns["episode_id"].nunique() == 12 * 2 and (turns["response_ids"].map(len) > 0).all()
    assert (turns["response_ids"].map(len) == turns["sampler_logprobs"].map(len)).all()
    student = load_causal_lm(config.models.student, torch.device("cpu"), torch.float32)
    for row in turns.head(8).itertuples():  # temperature 1: the sampler's log-probs are the model's own
        prompt, response = list(row.prompt_ids), list(row.response_ids)
        with torch.no_grad():
            logits = student(torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1]
        expected = torch.log_softmax(logits, -1)[torch.arange(len(response)), response]
        np.testing.assert_allclose(row.sampler_logprobs, expected.numpy(), atol=TOLERANCE, rtol=0)

    result = run_annotate(config, 1)
    assert result.complete and result.turns == len(turns)
    for part in sorted(result.directory.glob("part-*.parquet")):
        assert pq.read_schema(part).remove_metadata() == ANNOTATIONS_SCHEMA
    notes = read_stage(result.directory, "annotations").to_pandas()
    assert notes[["episode_id", "turn"]].values.tolist() == turns[["episode_id", "turn"]].values.tolist()
    hf = load_config(DEFAULT_CONFIG, [f"runs_dir={tmp_path}", *_overrides(vllm_config, "hf"), "annotate.out=hf"])
    reference = read_stage(run_annotate(hf, 1).directory, "annotations").to_pandas()
    for column in ("teacher_logprobs", "confidence"):
        np.testing.assert_allclose(_flat(notes[column]), _flat(reference[column]), atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(_flat(notes["topk_logprobs"]), _flat(reference["topk_logprobs"]), atol=TOLERANCE)
    assert notes["label"].tolist() == reference["label"].tolist()

    model, engine, tokenizer = teacher  # the prompt judge, which annotate's default (likelihood) leaves out
    rows = read_stage(turns_dir, "turns").to_pylist()[:8]
    generators = VLLMGenerator(engine, tokenizer, config.models.teacher), HFGenerator(model, tokenizer)
    histories = episode_histories(rows)
    ours, theirs = (PromptJudge(g, max_new_tokens=8, history=2).judge(rows, histories) for g in generators)
    assert ours == theirs


def _overrides(config, backend: str = "vllm") -> list[str]:
    """The test models and backend; 2 episodes per game instead of the default's 8 keep the stages short."""
    models = [f"models.student={config.models.student}", f"models.teacher={config.models.teacher}"]
    return [*models, f"sampling.backend={backend}", "runtime.threads=1", "rollout.samples_per_game=2"]


def _flat(column: pd.Series) -> np.ndarray:
    """Every number of a list (or list-of-lists) column, in row order."""
    return np.concatenate([np.stack(cell).ravel() for cell in column])
