"""The memory line: what the agent has itself found in this episode, read back from its own observations.

Why: with `env.history: 0` a prompt shows only the present, so an agent cannot know which places it has
already searched; the memoryless searcher makes up for it with a fixed cyclic tour ("the next receptacle by
name after the one I stand at"), which a tiny model must learn to compute from a gap in a list. A line that
summarises the episode so far, e.g. "drawer 1: closed; countertop 1: apple 1, knife 2; cabinet 3: nothing",
lets a policy search by "the first place not yet seen" and go back to what it passed by.

It is built only from the observations the episode itself produced (the engine's own sentences, parsed
here), never from the game's hidden state or an expert's plan: it holds nothing the agent has not been
shown. The searching experts read the very same `Memory` when it is on (`search_expert.search_action`), so
their labels stay functions of what the prompt shows.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

CLOSED = "closed"  # a place seen closed and never opened: its contents are unknown

_CONTENTS = re.compile(
    r"(?:On the|The) (?P<place>[\w ]+? \d+)(?:, you see| is open\. In it, you see) (?P<items>[^.]*)\."
)
_CLOSED = re.compile(r"The (?P<place>[\w ]+? \d+) is closed\.")
_ARRIVE = re.compile(r"^You arrive at (?P<place>[\w ]+? \d+)\.")
_TAKE = re.compile(r"^You pick up the (?P<item>[\w ]+? \d+) from the (?P<place>[\w ]+? \d+)\.")
_PUT = re.compile(r"^You move the (?P<item>[\w ]+? \d+) to the (?P<place>[\w ]+? \d+)\.")


def kind(name: str) -> str:
    """Class of an engine name: "countertop 2" -> "countertop"."""
    return name.rsplit(" ", 1)[0]


def _items(text: str) -> tuple[str, ...]:
    """`a cellphone 1, a desklamp 1, and a watch 1` -> (cellphone 1, desklamp 1, watch 1); `nothing` -> ()."""
    if text.strip() == "nothing":
        return ()
    parts = [part.strip().removeprefix("and ").strip() for part in text.split(",")]
    return tuple(re.sub(r"^(?:a|an) ", "", part) for part in parts if part)


@dataclass
class Memory:
    """The places visited, in the order first visited, each with what was last seen in (or on) it."""

    contents: dict[str, tuple[str, ...] | str] = field(default_factory=dict)  # place -> items, or CLOSED

    @property
    def searched(self) -> frozenset[str]:
        """The places whose contents the episode has seen (a place only seen closed is not searched yet)."""
        return frozenset(place for place, items in self.contents.items() if items != CLOSED)

    def places_holding(self, object_class: str) -> list[str]:
        """The remembered places where an object of class `object_class` was last seen, in the order first visited."""
        return [
            place
            for place, items in self.contents.items()
            if items != CLOSED and any(kind(item) == object_class for item in items)
        ]

    def read(self, observation: str) -> None:
        """Take in one observation (the engine's sentence after a reset or a step)."""
        if arrived := _ARRIVE.match(observation):
            self.contents.setdefault(arrived["place"], CLOSED)
        if closed := _CLOSED.search(observation):  # contents seen before it was closed again are kept
            self.contents.setdefault(closed["place"], CLOSED)
        for seen in _CONTENTS.finditer(observation):
            self.contents[seen["place"]] = _items(seen["items"])
        if taken := _TAKE.match(observation):
            self._change(taken["place"], remove=taken["item"])
        if put := _PUT.match(observation):
            self._change(put["place"], add=put["item"])

    def _change(self, place: str, add: str | None = None, remove: str | None = None) -> None:
        items = self.contents.get(place, ())
        items = () if items == CLOSED else items
        kept = tuple(item for item in items if item != remove)
        self.contents[place] = (*kept, add) if add else kept

    def render(self) -> str:
        """The line the prompt shows: `drawer 1: closed; countertop 1: apple 1, knife 2; shelf 1: nothing`.

        Every name follows a space, as in the engine's sentences, so a tokenizer trained on those splits it
        the same way here ("(apple" would not be " apple")."""
        if not self.contents:
            return "nothing yet"
        return "; ".join(f"{place}: {_describe(items)}" for place, items in self.contents.items())


def _describe(items: tuple[str, ...] | str) -> str:
    if items == CLOSED:
        return CLOSED
    return ", ".join(items) if items else "nothing"


def recall(observations: Iterable[str]) -> Memory:
    """The memory of an episode whose observations so far (first one included) are `observations`."""
    memory = Memory()
    for observation in observations:
        memory.read(observation)
    return memory
