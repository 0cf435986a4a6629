"""The mini benchmark: split hygiene (no held-out room, spec or pairing in train), counts, determinism
against the committed fingerprints, and real games that the engine plays and the searching expert wins."""

import json
import random
from collections import Counter

import pytest

from pipeline.envs import benchmark, games, minigen
from pipeline.envs.alfworld_env import AlfWorldGame
from pipeline.envs.games import TASK_TYPES, discover_games
from pipeline.errors import UserError

SPECS = benchmark.bench_specs()


@pytest.fixture(scope="module", autouse=True)
def alfworld_data(tmp_path_factory):
    """Importing alfworld creates $ALFWORLD_DATA (~/.cache/alfworld when unset): point it to a tmp dir."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ALFWORLD_DATA", str(tmp_path_factory.mktemp("alfworld_data")))
        yield


def test_no_valid_unseen_room_layout_occurs_in_train():
    rooms = benchmark.bench_rooms()
    train_layouts = {benchmark.layout_key(counts) for _, counts in rooms["train"].values()}
    unseen_layouts = [benchmark.layout_key(counts) for _, counts in rooms["valid_unseen"].values()]
    assert len(rooms["train"]) == 4 * benchmark.TRAIN_ROOMS and len(unseen_layouts) == 4 * benchmark.UNSEEN_ROOMS
    assert not train_layouts & set(unseen_layouts)
    assert len(set(unseen_layouts)) == len(unseen_layouts)  # and no two held-out rooms are the same room
    used = {split: {spec.scene for _, spec in chosen} for split, chosen in SPECS.items()}
    assert used["train"] <= set(rooms["train"]) and used["valid_seen"] <= set(rooms["train"])
    assert used["valid_unseen"] <= set(rooms["valid_unseen"]) and used["valid_unseen"].isdisjoint(used["train"])


def test_test_unseen_rooms_are_new_larger_and_equal_no_other_room():
    rooms = benchmark.bench_rooms()
    test = rooms["test_unseen"]
    assert len(test) == 4 * benchmark.TEST_ROOMS
    assert set(test).isdisjoint(rooms["train"]) and set(test).isdisjoint(rooms["valid_unseen"])
    assert all(benchmark.room_type(number) == room for number, (room, _) in test.items())  # ALFRED's ranges
    dev_layouts = {
        benchmark.layout_key(counts) for split in ("train", "valid_unseen") for _, counts in rooms[split].values()
    }
    test_layouts = [benchmark.layout_key(counts) for _, counts in test.values()]
    assert dev_layouts.isdisjoint(test_layouts) and len(set(test_layouts)) == len(test_layouts)
    sizes = Counter(sum(counts.values()) for _, counts in test.values())
    assert set(sizes) <= set(range(10, 15)) and max(sizes) >= 13  # larger than any dev room (6-9)
    assert all(sum(counts.values()) < 10 for split in ("train", "valid_unseen") for _, counts in rooms[split].values())
    assert {spec.scene for _, spec in SPECS["test_unseen"]} <= set(test)


def test_test_unseen_pairs_objects_and_parents_that_no_train_game_pairs():
    """Held out: the (object, parent) pairing; for look_at_obj_in_light (the lamp is the parent), the object."""
    train = {benchmark.pairing(spec) for _, spec in SPECS["train"]}
    assert all(benchmark.pairing(spec) not in train for _, spec in SPECS["test_unseen"])
    looked_at = {spec.obj for _, spec in SPECS["train"] if spec.task_type == "look_at_obj_in_light"}
    assert all(
        spec.obj not in looked_at for _, spec in SPECS["test_unseen"] if spec.task_type == "look_at_obj_in_light"
    )


def test_valid_seen_plays_train_rooms_with_tasks_train_never_has():
    train = {spec for _, spec in SPECS["train"]}
    assert all(spec not in train for _, spec in SPECS["valid_seen"])


def test_test_seen_plays_train_rooms_with_tasks_no_train_or_valid_seen_game_has():
    rooms = benchmark.bench_rooms()
    earlier = {spec for split in ("train", "valid_seen") for _, spec in SPECS[split]}
    assert all(spec not in earlier and spec.scene in rooms["train"] for _, spec in SPECS["test_seen"])


def test_split_sizes_and_task_type_balance():
    expected = {"train": 42, "valid_seen": 10, "valid_unseen": 10, "test_seen": 20, "test_unseen": 20}
    assert tuple(SPECS) == benchmark.BENCH_SPLITS and benchmark.GAMES_PER_TYPE == expected
    for split, split_games in SPECS.items():
        assert Counter(spec.task_type for _, spec in split_games) == dict.fromkeys(TASK_TYPES, expected[split])
        assert len({trial for trial, _ in split_games}) == len(split_games)  # every game has its own trial folder


def test_every_spec_is_feasible_in_its_room():
    """The rooms hold what each task needs: a device, a lamp, a parent, a place for the object to start."""
    layouts = benchmark.all_bench_rooms()
    for split, split_games in SPECS.items():
        for trial, spec in split_games:
            scene = minigen.build_scene(spec.scene, set(), layouts)
            placed = minigen.place_objects(spec, scene, random.Random(trial), set())  # raises if infeasible
            assert all(o.holder for o in placed), (split, trial)
            device = benchmark.DEVICES.get(spec.task_type)
            assert device is None or any(r.kind == device for r in scene.receptacles)


def test_specs_are_a_pure_function_of_names():
    benchmark.bench_rooms.cache_clear()
    assert benchmark.bench_specs() == SPECS


@pytest.fixture(scope="module")
def sample_games(tmp_path_factory):
    """One generated game per (split, task type): 30 real games, planned and verified by the generator."""
    out = tmp_path_factory.mktemp("bench")
    layouts = benchmark.all_bench_rooms()
    picked = {}
    for split, split_games in SPECS.items():
        for trial, spec in split_games:
            picked.setdefault((split, spec.task_type), (trial, spec))
    for (split, _), (trial, spec) in picked.items():
        minigen.generate_game(split, trial, spec, out, layouts)
    return out


def test_generated_games_match_the_committed_fingerprints(sample_games):
    """Regenerating gives the very bytes every other machine's benchmark has (data/alfworld-bench.sha256)."""
    committed = benchmark.committed_fingerprints()
    made = benchmark.fingerprints(sample_games)
    assert len(made) == 2 * 30 and set(made) <= set(committed)
    assert {name: committed[name] for name in made} == made
    assert len(committed) == 2 * sum(len(chosen) for chosen in SPECS.values())


def test_the_searching_expert_wins_the_sampled_games_from_their_first_state(sample_games):
    for split in benchmark.BENCH_SPLITS:
        for game in discover_games(sample_games, split):
            env = AlfWorldGame(str(game.path), expert="search")
            state = env.reset()
            for _ in range(30):
                assert state.expert_action in state.admissible, (game.game_id, state.expert_action)
                state = env.step(state.expert_action)
                if state.won:
                    break
            env.close()
            assert state.won, game.game_id
            walkthrough = json.loads(game.path.read_text())["walkthrough"]
            assert 3 <= len(walkthrough) <= 12


def test_a_missing_benchmark_is_one_line_that_names_prepare(monkeypatch, tmp_path):
    monkeypatch.setattr(games, "BENCH_DATA", tmp_path / "alfworld-bench")
    with pytest.raises(UserError, match="the mini benchmark is not built yet .* run `sage-opd prepare`"):
        games.resolve_data_root("bench", None)


def test_a_generated_set_that_differs_from_the_fingerprints_is_not_kept(monkeypatch, tmp_path):
    """Another alfworld could write other bytes: such a benchmark is refused, and nothing is left behind."""
    one = {"train": SPECS["train"][:1], "valid_seen": [], "valid_unseen": []}
    monkeypatch.setattr(benchmark, "bench_specs", lambda: one)
    out = tmp_path / "bench"
    with pytest.raises(UserError, match="differs from alfworld-bench.sha256 in 3 files"):
        benchmark.generate_benchmark(out, jobs=1, expected={"train/elsewhere/game.tw-pddl": "0" * 64})
    assert not out.exists() and list(tmp_path.iterdir()) == []
    trial, spec = SPECS["train"][0]
    prefix = f"json_2.1.1/train/{spec.folder}/{trial}/"
    expected = {name: digest for name, digest in benchmark.committed_fingerprints().items() if name.startswith(prefix)}
    assert len(expected) == 2 and benchmark.generate_benchmark(out, jobs=1, expected=expected) == 1
    assert benchmark.fingerprints(out) == expected


def test_an_older_benchmark_folder_is_regenerated_and_a_current_one_kept(monkeypatch, tmp_path):
    """A folder from before the test splits (other file names than the fingerprints') is generated anew."""
    calls = []
    monkeypatch.setattr(benchmark, "generate_benchmark", lambda out, jobs, progress, expected: calls.append(out) or 7)
    out = tmp_path / "bench"
    committed = benchmark.committed_fingerprints()
    older = [name for name in committed if "/test_" not in name]
    assert 0 < len(older) < len(committed)
    for name in older:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("")
    assert benchmark.ensure_benchmark(out)[0] == 7 and calls == [out]
    for name in committed:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("")
    assert benchmark.ensure_benchmark(out) == (0, 0.0) and calls == [out]  # names match: kept as it is
