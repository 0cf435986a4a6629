"""The agent's prompt: our own wording, rendered through the model's chat template.

Each turn is its own training sample, so a prompt must stand alone: the task, where the agent is in
the episode, its last few (observation, action) pairs, optionally the memory line (the places it has
visited and what it found there, pipeline/envs/memory.py), what it sees now and the actions it may take.
The response format is fixed (`<think>…</think>` optional, then `<action>…</action>`) so the action
can be parsed back out; `format_response` writes a response in that same format for the expert.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SYSTEM_WITH_THINKING = (
    "You are a household robot playing a text adventure. Each turn you read what you see and pick "
    "exactly one of the admissible actions. First reason briefly inside <think></think>, then give "
    "the action inside <action></action>, copied exactly from the list."
)
SYSTEM_ACTION_ONLY = (
    "You are a household robot playing a text adventure. Each turn you read what you see and pick "
    "exactly one of the admissible actions. Answer with the action inside <action></action>, copied "
    "exactly from the list, and nothing else."
)


@dataclass(frozen=True)
class TurnView:
    """Everything the agent may see at one turn (no reward, no success signal)."""

    task: str
    turn: int
    max_steps: int
    history: tuple[tuple[str, str], ...]  # (observation, action) pairs, oldest first
    observation: str
    admissible: tuple[str, ...]
    memory: str | None = None  # the memory line (pipeline/envs/memory.py), when `env.memory` is on


TASK_LINE = re.compile(r"^Your task: (.*)\.$", re.MULTILINE)


def render_user_message(view: TurnView) -> str:
    lines = [f"Your task: {view.task}.", f"This is step {view.turn + 1} of at most {view.max_steps}."]
    if view.history:
        lines.append("What happened just before:")
        first = view.turn - len(view.history)
        for offset, (observation, action) in enumerate(view.history):
            lines.append(f'- step {first + offset + 1}: you saw "{observation}" and did "{action}".')
    if view.memory is not None:
        lines.append(f"Places you have been, with what you found there: {view.memory}.")
    lines.append(f"What you see now: {view.observation}")
    lines.append("Admissible actions: " + ", ".join(view.admissible) + ".")
    lines.append("Which action do you take?")
    return "\n".join(lines)


def read_task(prompt_text: str) -> str:
    """The task sentence back from a rendered prompt (turn rows keep the prompt, not the task)."""
    match = TASK_LINE.search(prompt_text)
    return match.group(1) if match else ""


def build_messages(view: TurnView, think: bool) -> list[dict[str, str]]:
    system = SYSTEM_WITH_THINKING if think else SYSTEM_ACTION_ONLY
    return [{"role": "system", "content": system}, {"role": "user", "content": render_user_message(view)}]


def format_response(action: str, reasoning: str | None = None) -> str:
    """A response in the format the prompt asks for (used for expert turns)."""
    prefix = f"<think>{reasoning}</think>" if reasoning is not None else ""
    return f"{prefix}<action>{action}</action>"


class PromptRenderer:
    """Turns a `TurnView` into prompt text and token ids with a tokenizer's chat template.

    `think` also goes to the template as `enable_thinking`, the switch of Qwen3's templates: off, the
    template closes an empty thinking block in the prompt and the model answers with the action at once;
    on, the model reasons in its own <think></think> block before the action. Templates without the
    switch ignore it.
    """

    def __init__(self, tokenizer, think: bool) -> None:
        self.tokenizer = tokenizer
        self.think = think

    def render(self, view: TurnView) -> tuple[str, list[int]]:
        text = self.tokenizer.apply_chat_template(
            build_messages(view, self.think), add_generation_prompt=True, tokenize=False, enable_thinking=self.think
        )
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return text, list(ids)
