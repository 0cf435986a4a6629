"""Next-action accuracy on held-out states: does a warm-started model pick the expert's action?

Why: an eval episode costs seconds of play per game and compounds every mistake into one bit (won or
not), so it says neither where a model fails nor by how much. Scoring the expert's action at states
the model has never been trained on is one forward pass per state and says which decisions are
wrong. On the mini benchmark it showed what eval could not: the 128x4 teacher picked the searching
expert's action at 43% of the valid_unseen states after 2.8 epochs, 26% of its `go to` choices, 91% of
its `open`s (n=600 states).

The score is teacher-forced and exact: a state counts as right when the model's most likely token at
every position of the expert's response is that response's token, i.e. greedy decoding would answer
the expert's action. States are grouped by the verb of the expert's action ("go", "take", ...).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from pipeline.envs.actions import command_verb, parse_action

ALL = "all"


def action_verb(tokenizer, response_ids: list[int]) -> str:
    """The first word of the action a response names ("go" for `<action>go to desk 1</action>`)."""
    return command_verb(parse_action(tokenizer.decode(response_ids, skip_special_tokens=True)).action)


def greedy_matches(
    model, rows: list[tuple[list[int], list[int]]], pad_token_id: int, batch_size: int = 32
) -> list[bool]:
    """For each (prompt ids, response ids): would greedy decoding produce exactly that response?"""
    import torch  # here, so that the CLI can read ALL without loading torch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    matches: list[bool] = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            length = max(len(prompt) + len(response) for prompt, response in batch)
            input_ids = torch.full((len(batch), length), pad_token_id, dtype=torch.long)
            attention = torch.zeros((len(batch), length), dtype=torch.long)
            for row, (prompt, response) in enumerate(batch):
                input_ids[row, : len(prompt) + len(response)] = torch.tensor(prompt + response)
                attention[row, : len(prompt) + len(response)] = 1
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
            predicted = logits.argmax(-1).cpu()
            for row, (prompt, response) in enumerate(batch):
                # the logits at position i predict token i + 1: the response is predicted from len(prompt) - 1 on
                guesses = predicted[row, len(prompt) - 1 : len(prompt) - 1 + len(response)]
                matches.append(guesses.tolist() == list(response))
    model.train(was_training)
    return matches


def accuracy_by_verb(verbs: Iterable[str], matches: Iterable[bool]) -> dict[str, list[int]]:
    """{verb: [right, states]} plus ALL, the verbs sorted by how many states they have."""
    right, total = Counter(), Counter()
    for verb, match in zip(verbs, matches, strict=True):
        for key in (ALL, verb):
            total[key] += 1
            right[key] += match
    return {key: [right[key], total[key]] for key, _ in total.most_common()}
