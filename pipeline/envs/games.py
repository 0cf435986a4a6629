"""Finding ALFWorld games on disk: where the data lives, which games a split holds, their task types.

Both the full data (`alfworld-download` layout, 3553 train games) and our shipped mini set use the
same layout, `json_2.1.1/<split>/<task>-<Obj>-<MRecep>-<Parent>-<scene>/trial_*/game.tw-pddl`, so one
discovery function serves both.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from itertools import chain, zip_longest
from pathlib import Path

from pipeline.errors import UserError

TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)
MINI_SPLITS = ("train", "valid_seen", "valid_unseen")
GAME_FILE = "game.tw-pddl"
MINI_DATA = Path(__file__).resolve().parents[2] / "data" / "alfworld-mini"
DEFAULT_FULL_DATA = Path("data") / "alfworld"


@dataclass(frozen=True)
class Game:
    """One ALFWorld game file. `game_id` is `<split>/<task folder>/<trial>`: stable across machines."""

    game_id: str
    path: Path
    split: str
    task_type: str

    @cached_property
    def walkthrough(self) -> list[str]:
        """The expert solution stored in the game file (read only when an expert needs it)."""
        return list(json.loads(self.path.read_text(encoding="utf-8"))["walkthrough"])


def resolve_data_root(source: str, path: str | None) -> Path:
    """The folder that holds `json_2.1.1/`: explicit path, else the mini set or the full data."""
    if path:
        root = Path(path).expanduser()
        _require_layout(root, f"data.path={path}")
        return root
    if source == "mini":
        _require_layout(MINI_DATA, "the shipped mini game set")
        return MINI_DATA
    env_root = os.environ.get("ALFWORLD_DATA")
    if env_root:
        _require_layout(Path(env_root), f"ALFWORLD_DATA={env_root}")
        return Path(env_root)
    if (DEFAULT_FULL_DATA / "json_2.1.1").is_dir():
        return DEFAULT_FULL_DATA
    raise UserError(
        "ALFWorld data not found: set ALFWORLD_DATA to the folder holding json_2.1.1/, or run "
        "`sage-opd prepare --archive PATH/alfworld-json_2.1.1.tar.gz` (or `--download`)"
    )


def _require_layout(root: Path, what: str) -> None:
    if not (root / "json_2.1.1").is_dir():
        raise UserError(f"{what} does not hold ALFWorld games: {root / 'json_2.1.1'} is missing")


def task_type_of(folder_name: str) -> str:
    """Task type from a game folder name such as `pick_cool_then_place_in_recep-Apple-None-Fridge-5`."""
    task_type = folder_name.split("-", 1)[0]
    if task_type not in TASK_TYPES:
        raise UserError(f"game folder {folder_name!r} does not start with one of the six ALFWorld task types")
    return task_type


def discover_games(root: Path, split: str) -> list[Game]:
    """All games of a split, sorted by id."""
    split_dir = root / "json_2.1.1" / split
    if not split_dir.is_dir():
        raise UserError(f"split {split!r} not found under {root / 'json_2.1.1'}")
    games = [
        Game(
            game_id=f"{split}/{file.parent.parent.name}/{file.parent.name}",
            path=file,
            split=split,
            task_type=task_type_of(file.parent.parent.name),
        )
        for file in split_dir.glob(f"*/*/{GAME_FILE}")
    ]
    if not games:
        raise UserError(f"split {split!r} under {root} holds no {GAME_FILE} files")
    return sorted(games, key=lambda game: game.game_id)


def select_games(games: list[Game], num_games: int) -> list[Game]:
    """The first `num_games` games (0 = all), taken round-robin over task types.

    Sorted ids group games by task type; interleaving makes any sample of six or more games cover
    all six types, and a sample stays a prefix of larger samples.
    """
    by_type = [[g for g in games if g.task_type == t] for t in TASK_TYPES]
    interleaved = [g for g in chain.from_iterable(zip_longest(*by_type)) if g is not None]
    return interleaved if num_games == 0 else interleaved[:num_games]
