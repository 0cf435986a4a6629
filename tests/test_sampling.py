"""The game sampler: balanced, seeded, different per round, recorded; eval plays one fixed set."""

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.envs.games import TASK_TYPES, Game, sample_games, select_games
from pipeline.errors import UserError
from pipeline.play import game_ids, plan_episodes, run_rollout
from pipeline.shards import read_manifest

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"


def split_of(sizes: list[int]) -> list[Game]:
    """A made-up split with `sizes[i]` games of task type i (no files: the sampler reads none)."""
    games = [
        Game(f"train/{task}-{n}/trial_0", Path("/absent"), "train", task)
        for task, size in zip(TASK_TYPES, sizes, strict=True)
        for n in range(size)
    ]
    return sorted(games, key=lambda g: g.game_id)


def type_counts(games: list[Game]) -> list[int]:
    counts = Counter(g.task_type for g in games)
    return [counts[task] for task in TASK_TYPES]


def test_an_even_split_gives_every_type_the_same_share_interleaved():
    games = split_of([10] * 6)
    drawn = sample_games(games, 12, "k")
    assert type_counts(drawn) == [2] * 6
    assert [g.task_type for g in drawn] == list(TASK_TYPES) * 2
    assert len(set(drawn)) == 12 and set(drawn) <= set(games)


def test_a_short_type_gives_all_it_has_and_the_others_fill_the_gap():
    one_short = type_counts(sample_games(split_of([1, 10, 10, 10, 10, 10]), 12, "k"))
    assert one_short[0] == 1 and sorted(one_short[1:]) == [2, 2, 2, 2, 3]
    assert sorted(type_counts(sample_games(split_of([0, 10, 10, 10, 10, 10]), 12, "k"))) == [0, 2, 2, 2, 3, 3]
    two_short = type_counts(sample_games(split_of([3, 1, 10, 10, 10, 10]), 30, "k"))
    assert two_short[:2] == [3, 1] and sorted(two_short[2:]) == [6, 6, 7, 7]


def test_the_remainder_goes_to_types_the_key_picks():
    games = split_of([10] * 6)
    counts = [type_counts(sample_games(games, 13, f"k{i}")) for i in range(12)]
    assert all(sorted(c) == [2, 2, 2, 2, 2, 3] for c in counts)
    assert len({c.index(3) for c in counts}) > 1


def test_the_key_alone_decides_the_draw_and_zero_means_all():
    games = split_of([10] * 6)
    assert sample_games(games, 12, "per_round/0/1/train") == sample_games(games, 12, "per_round/0/1/train")
    assert sample_games(games, 12, "per_round/0/1/train") != sample_games(games, 12, "per_round/0/2/train")
    assert sample_games(games, 0, "any") == select_games(games, 0)
    assert sorted(sample_games(games, 60, "any"), key=lambda g: g.game_id) == games


def planned_games(round_: int, *overrides: str, stage: str = "rollout") -> list[str]:
    config = load_config(DEFAULT_CONFIG, list(overrides))
    return game_ids(plan_episodes(config, getattr(config, stage), round_)[1])


def test_rollout_draws_new_games_each_round_and_seed():
    first = planned_games(1, "rollout.num_games=6")
    assert first == planned_games(1, "rollout.num_games=6")
    assert first != planned_games(2, "rollout.num_games=6")
    assert first != planned_games(1, "rollout.num_games=6", "seed=1")
    assert sorted(g.split("/")[1].split("-")[0] for g in first) == sorted(TASK_TYPES)
    assert len(planned_games(1)) == 12  # the default plays every training game


def test_eval_plays_one_fixed_set_in_every_round_and_run():
    settings = ("eval.splits=[train, valid_unseen]", "eval.num_games=3")
    fixed = planned_games(1, *settings, stage="eval")
    assert len(fixed) == 6 and [g.split("/")[0] for g in fixed] == ["train"] * 3 + ["valid_unseen"] * 3
    for round_, seed in [(2, 0), (1, 1), (5, 3)]:
        assert planned_games(round_, *settings, f"seed={seed}", f"run=r{seed}", stage="eval") == fixed


@pytest.mark.parametrize(
    ("overrides", "stage", "message"),
    [
        (["rollout.num_games=13"], "rollout", "rollout.num_games=13 but split train holds 12 games"),
        (["eval.splits=[valid_seen]", "eval.num_games=7"], "eval", "eval.num_games=7 but split valid_seen holds 6"),
    ],
)
def test_more_games_than_a_split_holds_is_an_error(overrides, stage, message):
    with pytest.raises(UserError, match=message):
        planned_games(1, *overrides, stage=stage)


def test_the_rollout_manifest_records_the_rounds_games(make_config):
    config = make_config("rollout.policy=expert", "rollout.num_games=3", "env.max_steps=20")
    drawn = {}
    for round_ in (1, 2):
        result = run_rollout(config, round_)
        drawn[round_] = read_manifest(result.directory, "turns")["inputs"]["games"]
        assert drawn[round_] == game_ids(plan_episodes(config, config.rollout, round_)[1])
        assert set(pd.read_parquet(result.directory)["game"]) == set(drawn[round_])
    assert len(drawn[1]) == 3 and drawn[1] != drawn[2]
    with pytest.raises(UserError, match=r"different config \(play.games\)"):
        run_rollout(
            make_config("rollout.policy=expert", "rollout.num_games=3", "env.max_steps=20", "rollout.games=fixed"), 1
        )
