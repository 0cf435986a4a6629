"""The next-action probe: exactly "would greedy decoding answer this response", grouped by verb."""

from conftest import CORPUS

from pipeline.action_probe import ALL, accuracy_by_verb, action_verb, greedy_matches


def test_accuracy_by_verb_counts_each_state_once_per_verb_and_once_in_all():
    verbs = ["go", "go", "take", "go", "open"]
    matches = [True, False, True, True, False]
    assert accuracy_by_verb(verbs, matches) == {ALL: [3, 5], "go": [2, 3], "take": [1, 1], "open": [0, 1]}
    assert accuracy_by_verb([], []) == {}


def test_action_verb_reads_the_action_inside_the_tags(generator):
    tokenizer = generator.tokenizer
    ids = tokenizer("<action>move mug 1 to shelf 2</action>", add_special_tokens=False)["input_ids"]
    assert action_verb(tokenizer, ids + [tokenizer.eos_token_id]) == "move"


def test_a_greedy_answer_matches_and_any_other_token_does_not(generator):
    tokenizer = generator.tokenizer
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in (CORPUS[0], CORPUS[3], CORPUS[1])]
    greedy = generator.generate(prompts, temperature=0.0, top_p=1.0, max_new_tokens=6, seed=0)
    rows = [(prompt, out.ids) for prompt, out in zip(prompts, greedy, strict=True)]
    off_by_one = [(prompt, response[:-1] + [(response[-1] + 1) % len(tokenizer)]) for prompt, response in rows]
    # prompts of different lengths share a padded batch, or go one at a time: the same answer
    for batch_size in (1, 3):
        assert (
            greedy_matches(generator.model, rows + off_by_one, tokenizer.pad_token_id, batch_size)
            == [True] * 3 + [False] * 3
        )
