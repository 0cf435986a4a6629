"""The mini benchmark: procedurally generated rooms, with held-out rooms for the unseen splits.

Why: the 24 shipped games replay the same 12 training games every round, so a student can only learn
those games. A benchmark that can show transfer needs many training games and, like ALFWorld's
valid_unseen, games in rooms the student never saw. Rooms here are generated per room type: a room
is a receptacle layout (classes and counts) drawn by an RNG seeded by the room's number alone.
- train: `TRAIN_ROOMS` rooms per room type, `GAMES_PER_TYPE["train"]` games per task type;
- valid_seen: the train rooms, with task specs (task, object, parent, room) that no train game has,
  and new object placements;
- valid_unseen: `UNSEEN_ROOMS` further rooms per room type whose layout equals no train room's;
- test_seen: the train rooms, with task specs that no train or valid_seen game has, new placements;
- test_unseen: `TEST_ROOMS` further rooms per room type, larger than any other split's
  (`TEST_ROOM_SIZE` receptacles), whose layout equals no other room's, and only (object, parent)
  pairings that no train game has (for look_at_obj_in_light: objects never examined under the lamp
  in train).
The valid_* splits are for development: choosing a listing, a prompt, a model or a hyperparameter.
The test_* splits are played only for final tables, never to choose any of these (issue #28).
Room numbers follow ALFRED's ranges (kitchens 1-30, living rooms 2xx, bedrooms 3xx, bathrooms 4xx).
Everything is a pure function of names and numbers, so the benchmark is the same on every machine;
`minigen` turns each spec into a verified game.
"""

from __future__ import annotations

import functools
import hashlib
import multiprocessing as mp
import os
import random
import time
from collections import Counter
from collections.abc import Collection, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.atomic import atomic_dir, write_text
from pipeline.config import GAMES_PER_WORKER
from pipeline.envs.games import BENCH_DATA, TASK_TYPES
from pipeline.errors import UserError

if TYPE_CHECKING:
    from pipeline.envs.minigen import TaskSpec

BENCH_SPLITS = ("train", "valid_seen", "valid_unseen", "test_seen", "test_unseen")
GAMES_PER_TYPE = {"train": 42, "valid_seen": 10, "valid_unseen": 10, "test_seen": 20, "test_unseen": 20}
TRAIN_ROOMS, UNSEEN_ROOMS, TEST_ROOMS = 12, 4, 6  # rooms per room type, numbered in this order from its base
# Which rooms each split plays (keys of `bench_rooms()`), which splits' specs it never repeats, and
# which splits' (object, parent) pairings it never uses. Order matters: a split follows those it avoids.
SPLIT_ROOMS = {
    "train": "train",
    "valid_seen": "train",
    "valid_unseen": "valid_unseen",
    "test_seen": "train",
    "test_unseen": "test_unseen",
}
NEW_SPECS_VERSUS = {"valid_seen": ("train",), "test_seen": ("train", "valid_seen")}
NEW_PAIRINGS_VERSUS = {"test_unseen": ("train",)}
ROOM_BASE = {"Kitchen": 1, "LivingRoom": 201, "Bedroom": 301, "Bathroom": 401}
LOADS_PER_GAME = 2  # engine loads to make a game: the planner's walkthrough, then its replay

# Per room type: receptacles every room has (the devices its tasks need, a lamp host), then optional
# ones with the most copies a room may hold. Only classes ALFRED lets hold some object.
ALWAYS: dict[str, dict[str, int]] = {
    "Kitchen": {"CounterTop": 1, "Fridge": 1, "Microwave": 1, "SinkBasin": 1},
    "LivingRoom": {"SideTable": 1},
    "Bedroom": {"Desk": 1},
    "Bathroom": {"SinkBasin": 1, "Toilet": 1},
}
OPTIONAL: dict[str, dict[str, int]] = {
    "Kitchen": {
        "CounterTop": 1,
        "Cabinet": 3,
        "Drawer": 2,
        "StoveBurner": 2,
        "DiningTable": 1,
        "CoffeeMachine": 1,
        "GarbageCan": 1,
        "Shelf": 1,
        "SideTable": 1,
    },
    "LivingRoom": {
        "Sofa": 1,
        "ArmChair": 1,
        "CoffeeTable": 1,
        "Drawer": 2,
        "Shelf": 2,
        "TVStand": 1,
        "Cabinet": 1,
        "Ottoman": 1,
        "Dresser": 1,
        "GarbageCan": 1,
    },
    "Bedroom": {
        "Bed": 1,
        "Drawer": 3,
        "Shelf": 2,
        "SideTable": 1,
        "Dresser": 1,
        "GarbageCan": 1,
        "Safe": 1,
        "LaundryHamper": 1,
        "ArmChair": 1,
    },
    "Bathroom": {
        "CounterTop": 1,
        "Cabinet": 3,
        "Drawer": 2,
        "TowelHolder": 1,
        "HandTowelHolder": 1,
        "GarbageCan": 1,
        "Shelf": 1,
        "BathtubBasin": 1,
    },
}
ROOM_SIZE = range(6, 10)  # receptacles per room, as in the shipped mini games
TEST_ROOM_SIZE = range(10, 15)  # test_unseen rooms: larger (at most what a room type's pools allow: 13 or 17)

# Which rooms can host each task type: the devices it needs (microwave, fridge, sink) or a lamp.
TASK_ROOMS: dict[str, tuple[str, ...]] = {
    "pick_and_place_simple": ("Kitchen", "LivingRoom", "Bedroom", "Bathroom"),
    "look_at_obj_in_light": ("LivingRoom", "Bedroom"),
    "pick_clean_then_place_in_recep": ("Kitchen", "Bathroom"),
    "pick_heat_then_place_in_recep": ("Kitchen",),
    "pick_cool_then_place_in_recep": ("Kitchen",),
    "pick_two_obj_and_place": ("Kitchen", "LivingRoom", "Bedroom", "Bathroom"),
}
# The receptacle a transform task uses: it is never the task's parent.
DEVICES = {
    "pick_clean_then_place_in_recep": "SinkBasin",
    "pick_heat_then_place_in_recep": "Microwave",
    "pick_cool_then_place_in_recep": "Fridge",
}


def room_type(number: int) -> str:
    """The room type of a room number (ALFRED's ranges)."""
    for room, base in sorted(ROOM_BASE.items(), key=lambda item: -item[1]):
        if number >= base:
            return room
    raise ValueError(f"room number {number} is in no ALFRED range")


def room_sizes(room: str, sizes: range = ROOM_SIZE) -> range:
    """The receptacle counts of `sizes` that a room type's pools can fill (ALWAYS plus every OPTIONAL)."""
    most = sum(ALWAYS[room].values()) + sum(OPTIONAL[room].values())
    return range(sizes.start, min(sizes.stop, most + 1))


def draw_layout(room: str, rng: random.Random, sizes: range = ROOM_SIZE) -> dict[str, int]:
    """A receptacle layout for a room type: the fixed receptacles plus a random set of optional ones,
    `sizes` receptacles in all."""
    counts = Counter(ALWAYS[room])
    pool = [kind for kind, most in OPTIONAL[room].items() for _ in range(most)]
    rng.shuffle(pool)
    for kind in pool[: rng.choice(room_sizes(room, sizes)) - sum(counts.values())]:
        counts[kind] += 1
    return dict(sorted(counts.items()))


def layout_key(counts: Mapping[str, int]) -> frozenset[tuple[str, int]]:
    """What makes two rooms the same room: their receptacle classes and counts."""
    return frozenset(counts.items())


def _held_out_rooms(
    first: int, count: int, sizes: range, seen: set[frozenset[tuple[str, int]]]
) -> dict[int, tuple[str, dict[str, int]]]:
    """`count` rooms per room type, numbered from its base + `first`, each with a layout not in `seen`
    (which gains them): a room redraws with the next attempt's seed until its layout is new."""
    rooms = {}
    for room, base in ROOM_BASE.items():
        for number in range(base + first, base + first + count):
            attempt = 0
            while True:
                counts = draw_layout(room, random.Random(f"bench-room/{number}/{attempt}"), sizes)
                if layout_key(counts) not in seen:
                    break
                attempt += 1
            seen.add(layout_key(counts))
            rooms[number] = (room, counts)
    return rooms


@functools.cache
def bench_rooms() -> dict[str, dict[int, tuple[str, dict[str, int]]]]:
    """{"train" | "valid_unseen" | "test_unseen": {room number: (room type, layout)}}: the held-out
    rooms' layouts equal no train room's nor each other's; test_unseen rooms are larger (`TEST_ROOM_SIZE`)."""
    train = {}
    for room, base in ROOM_BASE.items():
        for number in range(base, base + TRAIN_ROOMS):
            train[number] = (room, draw_layout(room, random.Random(f"bench-room/{number}")))
    seen = {layout_key(counts) for _, counts in train.values()}
    return {
        "train": train,
        "valid_unseen": _held_out_rooms(TRAIN_ROOMS, UNSEEN_ROOMS, ROOM_SIZE, seen),
        "test_unseen": _held_out_rooms(TRAIN_ROOMS + UNSEEN_ROOMS, TEST_ROOMS, TEST_ROOM_SIZE, seen),
    }


def all_bench_rooms() -> dict[int, tuple[str, dict[str, int]]]:
    """Every room of the benchmark by number (the layouts `minigen.build_scene` builds)."""
    return {number: room for rooms in bench_rooms().values() for number, room in rooms.items()}


def _objects_for(task_type: str, room: str) -> list[str]:
    """Object classes of a room that a task of this type can be about."""
    from pipeline.envs.minigen import ROOM_OBJECTS, TRANSFORMS, alfred_rules

    objects = list(ROOM_OBJECTS[room])
    if task_type in TRANSFORMS:
        able = alfred_rules().properties[TRANSFORMS[task_type][0]]
        objects = [o for o in objects if o in able]
    return objects


def _parents_for(task_type: str, obj: str, counts: Mapping[str, int]) -> list[str]:
    """Receptacle classes of a layout that can be the task's target for `obj` (a lamp for
    look_at_obj_in_light), leaving another class that can hold the object at the start."""
    from pipeline.envs.minigen import LAMP, holds

    holders = [kind for kind in counts if holds(kind, obj)]
    if task_type == "look_at_obj_in_light":
        return [LAMP] if holders else []
    parents = [kind for kind in holders if kind != DEVICES.get(task_type)]
    return [parent for parent in parents if any(kind != parent for kind in holders)]


def draw_spec(
    task_type: str,
    rooms: Mapping[int, tuple[str, Mapping[str, int]]],
    rng: random.Random,
    skip: Collection[tuple[str, str]] = frozenset(),
) -> TaskSpec:
    """A random feasible TaskSpec of `task_type` in one of `rooms`, with no (object, parent) pairing of `skip`."""
    from pipeline.envs.minigen import TaskSpec

    numbers = [n for n, (room, _) in sorted(rooms.items()) if room in TASK_ROOMS[task_type]]
    while True:
        number = rng.choice(numbers)
        room, counts = rooms[number]
        options = [(o, p) for o in _objects_for(task_type, room) for p in _parents_for(task_type, o, counts)]
        options = [option for option in options if option not in skip]
        if options:
            obj, parent = rng.choice(options)
            return TaskSpec(task_type, obj, parent, number)


def pairing(spec: TaskSpec) -> tuple[str, str]:
    """A spec's (object class, parent class) pairing; the parent is the lamp for look_at_obj_in_light."""
    return spec.obj, spec.parent


def bench_specs() -> dict[str, list[tuple[str, TaskSpec]]]:
    """{split: [(trial name, TaskSpec)]}: every game of the benchmark, in a fixed order.

    Each split draws in its rooms (`SPLIT_ROOMS`) and redraws a spec (task, object, parent, room) that a
    split of `NEW_SPECS_VERSUS` has; it never draws a pairing that a split of `NEW_PAIRINGS_VERSUS` has.
    Placement seeds name the split and the trial (`minigen.generate_game`), so every game's is its own.
    """
    rooms = bench_rooms()
    specs: dict[str, list[tuple[str, TaskSpec]]] = {}
    for split in BENCH_SPLITS:
        taken = {spec for other in NEW_SPECS_VERSUS.get(split, ()) for _, spec in specs[other]}
        skip = {pairing(spec) for other in NEW_PAIRINGS_VERSUS.get(split, ()) for _, spec in specs[other]}
        chosen = []
        for task_type in TASK_TYPES:
            rng = random.Random(f"bench/{split}/{task_type}")
            for _ in range(GAMES_PER_TYPE[split]):
                spec = draw_spec(task_type, rooms[SPLIT_ROOMS[split]], rng, skip)
                while spec in taken:
                    spec = draw_spec(task_type, rooms[SPLIT_ROOMS[split]], rng, skip)
                chosen.append(spec)
        specs[split] = [(f"trial_bench_{index:03d}", spec) for index, spec in enumerate(chosen)]
    return specs


def _init_worker(alfworld_data: str) -> None:
    os.environ["ALFWORLD_DATA"] = alfworld_data  # importing alfworld writes under it (~/.cache when unset)


def _generate_one(split: str, trial: str, spec, out: Path) -> int:
    from pipeline.envs.minigen import generate_game

    return len(generate_game(split, trial, spec, out, all_bench_rooms())[1])


FINGERPRINTS = BENCH_DATA.with_name(BENCH_DATA.name + ".sha256")  # committed; `sha256sum -c` reads it too


def fingerprints(root: Path) -> dict[str, str]:
    """{path under root: sha256} of every file of a generated game set."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(Path(root).rglob("*"))
        if path.is_file()
    }


def committed_fingerprints() -> dict[str, str]:
    """The fingerprints of the benchmark as generated when it was designed (data/alfworld-bench.sha256)."""
    lines = FINGERPRINTS.read_text(encoding="utf-8").splitlines()
    return {name: digest for digest, name in (line.split("  ", 1) for line in lines if line.strip())}


def write_fingerprints(root: Path, path: Path = FINGERPRINTS) -> None:
    write_text(path, "".join(f"{digest}  {name}\n" for name, digest in fingerprints(root).items()))


def is_current(out: Path) -> bool:
    """Whether `out` holds exactly the files the committed fingerprints name (by name: a set generated
    by an older design lacks splits or games, e.g. one from before the test splits)."""
    games = Path(out) / "json_2.1.1"
    names = {str(path.relative_to(out)) for path in games.rglob("*") if path.is_file()} if games.is_dir() else set()
    return names == set(committed_fingerprints())


def ensure_benchmark(out: Path = BENCH_DATA, jobs: int = 1, progress=None) -> tuple[int, float]:
    """Generate the benchmark into `out` unless it is there; returns (games generated, seconds).

    A set whose file names differ from the committed fingerprints' (an older design's) is regenerated
    whole, replacing it only once the new one is complete. A freshly generated set must equal the
    committed fingerprints byte for byte (another alfworld version could write other grammar text, and
    results would then not be comparable): otherwise it is refused and the old folder stays. `progress`
    (a bar with `begin(total)` and `advance()`) counts the games as they are verified.
    """
    if is_current(Path(out)):
        return 0, 0.0
    tick = time.perf_counter()
    count = generate_benchmark(Path(out), jobs, progress, expected=committed_fingerprints())
    return count, round(time.perf_counter() - tick, 1)


def generate_benchmark(out: Path, jobs: int = 1, progress=None, expected: dict[str, str] | None = None) -> int:
    """Generate and verify every benchmark game under `out` (written whole, or not at all); returns the count.

    With `expected` fingerprints, a set whose files differ from them is not kept (a UserError says so).

    Games are independent, so `jobs` processes generate them in parallel; each file depends only on its
    spec, so the result is byte-identical whatever `jobs` is. Each engine load keeps 34 MB of disk mapped until
    its process exits (pipeline/envs/workers.py), so a process makes a bounded number of games, then a fresh one
    takes over.
    """
    work = [(split, trial, spec) for split, games in bench_specs().items() for trial, spec in games]
    if progress is not None:
        progress.begin(len(work))
    with atomic_dir(Path(out)) as tmp:
        context = mp.get_context("spawn")
        with ProcessPoolExecutor(
            jobs,
            mp_context=context,
            initializer=_init_worker,
            initargs=(str(tmp),),
            max_tasks_per_child=GAMES_PER_WORKER // LOADS_PER_GAME,
        ) as pool:
            for future in [pool.submit(_generate_one, split, trial, spec, tmp) for split, trial, spec in work]:
                future.result()
                if progress is not None:
                    progress.advance()
        if expected is not None and (made := fingerprints(tmp)) != expected:
            differ = sorted(name for name in set(made) | set(expected) if made.get(name) != expected.get(name))
            raise UserError(
                f"the generated mini benchmark differs from {FINGERPRINTS.name} in {len(differ)} files "
                f"(first: {differ[0]}); is alfworld 0.4.2 installed? Nothing was kept."
            )
    return len(work)


def main(argv: list[str] | None = None) -> None:
    """CLI: generate the benchmark into a folder; `--write-fingerprints` records it as the reference set.

    python -m pipeline.envs.benchmark --out /tmp/bench --jobs 2 [--write-fingerprints]
    """
    import argparse

    parser = argparse.ArgumentParser(description="Generate the mini benchmark (train, valid_* and test_* splits).")
    parser.add_argument("--out", type=Path, default=BENCH_DATA, help="output root (replaced when complete)")
    parser.add_argument("--jobs", type=int, default=2, help="generator processes")
    parser.add_argument("--write-fingerprints", action="store_true", help=f"rewrite {FINGERPRINTS.name} from it")
    args = parser.parse_args(argv)
    tick = time.perf_counter()
    expected = None if args.write_fingerprints else committed_fingerprints()
    count = generate_benchmark(args.out, args.jobs, expected=expected)
    if args.write_fingerprints:
        write_fingerprints(args.out)
    print(f"{count} games written to {args.out} and verified in {time.perf_counter() - tick:.0f} s")


if __name__ == "__main__":
    main()
