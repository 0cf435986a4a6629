"""Zero-parameter policies: the floors every success rate is read against.

Why: a rate means little until one knows what a policy that learned nothing scores on the same games.
Under the retired `deliver_last` listing a four-line rule that never read the task won 120 of 120
validation games: the list's order carried the decision, and the models' numbers measured that. So
every benchmark table carries these beside the models (`eval --policy floor:NAME`):
- `random`: a uniformly random admissible command (report it over several seeds);
- `first` / `last`: the first / last command listed;
- `rule`: the best hand-written task-blind rule we could write. It reads what a listing shows without
  reading any name: the commands' verbs, their places in the list and the first words of the
  observation, never the task sentence nor an object or receptacle name. If such a rule wins, the form
  of the observation carries the decision; a program that reads the task and the names can solve
  ALFWorld, and that says nothing against a benchmark.
Each answers like the expert does (a response in the prompt's format, log-prob 0), so its episodes are
ordinary eval rows.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from pipeline.backends.hf import Generation
from pipeline.config import FLOORS
from pipeline.envs.actions import command_verb
from pipeline.policies import TurnRequest, answer

TRANSFORMS = ("clean", "heat", "cool")


def task_blind_rule(observation: str, admissible: Sequence[str], rng: random.Random) -> str:
    """What the task-blind rule does: explore at random, open what is closed, pick up what it finds, and use
    whatever the place offers for what it holds.

    1. `use` a lamp that stands here (a look_at_obj_in_light task ends there, with the object in hand);
    2. just arrived holding something where a `clean`/`heat`/`cool` is listed: do it (the device of a
       transformation task is the only place that lists one);
    3. `open` what is closed here;
    4. holding something, just arrived or just transformed it: put it down here (`move`), half the time;
    5. holding nothing: `take` a random one of what lies here;
    6. else `go to` a random place (or, where no place is listed, a random command).
    "Holding" is read from the verbs (only a held object can be moved), "arrived" from the observation's first
    two words; no name is ever compared with the task or with another name.
    """
    by_verb: dict[str, list[str]] = {}
    for command in admissible:
        by_verb.setdefault(command_verb(command), []).append(command)
    opening = " ".join(observation.split()[:2])
    holding = "move" in by_verb
    if "use" in by_verb:
        return by_verb["use"][0]
    transforms = [command for name in TRANSFORMS for command in by_verb.get(name, [])]
    if holding and transforms and opening == "You arrive":
        return transforms[0]
    if "open" in by_verb:
        return by_verb["open"][0]
    if holding and opening in ("You arrive", "You clean", "You heat", "You cool") and rng.random() < 0.5:
        return by_verb["move"][0]
    if not holding and "take" in by_verb:
        return rng.choice(by_verb["take"])
    return rng.choice(by_verb.get("go", list(admissible)))


def floor_action(floor: str, observation: str, admissible: Sequence[str], rng: random.Random) -> str:
    """The command floor `floor` takes (`look` when nothing is admissible, as the expert past its walkthrough)."""
    if not admissible:
        return "look"
    if floor == "random":
        return rng.choice(list(admissible))
    if floor == "first":
        return admissible[0]
    if floor == "last":
        return admissible[-1]
    if floor == "rule":
        return task_blind_rule(observation, admissible, rng)
    raise ValueError(f"floor must be one of {', '.join(FLOORS)}, not {floor!r}")


class FloorPolicy:
    """Plays floor `floor`; its random draws come from the step's seed, so an episode list replays exactly."""

    def __init__(self, floor: str, tokenizer, think: bool) -> None:
        if floor not in FLOORS:
            raise ValueError(f"floor must be one of {', '.join(FLOORS)}, not {floor!r}")
        self.floor = floor
        self.name = f"floor:{floor}"
        self.tokenizer = tokenizer
        self.reasoning = "" if think else None

    def act(self, requests: list[TurnRequest], seed: int) -> list[Generation]:
        rng = random.Random(seed)
        return [
            answer(self.tokenizer, floor_action(self.floor, r.observation, r.admissible, rng), self.reasoning)
            for r in requests
        ]
