"""Finding games: splits, task types, the mini set, the full data, and what is said when it is missing."""

from pathlib import Path

import pytest

from pipeline.envs import games as games_module
from pipeline.envs.games import MINI_DATA, TASK_TYPES, discover_games, resolve_data_root, select_games, task_type_of
from pipeline.errors import UserError


@pytest.mark.parametrize(("split", "count"), [("train", 12), ("valid_seen", 6), ("valid_unseen", 6)])
def test_mini_set_covers_every_task_type(split, count):
    found = discover_games(MINI_DATA, split)
    assert len(found) == count
    assert {g.task_type for g in found} == set(TASK_TYPES)
    assert all(g.game_id.startswith(f"{split}/") and g.path.is_file() for g in found)
    assert [g.game_id for g in found] == sorted(g.game_id for g in found)


def test_selection_interleaves_task_types_so_any_six_cover_all():
    found = discover_games(MINI_DATA, "train")
    first_six = select_games(found, 6)
    assert [g.task_type for g in first_six] == list(TASK_TYPES)
    assert select_games(found, 9)[:6] == first_six
    assert sorted(select_games(found, 0), key=lambda g: g.game_id) == found


def test_task_type_comes_from_the_folder_name():
    assert task_type_of("pick_cool_then_place_in_recep-Apple-None-Fridge-5") == "pick_cool_then_place_in_recep"
    with pytest.raises(UserError, match="does not start with one of the six"):
        task_type_of("juggle-Apple-None-Fridge-5")


def test_unknown_split_and_empty_split(tmp_path):
    with pytest.raises(UserError, match="split 'valid_train' not found"):
        discover_games(MINI_DATA, "valid_train")
    (tmp_path / "json_2.1.1" / "train").mkdir(parents=True)
    with pytest.raises(UserError, match="holds no game.tw-pddl files"):
        discover_games(tmp_path, "train")


def test_data_root_lookup_and_its_errors(tmp_path, monkeypatch):
    assert resolve_data_root("mini", None) == MINI_DATA
    with pytest.raises(UserError, match="does not hold ALFWorld games"):
        resolve_data_root("alfworld", str(tmp_path))
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=r"ALFWORLD_DATA=.*nowhere does not hold ALFWorld games"):
        resolve_data_root("alfworld", None)
    monkeypatch.delenv("ALFWORLD_DATA")
    monkeypatch.setattr(games_module, "DEFAULT_FULL_DATA", tmp_path / "absent")
    with pytest.raises(UserError, match="ALFWorld data not found: set ALFWORLD_DATA"):
        resolve_data_root("alfworld", None)


@pytest.mark.alfworld_data
@pytest.mark.parametrize(("split", "count"), [("train", 3553), ("valid_seen", 140), ("valid_unseen", 134)])
def test_full_splits_have_the_published_sizes(alfworld_data: Path, split, count):
    found = discover_games(alfworld_data, split)
    assert len(found) == count
    assert {g.task_type for g in found} == set(TASK_TYPES)
