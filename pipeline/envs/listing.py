"""How the admissible actions are listed in a prompt: the engine's order, or a seeded shuffle of it.

Why only these two: a listing is part of the observation, and an order computed from the task or from
an expert's plan writes the decision into what the model reads. The retired `deliver_last` listing did
that (the tour backwards, the task's object and its delivery last): a four-line rule with no parameters
and no memory won 120 of 120 validation games under it (docs/mini-benchmark-history.md). `sorted` keeps
the engine's order (by name); `shuffled` permutes it with a seed derived from the episode and the turn
alone, so an agent must find an action by its words, not by its place, and a replay sees the same list.
"""

from __future__ import annotations

import random

from pipeline.seeding import derive_seed

LISTINGS = ("sorted", "shuffled")
# Listings earlier versions had; a config or record naming one gets a sentence, not a crash.
REMOVED_LISTINGS = ("from_here", "next_last", "task_last", "deliver_last")
REMOVED_REASON = (
    "it ordered the actions by the task or the searching expert's plan, so the list's order carried the decision "
    "(a four-line rule with no parameters won 120 of 120 validation games under deliver_last)"
)
REMOVED_WHY = f"was removed in issue #28: {REMOVED_REASON}; use env.listing: sorted or shuffled"


def list_actions(commands: list[str], listing: str, episode_id: str, turn: int) -> list[str]:
    """`commands` (the engine's order) as the prompt lists them at `turn` of episode `episode_id`."""
    if listing == "sorted":
        return list(commands)
    if listing == "shuffled":
        shuffled = list(commands)
        random.Random(derive_seed("listing", episode_id, turn)).shuffle(shuffled)
        return shuffled
    raise ValueError(f"listing must be one of {', '.join(LISTINGS)}, not {listing!r}")
