"""Policies: who chooses the action at each turn.

`ExpertPolicy` replays the game's walkthrough (an ALFWorld expert solution); `LMPolicy` samples from
a language model through a backend. Both answer a batch of turns at once and return the same record,
so rollout and eval never care which one is playing. Expert responses are written in the prompt's
response format and tokenized with the run's tokenizer, so expert turns can be trained on (SFT).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pipeline.backends.hf import Generation, HFGenerator
from pipeline.config import SamplingConfig
from pipeline.envs.games import Game
from pipeline.envs.prompts import format_response


@dataclass(frozen=True)
class TurnRequest:
    """One turn to answer: the rendered prompt, plus the game and turn index (for the expert)."""

    prompt_ids: list[int]
    game: Game
    turn: int


class Policy(Protocol):
    name: str

    def act(self, requests: list[TurnRequest], seed: int) -> list[Generation]:
        """One response per request; `seed` makes sampling reproducible for the same batch."""
        ...


class ExpertPolicy:
    """Replays the walkthrough; past its end it looks around (the episode is over by then if it won).

    Its choice is deterministic, so the log-prob of every response token is 0 (probability 1). With
    reasoning on, its response carries an empty `<think></think>`: the walkthrough has no reasoning.
    """

    name = "expert"

    def __init__(self, tokenizer, think: bool) -> None:
        self.tokenizer = tokenizer
        self.reasoning = "" if think else None

    def act(self, requests: list[TurnRequest], seed: int) -> list[Generation]:
        return [self._respond(request) for request in requests]

    def _respond(self, request: TurnRequest) -> Generation:
        walkthrough = request.game.walkthrough
        action = walkthrough[request.turn] if request.turn < len(walkthrough) else "look"
        text = format_response(action, self.reasoning)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        return Generation(ids=ids, text=text, logprobs=[0.0] * len(ids))


class LMPolicy:
    """Samples responses from a causal LM (student, teacher or any checkpoint folder)."""

    def __init__(self, name: str, generator: HFGenerator, sampling: SamplingConfig, temperature: float) -> None:
        self.name = name
        self.generator = generator
        self.sampling = sampling
        self.temperature = temperature

    def act(self, requests: list[TurnRequest], seed: int) -> list[Generation]:
        return self.generator.generate(
            [request.prompt_ids for request in requests],
            temperature=self.temperature,
            top_p=self.sampling.top_p,
            max_new_tokens=self.sampling.max_new_tokens,
            seed=seed,
        )
