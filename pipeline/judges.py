"""Turn judgment: does the teacher step in at this turn, and how hard (skip / weak / strong)?

Decided after the environment's feedback, without any reward or success signal (SAGE-OPD is
verifier-free). Rules from the feedback run first and settle the clear mistakes; the remaining turns
go to one of three judges:
- `rules`: nothing more; a turn no rule flags is `weak` (no evidence either way);
- `likelihood`: the teacher scores every admissible action in the turn's context; `skip` when the
  student's action is the teacher's top choice, `strong` when its probability (softmax over the
  admissible actions of length-normalized log-probs) is below `strong_below`, `weak` otherwise;
- `prompt`: the teacher is asked, greedily, for one word; anything unparseable is `strong`
  (`label_source=fallback`, raw answer kept).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Protocol

from pipeline.backends.factory import Generator, Scorer
from pipeline.envs.actions import NOTHING_HAPPENS
from pipeline.envs.prompts import format_response, read_task
from pipeline.errors import UserError

LABELS = ("skip", "weak", "strong")
CUT_MARK = "[…]"  # where the prompt judge cut the front of a text to fit the teacher's context
LABEL_WORD = re.compile(r"\b(skip|weak|strong)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Judgment:
    label: str
    source: str  # rule | judge | fallback
    flags: tuple[str, ...] = ()
    output: str | None = None


def rule_flags(turn: dict[str, Any]) -> tuple[str, ...]:
    """The environment-feedback rules that fire on a turn (any of them makes it `strong`)."""
    checks = {
        "truncated": turn["truncated"],
        "malformed": not turn["format_ok"],
        "not_admissible": not turn["admissible"],
        "nothing_happens": turn["feedback"] == NOTHING_HAPPENS,
        "repeat": turn["repeated"],
    }
    return tuple(name for name, fired in checks.items() if fired)


class TurnJudge(Protocol):
    def judge(self, turns: list[dict[str, Any]], histories: list[list[tuple[str, str]]]) -> list[Judgment]:
        """Judge turns that no rule flagged; `histories` holds each turn's earlier (observation, action) pairs."""
        ...


def judge_turns(
    judge: TurnJudge, turns: list[dict[str, Any]], histories: list[list[tuple[str, str]]]
) -> list[Judgment]:
    """Rules first; only the turns they leave open reach the judge."""
    judgments: list[Judgment | None] = []
    open_turns, open_index = [], []
    for index, turn in enumerate(turns):
        flags = rule_flags(turn)
        judgments.append(Judgment("strong", "rule", flags) if flags else None)
        if not flags:
            open_turns.append(turn)
            open_index.append(index)
    for index, judgment in zip(open_index, judge.judge(open_turns, [histories[i] for i in open_index]), strict=True):
        judgments[index] = judgment
    return judgments  # type: ignore[return-value]


class RulesOnlyJudge:
    """No teacher call: what the rules leave open is `weak`."""

    def judge(self, turns: list[dict[str, Any]], histories: list[list[tuple[str, str]]]) -> list[Judgment]:
        return [Judgment("weak", "rule") for _ in turns]


class LikelihoodJudge:
    """The teacher ranks the admissible actions; works for any LM, tiny ones included.

    Each candidate is scored as the response it would be (`<action>…</action>` and the end token),
    continuing the turn's prompt; with reasoning on, it continues the student's own reasoning, so the
    teacher judges the action the student chose after thinking what it thought.
    """

    def __init__(self, scorer: Scorer, tokenizer, strong_below: float, think: bool) -> None:
        self.scorer = scorer
        self.tokenizer = tokenizer
        self.strong_below = strong_below
        self.think = think

    def judge(self, turns: list[dict[str, Any]], histories: list[list[tuple[str, str]]]) -> list[Judgment]:
        return [self._judge_one(turn) for turn in turns]

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _judge_one(self, turn: dict[str, Any]) -> Judgment:
        prefix = list(turn["prompt_ids"])
        if self.think:
            reasoning, _, _ = turn["response_text"].partition("<action>")
            prefix += self._encode(reasoning)
        actions = list(turn["admissible_commands"])
        eos = [self.tokenizer.eos_token_id]
        candidates = [self._encode(format_response(action)) + eos for action in actions]
        probs = softmax(self.scorer.action_scores(prefix, candidates))
        chosen = actions.index(turn["action"])
        best = max(range(len(actions)), key=probs.__getitem__)
        rank = 1 + sum(p > probs[chosen] for p in probs)
        label = "skip" if chosen == best else "strong" if probs[chosen] < self.strong_below else "weak"
        output = f"p={probs[chosen]:.4f} rank={rank}/{len(actions)} top={actions[best]!r} p_top={probs[best]:.4f}"
        return Judgment(label, "judge", (), output)


def softmax(scores: list[float]) -> list[float]:
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]
    total = sum(weights)
    return [w / total for w in weights]


JUDGE_SYSTEM = (
    "You grade single moves of a student playing a household text adventure. You see the task, the "
    "recent moves, what the student saw, what it answered and what the game replied. Reply with one "
    "word: skip if the move is right and needs no correction, weak if it is acceptable but not the best "
    "move, strong if it is a mistake the student must be corrected on."
)


def render_judge_request(turn: dict[str, Any], history: list[tuple[str, str]], task: str) -> str:
    lines = [f"Task: {task}"]
    if history:
        lines.append("Recent moves:")
        lines += [f'- saw "{observation}", did "{action}"' for observation, action in history]
    lines += [
        f"The student saw: {turn['observation']}",
        f"The student answered: {turn['response_text']}",
        f"The game replied: {turn['feedback']}",
        "Grade this move: skip, weak or strong?",
    ]
    return "\n".join(lines)


def parse_judgment(text: str) -> str | None:
    """The first of skip/weak/strong standing as a word in the answer, or None."""
    match = LABEL_WORD.search(text)
    return match.group(1).lower() if match else None


class PromptJudge:
    """Asks the teacher for a word, greedily; an unusable answer is `strong` (fallback).

    The request must fit the teacher's context with room for the answer (`max_prompt_tokens`, None: no
    limit). What the teacher grades stays whole: the game's reply and the question. To fit, the oldest
    moves go first, then the front of the student's answer (its reasoning; the action at its end stays),
    then the front of what the student saw; each cut is marked "[…]".
    """

    def __init__(
        self, generator: Generator, max_new_tokens: int, history: int, max_prompt_tokens: int | None = None
    ) -> None:
        self.generator = generator
        self.max_new_tokens = max_new_tokens
        self.history = history
        self.max_prompt_tokens = max_prompt_tokens

    def judge(self, turns: list[dict[str, Any]], histories: list[list[tuple[str, str]]]) -> list[Judgment]:
        if not turns:
            return []
        prompts = []
        for turn, history in zip(turns, histories, strict=True):
            recent = history[-self.history :] if self.history else []
            prompts.append(self._fitted_request(turn, recent))
        answers = self.generator.generate(
            prompts, temperature=0.0, top_p=1.0, max_new_tokens=self.max_new_tokens, seed=0
        )
        judgments = []
        for answer in answers:
            label = parse_judgment(answer.text)
            judgments.append(
                Judgment(label, "judge", (), answer.text) if label else Judgment("strong", "fallback", (), answer.text)
            )
        return judgments

    def _fitted_request(self, turn: dict[str, Any], history: list[tuple[str, str]]) -> list[int]:
        """The request's token ids, cut (see the class) until it fits `max_prompt_tokens`."""
        task, limit = read_task(turn["prompt_text"]), self.max_prompt_tokens
        ids = self._request(turn, history, task)
        if limit is None:
            return ids
        while len(ids) > limit and history:
            history = history[1:]
            ids = self._request(turn, history, task)
        for field in ("response_text", "observation"):
            whole = self._ids(turn[field])
            kept = len(whole)
            while len(ids) > limit and kept > 0:
                kept = max(0, min(kept - 1, kept - (len(ids) - limit)))  # fewer each time: the loop ends
                cut = CUT_MARK + self.generator.tokenizer.decode(whole[len(whole) - kept :]) if kept else CUT_MARK
                turn = {**turn, field: cut}
                ids = self._request(turn, history, task)
        if len(ids) > limit:
            raise UserError(
                f"the prompt judge's request for episode {turn['episode_id']!r} turn {turn['turn']} needs "
                f"{len(ids)} tokens with only the game's reply and the question left whole, more than the "
                f"{limit} the teacher's context leaves: raise sampling.max_model_len or use annotate.judge: likelihood"
            )
        return ids

    def _request(self, turn: dict[str, Any], history: list[tuple[str, str]], task: str) -> list[int]:
        tokenizer = self.generator.tokenizer
        messages = [
            {"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": render_judge_request(turn, history, task)},
        ]
        return self._ids(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))

    def _ids(self, text: str) -> list[int]:
        return self.generator.tokenizer(text, add_special_tokens=False)["input_ids"]
