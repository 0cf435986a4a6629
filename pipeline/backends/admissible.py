"""Decoding restricted to the responses that name one of the game's admissible actions.

Why: a tiny model that knows which action to take still has to spell it, and on the mini benchmark
most of the tiny teacher's wrong answers name a receptacle the room does not have or a verb the state
does not offer (README: the mini benchmark). ALFWorld agents with a fixed action set choose among the
admissible commands instead; this processor makes sampling do that at the token level: at each step
only the tokens that continue some admissible response are kept, so the model's own next-token
distribution, renormalized over them, decides which action is spelled. It runs before the sampler's
temperature and top-p, so the log-probs the sampler records are those of the distribution the token
was drawn from (the π_old the losses need).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from transformers import LogitsProcessor


def continuations(responses: Sequence[Sequence[int]]) -> dict[tuple[int, ...], set[int]]:
    """Every prefix of the token sequences, mapped to the tokens that may follow it."""
    table: dict[tuple[int, ...], set[int]] = defaultdict(set)
    for response in responses:
        for end in range(len(response)):
            table[tuple(response[:end])].add(response[end])
    return dict(table)


class AdmissibleOnly(LogitsProcessor):
    """Keeps, per row, only the tokens that continue one of that row's allowed responses.

    `allowed[i]` are the token sequences (ending with the end token) row i may produce; an empty list
    leaves the row free. A row whose generated prefix matches none of its sequences (it has ended and is
    being padded) is left as it is: masking it all would hand the sampler a distribution of no mass.
    """

    def __init__(self, allowed: Sequence[Sequence[Sequence[int]]], prompt_width: int) -> None:
        self.tables = [continuations(responses) for responses in allowed]
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_width :].tolist()
        keep = torch.ones_like(scores, dtype=torch.bool)
        for row, (table, prefix) in enumerate(zip(self.tables, generated, strict=True)):
            following = table.get(tuple(prefix))
            if following:
                keep[row] = False
                keep[row, list(following)] = True
        return scores.masked_fill(~keep, float("-inf"))
