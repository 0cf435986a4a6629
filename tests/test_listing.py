"""How prompts list the admissible actions: the engine's order, or a seeded shuffle of it (issue #28)."""

import pytest
from conftest import CORPUS
from test_env import play_expert

from pipeline.envs.games import MINI_DATA, discover_games
from pipeline.envs.listing import list_actions
from pipeline.tiny_models import train_tokenizer

ENGINE = [
    "examine cabinet 2",
    "go to cabinet 1",
    "go to desk 1",
    "go to fridge 1",
    "inventory",
    "look",
    "open cabinet 2",
]


def test_sorted_is_the_engine_order():
    assert list_actions(ENGINE, "sorted", "train/a/trial#0", 3) == ENGINE


def test_shuffled_is_a_seeded_reproducible_permutation():
    first = list_actions(ENGINE, "shuffled", "train/a/trial#0", 3)
    assert sorted(first) == sorted(ENGINE) and first != ENGINE
    assert list_actions(ENGINE, "shuffled", "train/a/trial#0", 3) == first  # the same episode and turn: same list
    others = {tuple(list_actions(ENGINE, "shuffled", episode, turn)) for episode in ("x#0", "x#1") for turn in range(4)}
    assert len(others) == 8  # another episode or another turn: another order (7! orders, 8 draws)
    assert ENGINE == sorted(ENGINE)  # the input is not shuffled in place


def test_an_unknown_listing_is_refused():
    with pytest.raises(ValueError, match="listing must be one of sorted, shuffled, not 'deliver_last'"):
        list_actions(ENGINE, "deliver_last", "x#0", 0)


def test_a_shuffled_episode_lists_the_engine_actions_in_its_own_order_and_replays_identically(monkeypatch):
    """On real mini games: every prompt's list is a permutation of the engine's, the recorded `admissible_commands`
    are the list the prompt showed, and playing the same episodes again gives the same lists."""
    monkeypatch.setenv("ALFWORLD_DATA", str(MINI_DATA))
    games = discover_games(MINI_DATA, "train")[:2]
    tokenizer = train_tokenizer(CORPUS, vocab_size=400)
    (engine, _), (shuffled, _), (again, _) = (
        play_expert(games, tokenizer, MINI_DATA, 20, listing) for listing in ("sorted", "shuffled", "shuffled")
    )
    assert all(ep.won for ep in shuffled)  # the walkthrough names actions, so the order cannot stop it
    for plain, mixed, replay in zip(engine, shuffled, again, strict=True):
        for turn_plain, turn_mixed, turn_replay in zip(plain.turns, mixed.turns, replay.turns, strict=True):
            listed = turn_mixed["admissible_commands"]
            assert sorted(listed) == sorted(turn_plain["admissible_commands"]) == turn_plain["admissible_commands"]
            assert ", ".join(listed) in turn_mixed["prompt_text"]
            assert turn_replay["admissible_commands"] == listed
    assert any(t["admissible_commands"] != sorted(t["admissible_commands"]) for ep in shuffled for t in ep.turns)
