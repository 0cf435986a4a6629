"""Reading the action out of a response, and the per-turn flags the rules and metrics rely on.

A response that lacks a well-formed `<action>` tag is still sent to the environment as-is (ALFWorld
answers "Nothing happens."), flagged `format_ok=False`: a garbled turn is data, never a crash. So is a
response cut by `max_new_tokens` (`truncated`): it sends the empty command.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ACTION_TAG = re.compile(r"<action>(.*?)</action>", re.DOTALL | re.IGNORECASE)
THINK_TAG = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
NOTHING_HAPPENS = "Nothing happens."


def normalize_action(text: str) -> str:
    """Lower-case, trimmed, inner whitespace collapsed: how commands are compared and sent."""
    return " ".join(text.lower().split())


@dataclass(frozen=True)
class ParsedAction:
    action: str
    format_ok: bool


# A response cut by the token limit said nothing in full: no action (the engine answers the empty
# command with "Nothing happens."), however well-formed its unfinished text may look.
UNFINISHED = ParsedAction("", False)


def parse_action(response: str, think: bool = False) -> ParsedAction:
    """The action inside the first `<action>` tag.

    `format_ok` needs exactly one non-empty action tag, and, when reasoning is asked for, a closed
    `<think>` block before it. Without a tag, the whole response (normalized) is the action.
    """
    tags = ACTION_TAG.findall(response)
    if not tags:
        return ParsedAction(normalize_action(response), False)
    action = normalize_action(tags[0])
    format_ok = len(tags) == 1 and bool(action)
    if think:
        thought = THINK_TAG.search(response)
        format_ok = format_ok and thought is not None and thought.end() <= response.lower().find("<action>")
    return ParsedAction(action, format_ok)


def command_verb(command: str) -> str:
    """The command's first word ("take" in "take apple 1 from fridge 1"; "" for no command)."""
    return command.split(" ", 1)[0]
