"""Teacher scoring equals a plain full-vocab forward pass, while never building [batch, seq, vocab] logits."""

import copy

import numpy as np
import pytest
import torch

from pipeline.backends.hf_score import HFScorer, pack_batches
from pipeline.tiny_models import STUDENT_SPEC, TEACHER_SPEC, build_tiny_model, train_tokenizer

CORPUS = [
    "You arrive at countertop 1. On the countertop 1, you see a apple 1, a knife 2, and a mug 3.",
    "<action>go to fridge 1</action>",
    "<action>move mug 1 to shelf 2</action>",
    "Your task is to: put a clean mug in coffeemachine.",
    "You open the fridge 1. The fridge 1 is open. In it, you see a lettuce 2 and a tomato 1.",
] * 20
ACTIONS = ["go to fridge 1", "open fridge 1", "look", "move mug 1 to shelf 2", "take apple 1 from countertop 1"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=400)


@pytest.fixture(scope="module")
def teacher(tokenizer):
    return build_tiny_model(tokenizer, TEACHER_SPEC, seed=7)


def encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def items(tokenizer):
    """(prompt, response) pairs of different lengths, one with an empty response."""
    pairs = [
        (CORPUS[3] + " " + CORPUS[0], CORPUS[2]),
        (CORPUS[0], CORPUS[1]),
        (CORPUS[4] + " " + CORPUS[3] + " " + CORPUS[0], CORPUS[1] + " " + CORPUS[2]),
        (CORPUS[1], ""),
        ("go", "<action>look</action>"),
        (CORPUS[3], CORPUS[4]),
    ]
    return [(encode(tokenizer, p), encode(tokenizer, r)) for p, r in pairs]


def full_logprobs(model, prompt, response):
    """[n, vocab] float32 log-softmax of one unpadded forward pass at the positions predicting `response`."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0].float()
    return torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)


def test_score_equals_a_full_forward_pass_one_item_at_a_time(teacher, items):
    k = 8
    results = HFScorer(teacher, k=k, max_tokens_per_batch=10_000).score(items)
    assert len(results) == len(items)
    for (prompt, response), scores in zip(items, results, strict=True):
        n = len(response)
        assert scores.teacher_logprobs.shape == scores.confidence.shape == (n,)
        assert scores.topk_ids.shape == scores.topk_logprobs.shape == (n, k)
        assert scores.topk_ids.dtype == np.int32 and scores.topk_logprobs.dtype == np.float32
        assert scores.teacher_logprobs.dtype == scores.confidence.dtype == np.float32
        for array in (scores.teacher_logprobs, scores.topk_logprobs, scores.confidence):
            assert np.isfinite(array).all()
        if n == 0:
            continue
        expected = full_logprobs(teacher, prompt, response)
        sampled = expected.gather(-1, torch.tensor(response)[:, None]).squeeze(-1)
        np.testing.assert_allclose(scores.teacher_logprobs, sampled.numpy(), atol=1e-5, rtol=0)
        values, ids = expected.topk(k + 1, dim=-1)
        np.testing.assert_allclose(scores.topk_logprobs, values[:, :k].numpy(), atol=1e-5, rtol=0)
        distinct = (values[:, k - 1] - values[:, k]).numpy() > 1e-5  # rows where the top-k set is unambiguous
        assert distinct.any()
        np.testing.assert_array_equal(np.sort(scores.topk_ids[distinct], 1), np.sort(ids[distinct, :k].numpy(), 1))
        assert (np.diff(scores.topk_logprobs, axis=1) <= 0).all()
        np.testing.assert_allclose(scores.confidence, np.exp(scores.topk_logprobs[:, 0]), rtol=1e-6)


def test_many_small_batches_and_chunks_give_the_same_scores(teacher, items):
    small = HFScorer(teacher, k=5, max_tokens_per_batch=16)
    assert small.chunk_positions < max(len(r) for _, r in items)  # responses really are split into chunks
    assert max(len(p) + len(r) for p, r in items) > 16  # and some items exceed the budget on their own
    big = HFScorer(teacher, k=5, max_tokens_per_batch=1_000_000)
    for a, b in zip(small.score(items), big.score(items), strict=True):
        np.testing.assert_allclose(a.teacher_logprobs, b.teacher_logprobs, atol=1e-5, rtol=0)
        np.testing.assert_allclose(a.topk_logprobs, b.topk_logprobs, atol=1e-5, rtol=0)
        np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-5, rtol=0)


def test_k_equal_to_the_vocabulary_is_the_whole_distribution(teacher, items):
    vocab = teacher.config.vocab_size
    scores = HFScorer(teacher, k=vocab, max_tokens_per_batch=500).score(items[:2])
    for s in scores:
        total = torch.logsumexp(torch.from_numpy(s.topk_logprobs), dim=-1)
        torch.testing.assert_close(total, torch.zeros_like(total), atol=1e-5, rtol=0)
        assert (np.sort(s.topk_ids, axis=1) == np.arange(vocab)).all()


def test_k_beyond_the_vocabulary_is_refused(teacher):
    with pytest.raises(ValueError, match="vocabulary size"):
        HFScorer(teacher, k=teacher.config.vocab_size + 1, max_tokens_per_batch=100)


def test_empty_prompt_is_refused(teacher):
    with pytest.raises(ValueError, match="prompt is empty"):
        HFScorer(teacher, k=3, max_tokens_per_batch=100).score([([], [5, 6])])


def test_empty_responses_give_empty_arrays(teacher):
    scores = HFScorer(teacher, k=4, max_tokens_per_batch=100).score([([5, 6], []), ([7], [])])
    for s in scores:
        assert s.teacher_logprobs.shape == s.confidence.shape == (0,)
        assert s.topk_ids.shape == s.topk_logprobs.shape == (0, 4)


def test_the_head_sees_only_response_predicting_positions_in_bounded_chunks(teacher, items):
    calls = []
    handle = teacher.lm_head.register_forward_hook(lambda module, args, out: calls.append(tuple(args[0].shape)))
    try:
        scorer = HFScorer(teacher, k=5, max_tokens_per_batch=40)
        scorer.score(items)
    finally:
        handle.remove()
    hidden, vocab = teacher.config.hidden_size, teacher.config.vocab_size
    assert scorer.chunk_positions * vocab <= 40 * hidden  # the float32 block is no bigger than the body's output
    assert all(len(shape) == 2 for shape in calls)  # [positions, hidden]: never a [batch, seq, ...] call
    assert max(shape[0] for shape in calls) <= scorer.chunk_positions
    assert sum(shape[0] for shape in calls) == sum(len(r) for _, r in items)  # no prompt or padding position


def test_scores_do_not_depend_on_batch_companions(teacher, items):
    scorer = HFScorer(teacher, k=5, max_tokens_per_batch=10_000)
    together = scorer.score(items)
    for item, joint in zip(items, together, strict=True):
        (alone,) = scorer.score([item])
        np.testing.assert_allclose(joint.topk_logprobs, alone.topk_logprobs, atol=1e-5, rtol=0)


def candidate_ids(tokenizer):
    return [encode(tokenizer, a) for a in ACTIONS] + [encode(tokenizer, "<")[:1]]


def plain_action_score(model, prompt, candidate):
    expected = full_logprobs(model, prompt, candidate)
    return expected.gather(-1, torch.tensor(candidate)[:, None]).sum().item() / len(candidate)


@pytest.mark.parametrize("max_tokens_per_batch", [100_000, 40])
def test_action_scores_equal_a_plain_forward_of_prompt_and_candidate(teacher, tokenizer, max_tokens_per_batch):
    prompt = encode(tokenizer, CORPUS[3] + " " + CORPUS[0])
    candidates = candidate_ids(tokenizer)
    assert len({len(c) for c in candidates}) > 2 and min(len(c) for c in candidates) == 1
    scores = HFScorer(teacher, k=5, max_tokens_per_batch=max_tokens_per_batch).action_scores(prompt, candidates)
    expected = [plain_action_score(teacher, prompt, c) for c in candidates]
    np.testing.assert_allclose(scores, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("max_tokens_per_batch", [100_000, 40])
def test_the_prompt_is_encoded_once_per_call(teacher, tokenizer, max_tokens_per_batch):
    prompt = encode(tokenizer, CORPUS[4] + " " + CORPUS[3])
    candidates = candidate_ids(tokenizer) * 8  # 48 candidates
    lengths = []
    handle = teacher.model.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        scorer = HFScorer(teacher, k=5, max_tokens_per_batch=max_tokens_per_batch)
        scorer.action_scores(prompt, candidates)
    finally:
        handle.remove()
    assert lengths[0] == (1, len(prompt))
    longest = max(len(c) for c in candidates) - 1  # the last candidate token is only predicted
    assert all(width <= longest for _, width in lengths[1:])
    assert sum(rows for rows, _ in lengths[1:]) <= len(candidates)
    if max_tokens_per_batch > 10_000:
        assert len(lengths) == 2  # the prompt, then all candidates as one batch


def test_action_scores_of_no_candidates_and_empty_candidates(teacher):
    scorer = HFScorer(teacher, k=5, max_tokens_per_batch=100)
    assert scorer.action_scores([5, 6, 7], []) == []
    with pytest.raises(ValueError, match="prompt is empty"):
        scorer.action_scores([], [[8]])
    with pytest.raises(ValueError, match="empty"):
        scorer.action_scores([5, 6, 7], [[8], []])


def test_bfloat16_scores_are_close_to_float32_and_finite(tokenizer, items):
    model = build_tiny_model(tokenizer, STUDENT_SPEC, seed=2)
    low = copy.deepcopy(model).to(torch.bfloat16)
    exact = HFScorer(model, k=5, max_tokens_per_batch=64).score(items)
    rough = HFScorer(low, k=5, max_tokens_per_batch=64).score(items)
    for a, b in zip(exact, rough, strict=True):
        assert b.teacher_logprobs.dtype == b.topk_logprobs.dtype == np.float32
        for array in (b.teacher_logprobs, b.topk_logprobs, b.confidence):
            assert np.isfinite(array).all()
        np.testing.assert_allclose(a.teacher_logprobs, b.teacher_logprobs, atol=5e-2, rtol=0)
        np.testing.assert_allclose(a.topk_logprobs, b.topk_logprobs, atol=5e-2, rtol=0)
    prompt, candidates = items[0][0], [items[1][1], items[2][1]]
    close = HFScorer(model, k=5, max_tokens_per_batch=64).action_scores(prompt, candidates)
    np.testing.assert_allclose(
        HFScorer(low, k=5, max_tokens_per_batch=64).action_scores(prompt, candidates), close, atol=5e-2
    )


def test_pack_batches_respects_the_budget_and_keeps_every_index():
    lengths = [5, 30, 7, 7, 12, 1, 40, 3]
    batches = pack_batches(lengths, max_tokens_per_batch=24)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 24


def test_a_real_vocabulary_and_real_lengths_score_in_bounded_blocks(tokenizer):
    """Qwen2.5-7B's padded head (152,064 rows) cut to 1.5B's 151,936 ids, a ~2k-token prompt and a 512-token
    response: the head sees [chunk, hidden] blocks whose float32 logits are no bigger than the body's output,
    and the numbers equal a direct log-softmax at the positions checked."""
    model = build_tiny_model(tokenizer, STUDENT_SPEC, seed=3)
    model.resize_token_embeddings(152_064, mean_resizing=False)
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, len(tokenizer), (2048,), generator=generator).tolist()
    response = torch.randint(0, len(tokenizer), (512,), generator=generator).tolist()
    blocks = []
    handle = model.lm_head.register_forward_hook(lambda module, args, out: blocks.append(tuple(out.shape)))
    try:
        scorer = HFScorer(model, k=20, max_tokens_per_batch=4096, scored_ids=151_936)
        (scores,) = scorer.score([(prompt, response)])
    finally:
        handle.remove()
    hidden = model.config.hidden_size
    assert max(rows * columns for rows, columns in blocks) <= 4096 * hidden  # never [batch, seq, vocab] logits
    assert sum(rows for rows, _ in blocks) == 512 and scores.topk_ids.shape == (512, 20)
    assert scores.topk_ids.max() < 151_936
    with torch.no_grad():
        states = model.model(torch.tensor([prompt + response])).last_hidden_state[0]
        for j in (0, 255, 511):  # response token j is predicted at position len(prompt) - 1 + j
            logits = model.lm_head(states[len(prompt) - 1 + j])[:151_936].float()
            expected = torch.log_softmax(logits, -1)
            assert scores.teacher_logprobs[j] == pytest.approx(expected[response[j]].item(), abs=1e-4)
            np.testing.assert_allclose(scores.topk_logprobs[j], expected.topk(20).values.numpy(), atol=1e-4)


def test_prompts_that_begin_alike_run_their_shared_prefix_once_and_score_the_same(tokenizer, teacher):
    """The turns of an episode share its task: one pass over the shared prefix, then the rest of each row
    continues from a copy of its cache, and every number equals a full forward pass."""
    head = encode(tokenizer, CORPUS[3] + " " + CORPUS[0] + " " + CORPUS[4])
    tails = [CORPUS[1], CORPUS[4] + " " + CORPUS[2], CORPUS[0]]
    items = [(head + encode(tokenizer, " " + tail), encode(tokenizer, CORPUS[1 + i])) for i, tail in enumerate(tails)]
    passes = []
    scorers = {
        reuse: HFScorer(teacher, k=5, max_tokens_per_batch=10_000, reuse_prefix=reuse) for reuse in (True, False)
    }
    handle = scorers[True].body.register_forward_pre_hook(
        lambda module, args, kwargs: passes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        reused = scorers[True].score(items)
    finally:
        handle.remove()
    longest = max(len(prompt) + len(response) for prompt, response in items)
    shared = next(i for i in range(len(head) + 5) if len({prompt[i] for prompt, _ in items}) > 1)
    assert shared >= len(head) >= 16 and passes == [(1, shared), (3, longest - shared)]
    for (prompt, response), ours in zip(items, reused, strict=True):
        expected = full_logprobs(teacher, prompt, response)
        sampled = expected.gather(-1, torch.tensor(response)[:, None]).squeeze(-1)
        np.testing.assert_allclose(ours.teacher_logprobs, sampled.numpy(), atol=1e-5, rtol=0)
        np.testing.assert_allclose(ours.topk_logprobs, expected.topk(5).values.numpy(), atol=1e-5, rtol=0)
    for ours, plain in zip(reused, scorers[False].score(items), strict=True):
        np.testing.assert_allclose(ours.topk_logprobs, plain.topk_logprobs, atol=1e-5, rtol=0)
