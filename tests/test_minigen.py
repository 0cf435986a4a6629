"""The shipped mini ALFWorld set: every game plays and wins in the real engine, the layout and counts
match the real data's, and the generator reproduces the shipped files byte for byte."""

import json
from collections import Counter
from pathlib import Path

import pytest

from pipeline.envs import minigen

MINI = Path(__file__).resolve().parents[1] / "data" / "alfworld-mini"
TRIALS = sorted(p.parent for p in MINI.glob("json_2.1.1/*/*/trial_*/game.tw-pddl"))
COUNTS = {"train": 2, "valid_seen": 1, "valid_unseen": 1}  # games per task type


@pytest.fixture(scope="module", autouse=True)
def alfworld_data(tmp_path_factory):
    """Importing alfworld creates $ALFWORLD_DATA (~/.cache/alfworld when unset): point it to a tmp dir."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ALFWORLD_DATA", str(tmp_path_factory.mktemp("alfworld_data")))
        yield


def _start(gamefile: Path):
    """Load a game exactly the way the project's env does."""
    import textworld
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos

    infos = textworld.EnvInfos(won=True, admissible_commands=True, extras=["gamefile"])
    return textworld.start(str(gamefile), request_infos=infos, wrappers=[AlfredDemangler(), AlfredInfos])


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_counts():
    assert len(TRIALS) == sum(COUNTS[s] * len(minigen.TASK_TYPES) for s in COUNTS)
    for split, per_type in COUNTS.items():
        found = Counter(t.parent.name.split("-")[0] for t in TRIALS if t.parent.parent.name == split)
        assert found == dict.fromkeys(minigen.TASK_TYPES, per_type), split
    for trial in TRIALS:
        assert sorted(p.name for p in trial.iterdir()) == ["game.tw-pddl", "traj_data.json"]


@pytest.mark.parametrize("trial", TRIALS, ids=lambda t: f"{t.parent.parent.name}/{t.parent.name}")
def test_traj_data_matches_folder(trial):
    task_type, obj, mrecep, parent, scene = trial.parent.name.split("-")
    traj = json.loads((trial / "traj_data.json").read_text())
    params = traj["pddl_params"]
    assert traj["task_type"] == task_type
    assert (params["object_target"], params["mrecep_target"] or "None", mrecep) == (obj, "None", "None")
    target = params["toggle_target"] if task_type == "look_at_obj_in_light" else params["parent_target"]
    assert target == parent and int(scene) in minigen.SCENES
    game = json.loads((trial / "game.tw-pddl").read_text())
    assert set(game) == {"pddl_domain", "grammar", "pddl_problem", "solvable", "walkthrough"}
    assert game["solvable"] is True and 3 <= len(game["walkthrough"]) <= 12


@pytest.mark.parametrize("trial", TRIALS, ids=lambda t: f"{t.parent.parent.name}/{t.parent.name}")
def test_walkthrough_wins_at_last_step_only(trial):
    walkthrough = json.loads((trial / "game.tw-pddl").read_text())["walkthrough"]
    env = _start(trial / "game.tw-pddl")
    try:
        state = env.reset()
        assert "Your task is to: " in state["feedback"] and "UNKNOWN GOAL" not in state["feedback"]
        for command in walkthrough:
            assert not state["won"]
            assert command in state.admissible_commands
            state, _, done = env.step(command)
        assert state["won"] and done
    finally:
        env.close()


def test_unseen_split_uses_other_objects_and_scenes():
    def targets(split: str) -> tuple[set[str], set[str]]:
        names = [t.parent.name.split("-") for t in TRIALS if t.parent.parent.name == split]
        return {n[1] for n in names}, {n[4] for n in names}

    (train_objs, train_scenes), (unseen_objs, unseen_scenes) = targets("train"), targets("valid_unseen")
    assert not train_objs & unseen_objs and not train_scenes & unseen_scenes
    assert targets("valid_seen")[1] <= train_scenes


def test_a_wrong_walkthrough_is_rejected():
    gamefile = MINI / "json_2.1.1/train/pick_and_place_simple-CellPhone-None-Bed-312/trial_mini_00/game.tw-pddl"
    walkthrough = json.loads(gamefile.read_text())["walkthrough"]
    with pytest.raises(RuntimeError, match="without a win"):
        minigen.verify_walkthrough(gamefile, walkthrough[:-1])
    with pytest.raises(RuntimeError, match="admissible=False"):
        minigen.verify_walkthrough(gamefile, ["take cellphone 1 from bed 1", *walkthrough])


def test_regenerating_one_task_type_is_byte_identical(tmp_path):
    list(minigen.generate(tmp_path, task_types=["pick_two_obj_and_place"]))
    regenerated = _files(tmp_path)
    assert len(regenerated) == 2 * sum(COUNTS.values())
    shipped = _files(MINI)
    assert regenerated == {name: shipped[name] for name in regenerated}


@pytest.mark.slow
def test_regenerating_everything_is_byte_identical(tmp_path):
    list(minigen.generate(tmp_path))
    assert _files(tmp_path) == _files(MINI)
