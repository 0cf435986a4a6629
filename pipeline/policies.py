"""Policies: who chooses the action at each turn.

`ExpertPolicy` replays the game's walkthrough (an ALFWorld expert solution); `NoisyExpertPolicy`
follows an env-side expert (the planner, or the searcher) from whatever state it is in, with random
detours (DAgger-style data for the tiny models' warm starts); `LMPolicy` samples from a language model
through a backend. All answer a batch of turns at
once and return the same record, so rollout and eval never care which one is playing. Expert
responses are written in the prompt's response format and tokenized with the run's tokenizer, so expert
turns can be trained on (SFT).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

from pipeline.backends.factory import Generator
from pipeline.backends.hf import Generation
from pipeline.config import SamplingConfig
from pipeline.envs.games import Game
from pipeline.envs.prompts import format_response


@dataclass(frozen=True)
class TurnRequest:
    """One turn to answer: the rendered prompt, plus what the experts read (game, turn, the env expert's action)."""

    prompt_ids: list[int]
    game: Game
    turn: int
    admissible: tuple[str, ...] = ()
    expert_action: str | None = None  # the env expert's next command from this state, when it runs one
    observation: str = ""  # what the game said last (the floors read its first words)


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
        return answer(self.tokenizer, action, self.reasoning)


def answer(tokenizer, action: str, reasoning: str | None) -> Generation:
    """A deterministic response naming `action`, in the prompt's format, ending with the end token (log-prob 0)."""
    text = format_response(action, reasoning)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return Generation(ids=ids, text=text, logprobs=[0.0] * len(ids))


def expert_answer(tokenizer, request: TurnRequest, reasoning: str | None) -> Generation:
    """The response naming the env expert's action at this state (what DAgger labels it with)."""
    if request.expert_action is None:
        raise ValueError("DAgger labels need the env expert's action: play with an env that runs one")
    return answer(tokenizer, request.expert_action, reasoning)


class SearchingExpertPolicy:
    """Plays the env's searching expert (`search` or `sweep`, run in the environment's workers): the ceiling
    of the benchmark tables. Unlike the walkthrough's planner it acts only on what the agent can know, so
    it wins what a policy that reads the prompt well could win."""

    def __init__(self, expert: str, tokenizer, think: bool) -> None:
        self.name = f"expert:{expert}"
        self.tokenizer = tokenizer
        self.reasoning = "" if think else None

    def act(self, requests: list[TurnRequest], seed: int) -> list[Generation]:
        return [expert_answer(self.tokenizer, request, self.reasoning) for request in requests]


class NoisyExpertPolicy:
    """Follows the env's expert from any state, with a random detour at each turn with probability `epsilon`.

    An expert that only ever saw the walkthrough's states has nothing sensible to say once a student
    strays from them, and a student's own states stray all the time. This policy's episodes leave the
    expert path and come back (the expert answers from wherever it is), and every state it visits is
    recorded in `demonstrations` with the expert's action there, as (prompt ids, response): DAgger's
    data, what the tiny models' warm starts learn from. A detour is, with even odds, a random admissible action
    (a wrong turn) or a walkthrough command that is not admissible here (a student running ahead of
    itself: "Nothing happens."), the two mistakes students make. Needs an env that runs an expert
    (`play_games(..., expert="planner" | "search")`).
    """

    name = "noisy-expert"

    def __init__(self, tokenizer, think: bool, epsilon: float) -> None:
        if not 0 <= epsilon <= 1:
            raise ValueError(f"epsilon must be in [0, 1], not {epsilon}.")
        self.tokenizer = tokenizer
        self.reasoning = "" if think else None
        self.epsilon = epsilon
        self.demonstrations: list[tuple[list[int], Generation]] = []

    def act(self, requests: list[TurnRequest], seed: int) -> list[Generation]:
        rng = random.Random(seed)
        responses = []
        for request in requests:
            expert = expert_answer(self.tokenizer, request, self.reasoning)
            self.demonstrations.append((list(request.prompt_ids), expert))
            detour = rng.random() < self.epsilon
            responses.append(answer(self.tokenizer, self._detour(request, rng), self.reasoning) if detour else expert)
        return responses

    @staticmethod
    def _detour(request: TurnRequest, rng: random.Random) -> str:
        ahead = [command for command in request.game.walkthrough if command not in request.admissible]
        if ahead and (rng.random() < 0.5 or not request.admissible):
            return rng.choice(ahead)
        return rng.choice(request.admissible) if request.admissible else "look"


class ExpertLabelledPolicy:
    """Plays another policy and records, at every state it reaches, the env expert's action there.

    DAgger proper: the noisy expert's detours are random, so the states a model's own mistakes lead
    to (holding the wrong object, walking in a loop) are rare in its data; playing the model and
    labelling where it goes adds exactly those. `demonstrations` has the shape of NoisyExpertPolicy's.
    """

    def __init__(self, inner: Policy, tokenizer, think: bool) -> None:
        self.inner = inner
        self.name = inner.name
        self.tokenizer = tokenizer
        self.reasoning = "" if think else None
        self.demonstrations: list[tuple[list[int], Generation]] = []

    def act(self, requests: list[TurnRequest], seed: int) -> list[Generation]:
        for request in requests:
            label = expert_answer(self.tokenizer, request, self.reasoning)
            self.demonstrations.append((list(request.prompt_ids), label))
        return self.inner.act(requests, seed)


class LMPolicy:
    """Samples responses from a causal LM (student, teacher or any checkpoint folder)."""

    def __init__(self, name: str, generator: Generator, sampling: SamplingConfig, temperature: float) -> None:
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
            allowed=[self._responses(request) for request in requests] if self.sampling.admissible_only else None,
        )

    def _responses(self, request: TurnRequest) -> list[list[int]]:
        """The token ids of a response naming each admissible action, as an expert would write it."""
        return [answer(self.generator.tokenizer, action, None).ids for action in request.admissible]
