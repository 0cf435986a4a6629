"""Generator of the mini ALFWorld game set shipped in `data/alfworld-mini`.

Why: tests and the default (tiny, CPU) config must play real ALFWorld games (the real PDDL engine, real
admissible commands, real `won`) without the 376 MB ALFRED data, and with resets fast enough for tests.
So we build our own small games (6-8 receptacles, 3-7 objects) from the alfred PDDL domain and grammar
that the `alfworld` wheel ships, laid out like `json_2.1.1` so the same discovery code reads both.

A game = a scene (a room's receptacles, fixed per scene number as in ALFRED) + a task spec (task type,
target object class, parent receptacle class) + objects placed by an RNG seeded from the game's name.
Its walkthrough comes from the Fast Downward planner inside textworld; the game is then replayed in the
engine exactly as the project's env loads it and must win at its last step only, or generation fails.
Running it twice gives byte-identical files. The mini benchmark (`pipeline/envs/benchmark.py`) builds
its 612 games with the same functions, over generated rooms instead of the hand-written `SCENES`.

    python -m pipeline.envs.minigen --out data/alfworld-mini
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import textworld

from pipeline.atomic import atomic_dir, write_json
from pipeline.envs.games import MINI_SPLITS, TASK_TYPES

WALKTHROUGH_STEPS = range(3, 13)
# FloorLamps stand on no receptacle in ALFWorld, so ToggleObject never applies to them: the real data's
# look_at_obj_in_light games all use a DeskLamp, and so do ours.
LAMP = "DeskLamp"
LAMP_HOSTS = ("Desk", "SideTable", "Dresser")

# Objects that make sense in each kind of room (ALFRED classes); distractors are drawn from these.
ROOM_OBJECTS: dict[str, tuple[str, ...]] = {
    "Kitchen": (
        "Apple",
        "Bowl",
        "Bread",
        "ButterKnife",
        "Cup",
        "DishSponge",
        "Egg",
        "Fork",
        "Kettle",
        "Knife",
        "Lettuce",
        "Mug",
        "Pan",
        "PepperShaker",
        "Plate",
        "Pot",
        "Potato",
        "SaltShaker",
        "Spatula",
        "Spoon",
        "Tomato",
        "WineBottle",
    ),
    "LivingRoom": (
        "Book",
        "Box",
        "CellPhone",
        "CreditCard",
        "KeyChain",
        "Laptop",
        "Newspaper",
        "Pillow",
        "RemoteControl",
        "Statue",
        "TissueBox",
        "Vase",
        "Watch",
    ),
    "Bedroom": (
        "AlarmClock",
        "BaseballBat",
        "BasketBall",
        "Book",
        "Bowl",
        "CD",
        "CellPhone",
        "CreditCard",
        "KeyChain",
        "Laptop",
        "Mug",
        "Pen",
        "Pencil",
        "Pillow",
    ),
    "Bathroom": (
        "Candle",
        "Cloth",
        "DishSponge",
        "HandTowel",
        "SoapBar",
        "SoapBottle",
        "SprayBottle",
        "TissueBox",
        "ToiletPaper",
    ),
}

# Scene number (ALFRED's ranges: kitchens 1-30, living rooms 2xx, bedrooms 3xx, bathrooms 4xx) ->
# room and receptacle classes with counts. Scenes 28, 226, 327 and 421 are used by valid_unseen only.
SCENES: dict[int, tuple[str, dict[str, int]]] = {
    3: ("Kitchen", {"CounterTop": 2, "Cabinet": 1, "Fridge": 1, "Microwave": 1, "SinkBasin": 1, "StoveBurner": 1}),
    7: (
        "Kitchen",
        {
            "CounterTop": 1,
            "DiningTable": 1,
            "Drawer": 2,
            "Fridge": 1,
            "Microwave": 1,
            "SinkBasin": 1,
            "CoffeeMachine": 1,
        },
    ),
    28: (
        "Kitchen",
        {"CounterTop": 1, "Cabinet": 2, "Fridge": 1, "Microwave": 1, "SinkBasin": 1, "StoveBurner": 1, "GarbageCan": 1},
    ),
    205: ("LivingRoom", {"Sofa": 1, "ArmChair": 1, "CoffeeTable": 1, "SideTable": 1, "Drawer": 1, "GarbageCan": 1}),
    226: ("LivingRoom", {"Sofa": 1, "Shelf": 2, "TVStand": 1, "SideTable": 1, "Cabinet": 1}),
    312: ("Bedroom", {"Bed": 1, "Desk": 1, "Drawer": 2, "Shelf": 1, "GarbageCan": 1}),
    327: ("Bedroom", {"Bed": 1, "SideTable": 1, "Dresser": 1, "Drawer": 1, "Safe": 1, "LaundryHamper": 1}),
    409: ("Bathroom", {"CounterTop": 1, "SinkBasin": 1, "Toilet": 1, "Cabinet": 2, "TowelHolder": 1}),
    421: (
        "Bathroom",
        {"CounterTop": 1, "SinkBasin": 1, "Toilet": 1, "Drawer": 1, "HandTowelHolder": 1, "GarbageCan": 1},
    ),
}

Layouts = Mapping[int, tuple[str, Mapping[str, int]]]  # scene number -> (room, receptacle counts)


@dataclass(frozen=True)
class TaskSpec:
    """One game to generate: task type, target object class, parent receptacle class (or lamp), scene."""

    task_type: str
    obj: str
    parent: str  # the receptacle class to put the object in; the lamp class for look_at_obj_in_light
    scene: int

    @property
    def folder(self) -> str:
        """The ALFWorld folder name: <task_type>-<Obj>-<MRecep or None>-<Parent>-<scene>."""
        return f"{self.task_type}-{self.obj}-None-{self.parent}-{self.scene}"


_T = TaskSpec
SPECS: dict[str, tuple[TaskSpec, ...]] = {
    "train": (
        _T("pick_and_place_simple", "CellPhone", "Bed", 312),
        _T("pick_and_place_simple", "SoapBottle", "Toilet", 409),
        _T("look_at_obj_in_light", "Book", LAMP, 312),
        _T("look_at_obj_in_light", "RemoteControl", LAMP, 205),
        _T("pick_clean_then_place_in_recep", "Plate", "CounterTop", 3),
        _T("pick_clean_then_place_in_recep", "Cloth", "Cabinet", 409),
        _T("pick_heat_then_place_in_recep", "Potato", "CounterTop", 3),
        _T("pick_heat_then_place_in_recep", "Egg", "DiningTable", 7),
        _T("pick_cool_then_place_in_recep", "Tomato", "CounterTop", 7),
        _T("pick_cool_then_place_in_recep", "WineBottle", "Cabinet", 3),
        _T("pick_two_obj_and_place", "KeyChain", "Sofa", 205),
        _T("pick_two_obj_and_place", "Pencil", "Drawer", 312),
    ),
    "valid_seen": (
        _T("pick_and_place_simple", "Pillow", "ArmChair", 205),
        _T("look_at_obj_in_light", "CD", LAMP, 312),
        _T("pick_clean_then_place_in_recep", "Mug", "CoffeeMachine", 7),
        _T("pick_heat_then_place_in_recep", "Bread", "CounterTop", 3),
        _T("pick_cool_then_place_in_recep", "Lettuce", "DiningTable", 7),
        _T("pick_two_obj_and_place", "SprayBottle", "Toilet", 409),
    ),
    "valid_unseen": (
        _T("pick_and_place_simple", "Vase", "Shelf", 226),
        _T("look_at_obj_in_light", "AlarmClock", LAMP, 327),
        _T("pick_clean_then_place_in_recep", "SoapBar", "CounterTop", 421),
        _T("pick_heat_then_place_in_recep", "Cup", "Cabinet", 28),
        _T("pick_cool_then_place_in_recep", "Pan", "StoveBurner", 28),
        _T("pick_two_obj_and_place", "CreditCard", "Dresser", 327),
    ),
}

# The object state each transform task asks for: (ability predicate, state predicate).
TRANSFORMS = {
    "pick_clean_then_place_in_recep": ("cleanable", "isClean"),
    "pick_heat_then_place_in_recep": ("heatable", "isHot"),
    "pick_cool_then_place_in_recep": ("coolable", "isCool"),
}
# Constants that the domain's actions name (CleanObject, HeatObject, ...): a problem must declare them.
DOMAIN_TYPES = {"otype": ("ButterKnife", "Knife"), "rtype": ("Fridge", "Microwave", "SinkBasin")}


@dataclass(frozen=True)
class Thing:
    """A receptacle or an object: ALFRED id ("Mug|+01.25|+00.90|-02.00"), class and location."""

    alfred_id: str
    kind: str
    location: str  # ALFRED location id "loc|x|z|rotation|horizon"
    holder: str = ""  # for objects: the ALFRED id of the receptacle it is in


@dataclass(frozen=True)
class Scene:
    """A room: its receptacles, fixed objects (a desk lamp on its first desk-like receptacle), start."""

    room: str
    receptacles: tuple[Thing, ...]
    fixtures: tuple[Thing, ...]
    agent_location: str


@dataclass(frozen=True)
class Rules:
    """What ALFRED allows, from the tables the alfworld wheel ships."""

    can_contain: Mapping[str, frozenset[str]]  # receptacle class -> object classes
    openable: frozenset[str]  # receptacle classes
    properties: Mapping[str, frozenset[str]]  # init predicate -> object classes it holds for


@functools.cache
def alfred_rules() -> Rules:
    """ALFRED's receptacle and object tables (alfworld is imported late: importing it creates
    $ALFWORLD_DATA, ~/.cache/alfworld when unset)."""
    from alfworld.gen import constants

    can_contain = {r: frozenset(objs) for r, objs in constants.VAL_RECEPTACLE_OBJECTS.items()}
    abilities = ("Cleanable", "Heatable", "Coolable", "Toggleable", "Sliceable")
    properties = {
        "pickupable": frozenset().union(*can_contain.values()),
        "isReceptacleObject": frozenset(constants.MOVABLE_RECEPTACLES),
        **{name.lower(): frozenset(constants.VAL_ACTION_OBJECTS[name]) for name in abilities},
    }
    return Rules(can_contain, frozenset(constants.OPENABLE_CLASS_LIST), properties)


def holds(receptacle: str, obj: str) -> bool:
    """Whether ALFRED lets a receptacle of class `receptacle` hold an object of class `obj`."""
    return obj in alfred_rules().can_contain.get(receptacle, ())


def mangle(alfred_id: str) -> str:
    """ALFRED id -> PDDL name as the ALFWorld data spells it ("Mug|+01.25" -> "Mug_bar__plus_01_dot_25")."""
    for char, word in (("|", "_bar_"), ("-", "_minus_"), ("+", "_plus_"), (".", "_dot_"), (",", "_comma_")):
        alfred_id = alfred_id.replace(char, word)
    return alfred_id


def _unique(rng: random.Random, used: set[str], make: Callable[[random.Random], str]) -> str:
    """Draw with `make(rng)` until the result is not in `used`; record and return it."""
    new = make(rng)
    while new in used:
        new = make(rng)
    used.add(new)
    return new


def _location(rng: random.Random) -> str:
    """A random ALFRED location id: grid x, z, rotation (quarter turns) and camera horizon."""
    return f"loc|{rng.randint(-9, 9)}|{rng.randint(-9, 9)}|{rng.randint(0, 3)}|{rng.choice((0, 15, 30, 45, 60))}"


def _id_maker(kind: str, suffix: str = "") -> Callable[[random.Random], str]:
    """Random ALFRED ids for class `kind`: the class, then x|y|z in metres (a sink's ends in |SinkBasin)."""

    def make(rng: random.Random) -> str:
        x, y, z = rng.uniform(-3, 3), rng.uniform(0, 1.8), rng.uniform(-3, 3)
        return f"{kind}|{x:+06.2f}|{y:+06.2f}|{z:+06.2f}{suffix}"

    return make


def build_scene(number: int, used: set[str], layouts: Layouts = SCENES) -> Scene:
    """Scene `number` of `layouts`, the same at every call: its RNG is seeded by the number alone."""
    rng = random.Random(f"scene/{number}")
    room, counts = layouts[number]
    receptacles = []
    for kind, count in counts.items():
        # A basin's ALFRED id names its fixture first ("Sink|...|SinkBasin"): the engine's names read "sinkbasin 1".
        make = _id_maker(kind.removesuffix("Basin"), f"|{kind}") if kind.endswith("Basin") else _id_maker(kind)
        receptacles += [Thing(_unique(rng, used, make), kind, _unique(rng, used, _location)) for _ in range(count)]
    hosts = [r for r in receptacles if r.kind in LAMP_HOSTS][:1]
    fixtures = tuple(Thing(_unique(rng, used, _id_maker(LAMP)), LAMP, h.location, h.alfred_id) for h in hosts)
    return Scene(room, tuple(receptacles), fixtures, _unique(rng, used, _location))


def _put(rng: random.Random, kind: str, scene: Scene, used: set[str], avoid: str = "") -> Thing:
    """A new object of class `kind` in a random receptacle that can hold it and is not of class `avoid`."""
    options = [r for r in scene.receptacles if holds(r.kind, kind) and r.kind != avoid]
    if not options:
        raise ValueError(f"scene {scene.room}: no receptacle can hold a {kind} (avoiding {avoid or 'none'})")
    holder = rng.choice(options)
    return Thing(_unique(rng, used, _id_maker(kind)), kind, holder.location, holder.alfred_id)


def place_objects(spec: TaskSpec, scene: Scene, rng: random.Random, used: set[str]) -> list[Thing]:
    """The task's target(s), never already in a receptacle of the parent class, and 2-4 distractors."""
    if spec.task_type == "look_at_obj_in_light" and not scene.fixtures:
        raise ValueError(f"{spec.folder}: the scene has no {'/'.join(LAMP_HOSTS)} to hold a {LAMP}")
    if spec.parent != LAMP and not holds(spec.parent, spec.obj):
        raise ValueError(f"{spec.folder}: a {spec.parent} cannot hold a {spec.obj}")
    n_targets = 2 if spec.task_type == "pick_two_obj_and_place" else 1
    objects = [_put(rng, spec.obj, scene, used, avoid=spec.parent) for _ in range(n_targets)]
    kinds = [k for k in ROOM_OBJECTS[scene.room] if k != spec.obj and any(holds(r.kind, k) for r in scene.receptacles)]
    return objects + [_put(rng, kind, scene, used) for kind in rng.sample(kinds, rng.randint(2, 4))]


def init_facts(scene: Scene, objects: Sequence[Thing]) -> list[str]:
    """The :init facts, with the predicates of the real games (`objects` include the scene's fixtures)."""
    rules = alfred_rules()
    facts = [f"(atLocation agent1 {mangle(scene.agent_location)})"]
    for r in scene.receptacles:
        name = mangle(r.alfred_id)
        facts += [f"(receptacleType {name} {r.kind}Type)", f"(receptacleAtLocation {name} {mangle(r.location)})"]
        facts += [f"(openable {name})"] if r.kind in rules.openable else []
    for o in objects:
        name = mangle(o.alfred_id)
        facts += [
            f"(objectType {name} {o.kind}Type)",
            f"(objectAtLocation {name} {mangle(o.location)})",
            f"(inReceptacle {name} {mangle(o.holder)})",
        ]
        facts += [f"({predicate} {name})" for predicate, kinds in rules.properties.items() if o.kind in kinds]
    rkinds, okinds = sorted({r.kind for r in scene.receptacles}), sorted({o.kind for o in objects})
    return facts + [f"(canContain {r}Type {o}Type)" for r in rkinds for o in okinds if holds(r, o)]


def goal_formula(spec: TaskSpec) -> str:
    """The :goal formula, shaped like the real games' goal for the task type."""
    o, r = spec.obj, spec.parent
    if spec.task_type == "look_at_obj_in_light":
        return (
            f"(exists (?ot - object ?r - receptacle ?a - agent ?l - location) (and (objectType ?ot {r}Type)"
            " (toggleable ?ot) (isToggled ?ot) (receptacleAtLocation ?r ?l) (atLocation ?a ?l)"
            " (inReceptacle ?ot ?r)))"
            f" (exists (?o - object ?a - agent) (and (objectType ?o {o}Type) (holds ?a ?o)))"
        )
    if spec.task_type == "pick_two_obj_and_place":
        return (
            f"(exists (?r - receptacle) (exists (?o1 - object) (and (objectType ?o1 {o}Type)"
            f" (receptacleType ?r {r}Type) (inReceptacle ?o1 ?r) (exists (?o2 - object) (and"
            f" (not (= ?o1 ?o2)) (objectType ?o2 {o}Type) (receptacleType ?r {r}Type) (inReceptacle ?o2 ?r))))))"
        )
    conditions = f"(objectType ?o {o}Type) (receptacleType ?r {r}Type)"
    if spec.task_type in TRANSFORMS:
        ability, state = TRANSFORMS[spec.task_type]
        conditions = f"({ability} ?o) {conditions} ({state} ?o)"
    return f"(exists (?r - receptacle) (exists (?o - object) (and {conditions} (inReceptacle ?o ?r))))"


def pddl_problem(name: str, spec: TaskSpec, scene: Scene, placed: Sequence[Thing]) -> str:
    """The PDDL problem text: declarations, :init facts and the task's :goal."""
    objects = [*scene.fixtures, *placed]
    otypes = sorted({o.kind for o in objects} | set(DOMAIN_TYPES["otype"]))
    rtypes = sorted({r.kind for r in scene.receptacles} | set(DOMAIN_TYPES["rtype"]))
    locations = sorted({mangle(r.location) for r in scene.receptacles} | {mangle(scene.agent_location)})
    declarations = [
        "agent1 - agent",
        *(f"{t}Type - otype" for t in otypes),
        *(f"{t}Type - rtype" for t in rtypes),
        *(f"{mangle(o.alfred_id)} - object" for o in objects),
        *(f"{mangle(r.alfred_id)} - receptacle" for r in scene.receptacles),
        *(f"{loc} - location" for loc in locations),
    ]
    return "\n".join(
        [
            f"(define (problem {name})",
            "(:domain alfred)",
            "(:objects",
            *declarations,
            ")",
            "(:init",
            *init_facts(scene, objects),
            ")",
            f"(:goal (and {goal_formula(spec)}))",
            ")",
            "",
        ]
    )


def traj_data(spec: TaskSpec) -> dict:
    """traj_data.json, with the keys of the real ALFWorld games."""
    look = spec.task_type == "look_at_obj_in_light"
    params = {
        "object_target": spec.obj,
        "parent_target": "" if look else spec.parent,
        "mrecep_target": "",
        "toggle_target": spec.parent if look else "",
        "object_sliced": False,
    }
    return {"task_type": spec.task_type, "pddl_params": params, "synthetic": True}


@contextmanager
def _seeded_global_random(seed: str) -> Iterator[None]:
    """Seed the global `random` for a block, then restore its state (alfworld draws goal templates there)."""
    saved = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(saved)


def task_grammar(traj: dict, seed: str) -> str:
    """The wheel's grammar with this task's text, added the way `alfworld-generate` does it."""
    from alfworld.agents.utils.misc import add_task_to_grammar
    from alfworld.info import ALFRED_TWL2_PATH

    with _seeded_global_random(seed):
        return add_task_to_grammar(Path(ALFRED_TWL2_PATH).read_text(), traj, rng=random.Random(seed))


def start_game(gamefile: Path, **infos: bool) -> textworld.Environment:
    """Load a game in the engine the way the project's env does (plus any extra `infos`)."""
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos

    request = textworld.EnvInfos(won=True, admissible_commands=True, extras=["gamefile"], **infos)
    return textworld.start(str(gamefile), request_infos=request, wrappers=[AlfredDemangler(), AlfredInfos])


def plan_walkthrough(gamefile: Path) -> list[str]:
    """An optimal solution from the Fast Downward planner, as demangled commands ("go to desk 1")."""
    env = start_game(gamefile, policy_commands=True)
    try:
        return list(env.reset()["policy_commands"])
    finally:
        env.close()


def verify_walkthrough(gamefile: Path, walkthrough: Sequence[str]) -> None:
    """Replay `walkthrough`; raise unless every command is admissible and `won` comes at the last step only."""
    if len(walkthrough) not in WALKTHROUGH_STEPS:
        raise RuntimeError(
            f"{gamefile}: the walkthrough has {len(walkthrough)} steps, not "
            f"{WALKTHROUGH_STEPS.start}-{WALKTHROUGH_STEPS.stop - 1}"
        )
    env = start_game(gamefile)
    try:
        state = env.reset()
        for step, command in enumerate(walkthrough, 1):
            if state["won"] or command not in state.admissible_commands:
                raise RuntimeError(
                    f"{gamefile}: before step {step} ({command!r}) won={state['won']}, "
                    f"admissible={command in state.admissible_commands}"
                )
            state, _, done = env.step(command)
        if not (state["won"] and done):
            raise RuntimeError(f"{gamefile}: the walkthrough ends without a win")
    finally:
        env.close()


def generate_game(
    split: str, trial: str, spec: TaskSpec, out: Path, layouts: Layouts = SCENES
) -> tuple[Path, list[str]]:
    """Build, solve and verify one game, then write it under `out`; return its folder and walkthrough.

    The object placement is seeded by the game's path (split, folder, trial), so it is new in every game.
    """
    from alfworld.info import ALFRED_PDDL_PATH

    seed = f"{split}/{spec.folder}/{trial}"
    used: set[str] = set()
    scene = build_scene(spec.scene, used, layouts)
    placed = place_objects(spec, scene, random.Random(seed), used)
    traj = traj_data(spec)
    game = {
        "pddl_domain": Path(ALFRED_PDDL_PATH).read_text(),
        "grammar": task_grammar(traj, seed),
        "pddl_problem": pddl_problem(f"plan_{trial}", spec, scene, placed),
        "solvable": True,
    }
    # Solved and checked in a scratch folder, named with no ".z<digit>" in it: textworld takes any path
    # with one, anywhere, for a Z-machine game.
    with tempfile.TemporaryDirectory(prefix="minigen-") as scratch:
        gamefile = Path(scratch) / "game.tw-pddl"
        write_json(gamefile, game)
        game["walkthrough"] = plan_walkthrough(gamefile)
        write_json(gamefile, game)
        verify_walkthrough(gamefile, game["walkthrough"])
    folder = out / "json_2.1.1" / split / spec.folder / trial
    with atomic_dir(folder) as tmp:
        write_json(tmp / "traj_data.json", traj)
        write_json(tmp / "game.tw-pddl", game)
    return folder, game["walkthrough"]


def generate(
    out: Path, splits: Sequence[str] = MINI_SPLITS, task_types: Sequence[str] = TASK_TYPES
) -> Iterator[tuple[Path, list[str]]]:
    """Generate and verify the games of `splits` x `task_types`; yield each one's folder and walkthrough."""
    for split in splits:
        for index, spec in enumerate(SPECS[split]):
            if spec.task_type in task_types:
                yield generate_game(split, f"trial_mini_{index:02d}", spec, Path(out))


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: generate the mini set, printing one line per game and a summary."""
    parser = argparse.ArgumentParser(description="Generate the mini ALFWorld game set.")
    parser.add_argument("--out", type=Path, default=Path("data/alfworld-mini"), help="output root")
    parser.add_argument("--split", action="append", choices=MINI_SPLITS, help="only this split (repeatable)")
    parser.add_argument("--task-type", action="append", choices=TASK_TYPES, help="only this one (repeatable)")
    args = parser.parse_args(argv)
    # The output is an ALFWORLD_DATA-shaped root; pointing alfworld at it keeps it out of ~/.cache.
    os.environ.setdefault("ALFWORLD_DATA", str(args.out.resolve()))
    start, lengths = time.perf_counter(), []
    for folder, walkthrough in generate(args.out, args.split or MINI_SPLITS, args.task_type or TASK_TYPES):
        lengths.append(len(walkthrough))
        print(f"{folder.relative_to(args.out)}: {len(walkthrough)} steps: {' | '.join(walkthrough)}")
    print(
        f"{len(lengths)} games written to {args.out} and verified in {time.perf_counter() - start:.1f} s; "
        f"walkthroughs of {min(lengths, default=0)}-{max(lengths, default=0)} steps"
    )


if __name__ == "__main__":
    main()
