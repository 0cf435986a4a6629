"""An expert that searches like an agent must: it acts on what the agent can know, not on hidden facts.

Why: the Fast Downward planner knows where every object is, so its first move is "go to the drawer
the apple is in". On a game the agent has never seen, nothing in the prompt says which drawer that
is: a model that imitates the planner learns where objects were in the training games, which does
not transfer. This expert searches instead, and is memoryless: its action is a function of the
current state alone (where the agent is, what it holds, what is open, what lies in the receptacle in
front of it), each of which the prompt shows (the receptacle the agent stands at is the one missing
from the `go to` actions; what it holds appears in `move`/`examine` actions). So it can label any
state a student reaches (DAgger), and its labels are ones a model can learn to predict:
- holding the task's object: transform it at the device if the task asks and it is not done yet,
  then bring it to the first receptacle of the parent class (opening it if closed); for
  look_at_obj_in_light, use the lamp if it stands here, else go to the next receptacle a lamp can
  stand on (the lamp's place is not on screen once the agent has left it, so it is searched for too);
- holding something else: put it back where the agent stands;
- otherwise: take a task object lying in the open receptacle in front of the agent (not one already
  in place), open that receptacle if closed and it could hold one, else go to the next receptacle,
  in the order of the `go to` list, that can hold the object (ALFRED's receptacle table).
Sweeping the receptacles in a fixed cyclic order needs no memory and finds the object in one sweep.
"Next" is by name after the receptacle the agent stands at, wrapping around: in the engine's list (sorted by
name, the one it stands at left out) it is the first suitable `go to` after that gap.

With the memory line on (`env.memory`, pipeline/envs/memory.py) the prompt also says which places the
episode has visited and what it saw there, and the expert uses it: it goes back to a place where it saw the
object (or, holding it, the lamp) it needs, else to the first suitable receptacle by name whose contents it has
not seen, and only once it has seen them all does it fall back to the cyclic step.

The `sweep` variant (`every=True`) searches every receptacle but the task's parent class, and opens
every closed one it searches, instead of only those ALFRED's table lets hold the object. Its walks are
longer (mean 11.1 steps against 8.9 on the mini benchmark's training games), and its search needs no
table. Either is the ceiling of the benchmark tables (`eval --policy expert:search|sweep`): it wins what
a policy that reads the prompt well could win.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.envs.memory import Memory, kind

TRANSFORM_VERBS = {
    "pick_clean_then_place_in_recep": ("clean", "sinkbasin", "isclean"),
    "pick_heat_then_place_in_recep": ("heat", "microwave", "ishot"),
    "pick_cool_then_place_in_recep": ("cool", "fridge", "iscool"),
}
LOOK = "look_at_obj_in_light"


@functools.cache
def _holders() -> dict[str, frozenset[str]]:
    """Receptacle class (lower case) -> object classes it can hold, from ALFRED's table."""
    from alfworld.gen import constants

    return {r.lower(): frozenset(o.lower() for o in objs) for r, objs in constants.VAL_RECEPTACLE_OBJECTS.items()}


@dataclass(frozen=True)
class SearchTask:
    """What a game asks for, in the engine's lower-case class names."""

    task_type: str
    obj: str
    parent: str  # receptacle class; the lamp class for look_at_obj_in_light

    @classmethod
    def of_game(cls, gamefile: str | Path) -> SearchTask:
        """The task of a game, from the `traj_data.json` beside its game file (mini and real data alike)."""
        params = json.loads((Path(gamefile).parent / "traj_data.json").read_text(encoding="utf-8"))
        task_type, pddl = params["task_type"], params["pddl_params"]
        parent = pddl["toggle_target"] if task_type == LOOK else pddl["parent_target"]
        return cls(task_type, pddl["object_target"].lower(), parent.lower())


@functools.cache
def _lamp_hosts() -> frozenset[str]:
    """Receptacle classes (lower case) a desk lamp may stand on."""
    from pipeline.envs.minigen import LAMP_HOSTS

    return frozenset(host.lower() for host in LAMP_HOSTS)


class WorldState:
    """The facts of one engine state, indexed for the expert's questions."""

    def __init__(self, facts) -> None:
        self.pairs: dict[str, list[tuple[str, ...]]] = {}
        for fact in facts:
            self.pairs.setdefault(fact.name.lower(), []).append(tuple(v.name.strip() for v in fact.arguments))
        location = {args[1] for args in self.pairs.get("atlocation", []) if args[0].startswith("agent")}
        self.receptacles = sorted(args[0] for args in self.pairs.get("receptacleatlocation", []))
        here = [args[0] for args in self.pairs.get("receptacleatlocation", []) if args[1] in location]
        self.here = here[0] if here else None
        self.held = sorted(args[1] for args in self.pairs.get("holds", []))

    def unary(self, predicate: str) -> set[str]:
        return {args[0] for args in self.pairs.get(predicate, [])}

    def inside(self, receptacle: str) -> list[str]:
        return sorted(args[0] for args in self.pairs.get("inreceptacle", []) if args[1] == receptacle)

    def is_closed(self, receptacle: str) -> bool:
        return receptacle in self.unary("openable") and receptacle not in self.unary("opened")


def search_action(task: SearchTask, state: WorldState, every: bool = False, memory: Memory | None = None) -> str:
    """The expert's next command from `state` (see the module docstring for the rules); `every` sweeps
    every receptacle, not only those that can hold the object. With `memory` (the prompt's memory line, on
    when `env.memory` is) it searches by what it has found instead of by a cyclic tour: it goes back to a
    place where it saw what it looks for, else to the first place it has not seen."""
    if state.held:
        return _deliver(task, state, state.held[0], every, memory)
    here = state.here
    if here is not None and not state.is_closed(here) and kind(here) != task.parent:
        found = [o for o in state.inside(here) if kind(o) == task.obj]
        if found:
            return f"take {found[0]} from {here}"
    candidates = [
        r for r in state.receptacles if kind(r) != task.parent and (every or task.obj in _holders().get(kind(r), ()))
    ]
    seen_there = [r for r in memory.places_holding(task.obj) if kind(r) != task.parent] if memory else []
    if here is not None and (here in candidates or here in seen_there) and state.is_closed(here):
        return f"open {here}"
    if memory is None:
        return f"go to {_next_after(here, candidates)}"
    elsewhere = [r for r in seen_there if r != here]
    return f"go to {(elsewhere or [_first_unsearched(here, candidates, memory)])[0]}"


def _next_after(here: str | None, names: list[str]) -> str:
    """The first of `names` (sorted) after `here`, wrapping around: one step of a memoryless sweep."""
    later = [name for name in names if here is None or name > here]
    return (later or names)[0]


def _first_unsearched(here: str | None, names: list[str], memory: Memory) -> str:
    """The first of `names` (sorted) the episode has not searched; once all were, the memoryless sweep's step."""
    unseen = [name for name in names if name not in memory.searched]
    return unseen[0] if unseen else _next_after(here, names)


def _deliver(task: SearchTask, state: WorldState, held: str, every: bool, memory: Memory | None) -> str:
    """What to do while holding `held`."""
    here = state.here
    if kind(held) != task.obj:
        return f"move {held} to {here}" if here is not None else f"go to {state.receptacles[0]}"
    if task.task_type == LOOK:
        lamps_here = [o for o in state.inside(here) if kind(o) == task.parent] if here is not None else []
        if lamps_here:
            return f"use {lamps_here[0]}"
        hosts = [r for r in state.receptacles if every or kind(r) in _lamp_hosts()] or state.receptacles
        if memory is None:
            return f"go to {_next_after(here, hosts)}"
        seen_there = [r for r in memory.places_holding(task.parent) if r != here]
        return f"go to {(seen_there or [_first_unsearched(here, hosts, memory)])[0]}"
    if task.task_type in TRANSFORM_VERBS:
        verb, device_kind, done = TRANSFORM_VERBS[task.task_type]
        if held not in state.unary(done):
            device = next(r for r in state.receptacles if kind(r) == device_kind)
            return f"go to {device}" if here != device else f"{verb} {held} with {device}"
    parents = [r for r in state.receptacles if kind(r) == task.parent]
    started = [r for r in parents if any(kind(o) == task.obj for o in state.inside(r))]  # pick_two's first one
    target = (started or parents)[0]
    if here != target:
        return f"go to {target}"
    return f"open {target}" if state.is_closed(target) else f"move {held} to {target}"
