"""The hf backend records log π_old exactly: a fresh forward pass over the same tokens agrees."""

import math

import pytest
import torch
from conftest import CORPUS

from pipeline.backends.admissible import AdmissibleOnly, continuations
from pipeline.backends.hf import SamplingDistribution


def prompts_of(generator, texts):
    return [generator.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def fresh_logprobs(model, prompt, response, temperature=1.0):
    """log-softmax of a single unpadded forward pass at the response positions."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0].float()
    logits = logits[len(prompt) - 1 : -1]
    if temperature > 0:
        logits = logits / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_sampler_logprobs_match_a_fresh_forward_pass(generator, temperature):
    # prompts of different lengths: rows are left-padded in the batch, never in the fresh pass
    prompts = prompts_of(generator, [CORPUS[0], CORPUS[1], CORPUS[3] + " " + CORPUS[2]])
    outputs = generator.generate(prompts, temperature=temperature, top_p=1.0, max_new_tokens=12, seed=5)
    for prompt, out in zip(prompts, outputs, strict=True):
        assert len(out.ids) == len(out.logprobs) > 0
        expected = fresh_logprobs(generator.model, prompt, out.ids, temperature)
        torch.testing.assert_close(torch.tensor(out.logprobs), expected, atol=1e-4, rtol=1e-4)


def test_greedy_picks_the_argmax(generator):
    (prompt,) = prompts_of(generator, [CORPUS[0]])
    (out,) = generator.generate([prompt], temperature=0.0, top_p=1.0, max_new_tokens=8, seed=0)
    with torch.no_grad():
        logits = generator.model(torch.tensor([prompt + out.ids])).logits[0, len(prompt) - 1 : -1]
    assert out.ids == logits.argmax(-1).tolist()


def test_checkpoint_sampling_defaults_do_not_leak_in(generator):
    """Qwen checkpoints ship top_k / repetition_penalty; the recorded distribution must stay ours."""
    config = generator.model.generation_config
    saved = (config.top_k, config.repetition_penalty, config.temperature)
    config.top_k, config.repetition_penalty, config.temperature = 3, 1.5, 0.2
    try:
        (prompt,) = prompts_of(generator, [CORPUS[2]])
        (out,) = generator.generate([prompt], temperature=1.0, top_p=1.0, max_new_tokens=12, seed=1)
    finally:
        config.top_k, config.repetition_penalty, config.temperature = saved
    torch.testing.assert_close(torch.tensor(out.logprobs), fresh_logprobs(generator.model, prompt, out.ids))


def test_same_seed_same_tokens_other_seed_other_tokens(generator):
    prompts = prompts_of(generator, CORPUS[:4])
    first = generator.generate(prompts, temperature=1.0, top_p=1.0, max_new_tokens=16, seed=11)
    again = generator.generate(prompts, temperature=1.0, top_p=1.0, max_new_tokens=16, seed=11)
    other = generator.generate(prompts, temperature=1.0, top_p=1.0, max_new_tokens=16, seed=12)
    assert [g.ids for g in first] == [g.ids for g in again]
    assert [g.ids for g in first] != [g.ids for g in other]


def test_generation_stops_after_the_end_token(generator):
    """Force the end token by biasing the head: the response is exactly [eos] with its log-prob."""
    eos = generator.tokenizer.eos_token_id
    bias = torch.zeros(generator.model.config.vocab_size)
    bias[eos] = 50.0
    head = generator.model.lm_head
    handle = head.register_forward_hook(lambda module, args, out: out + bias)
    try:
        (prompt,) = prompts_of(generator, [CORPUS[1]])
        (out,) = generator.generate([prompt], temperature=1.0, top_p=1.0, max_new_tokens=8, seed=0)
    finally:
        handle.remove()
    assert out.ids == [eos]
    assert out.text == ""
    assert out.logprobs[0] == pytest.approx(0.0, abs=1e-6)
    assert not out.truncated


def test_a_response_without_an_end_token_is_kept_whole_and_marked_truncated(generator):
    eos = generator.tokenizer.eos_token_id
    bias = torch.zeros(generator.model.config.vocab_size)
    bias[eos] = -float("inf")
    handle = generator.model.lm_head.register_forward_hook(lambda module, args, out: out + bias)
    try:
        (prompt,) = prompts_of(generator, [CORPUS[1]])
        (out,) = generator.generate([prompt], temperature=1.0, top_p=1.0, max_new_tokens=5, seed=0)
    finally:
        handle.remove()
    assert out.truncated and len(out.ids) == len(out.logprobs) == 5 and eos not in out.ids


def test_nucleus_keeps_the_smallest_top_set_and_renormalizes():
    probs = torch.tensor([[0.5, 0.05, 0.3, 0.15]])
    recorder = SamplingDistribution(temperature=1.0, top_p=0.75)
    scores = recorder(torch.tensor([[7]]), probs.log())
    kept = torch.isfinite(scores)
    assert kept.tolist() == [[True, False, True, False]]
    logprobs = recorder.finish(torch.tensor([2]))  # token 2 was drawn
    assert logprobs.item() == pytest.approx(math.log(0.3 / 0.8), abs=1e-6)


def test_recorder_settles_each_step_with_the_token_drawn():
    recorder = SamplingDistribution(temperature=2.0, top_p=1.0)
    step0 = torch.tensor([[0.0, 2.0]])
    step1 = torch.tensor([[4.0, 0.0]])
    recorder(torch.tensor([[5]]), step0)
    recorder(torch.tensor([[5, 1]]), step1)  # token 1 was drawn at step 0
    logprobs = recorder.finish(torch.tensor([0]))  # token 0 at step 1
    expected = [math.log(math.e / (1 + math.e)), math.log(math.e**2 / (math.e**2 + 1))]
    assert logprobs[0].tolist() == pytest.approx(expected, abs=1e-6)


# ------------------------------------------------------------------ admissible-only decoding


def test_continuations_map_every_prefix_to_its_next_tokens():
    assert continuations([[1, 2, 9], [1, 3, 9], [4, 9]]) == {
        (): {1, 4},
        (1,): {2, 3},
        (1, 2): {9},
        (1, 3): {9},
        (4,): {9},
    }


def test_admissible_only_masks_each_row_by_its_own_prefix():
    allowed = [[[1, 2, 9], [1, 3, 9]], [], [[4, 9]]]
    processor = AdmissibleOnly(allowed, prompt_width=2)
    # row 0 has generated [1]; row 1 is free; row 2 has generated [5], which starts none of its responses
    input_ids = torch.tensor([[7, 7, 1], [7, 7, 6], [7, 7, 5]])
    scores = torch.zeros(3, 10)
    masked = processor(input_ids, scores)
    assert torch.isfinite(masked[0]).nonzero().flatten().tolist() == [2, 3]
    assert torch.isfinite(masked[1]).all() and torch.isfinite(masked[2]).all()


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_admissible_only_generation_spells_an_allowed_response_with_renormalized_logprobs(generator, temperature):
    tokenizer = generator.tokenizer
    eos = tokenizer.eos_token_id
    choices = ["<action>go to fridge 1</action>", "<action>move mug 1 to shelf 2</action>"]
    allowed = [tokenizer(text, add_special_tokens=False)["input_ids"] + [eos] for text in choices]
    prompts = prompts_of(generator, [CORPUS[0], CORPUS[3]])
    for seed in range(4):
        outputs = generator.generate(
            prompts, temperature=temperature, top_p=1.0, max_new_tokens=24, seed=seed, allowed=[allowed, allowed]
        )
        for prompt, out in zip(prompts, outputs, strict=True):
            assert out.ids in allowed
            # each step's log-prob is the model's, renormalized over the tokens that continue an allowed response
            with torch.no_grad():
                logits = generator.model(torch.tensor([prompt + out.ids])).logits[0, len(prompt) - 1 : -1].float()
            expected = []
            for step, token in enumerate(out.ids):
                following = sorted(continuations(allowed)[tuple(out.ids[:step])])
                row = torch.log_softmax(logits[step, following], -1)
                expected.append(row[following.index(token)].item())
                if temperature == 0:
                    assert token == following[row.argmax().item()]
            assert out.logprobs == pytest.approx(expected, abs=1e-4)
