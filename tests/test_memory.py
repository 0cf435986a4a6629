"""The memory line (pipeline/envs/memory.py): built only from the episode's own observations, and read by
the searching expert as the prompt shows it."""

import random

import pytest

from pipeline.backends.hf import load_tokenizer
from pipeline.envs.alfworld_env import AlfWorldGame
from pipeline.envs.games import MINI_DATA, discover_games
from pipeline.envs.memory import CLOSED, recall
from pipeline.envs.prompts import PromptRenderer
from pipeline.envs.search_expert import SearchTask
from pipeline.episodes import EpisodeSpec, play_games
from pipeline.policies import SearchingExpertPolicy

# Mini game 0 of train: examine the book with the desklamp; the book lies in drawer 1, the lamp on desk 1.
WALK = ["go to drawer 2", "go to drawer 1", "open drawer 1", "take book 1 from drawer 1", "close drawer 1"]
WALK += ["go to shelf 1", "go to desk 1"]


def test_the_engines_sentences_become_places_and_what_was_seen_there():
    memory = recall(
        [
            "You are in the middle of a room. Looking quickly around you, you see a cabinet 1, and a desk 1.",
            "You arrive at cabinet 1. The cabinet 1 is closed.",
            "You open the cabinet 1. The cabinet 1 is open. In it, you see a mug 1, and a pen 2.",
            "You pick up the mug 1 from the cabinet 1.",
            "You close the cabinet 1.",
            "You arrive at desk 1. On the desk 1, you see nothing.",
            "You move the mug 1 to the desk 1.",
            "You arrive at sidetable 2. The sidetable 2 is open. In it, you see a desklamp 1.",
            "On the sidetable 2, you see a desklamp 1, and a apple 3.",  # examine: looked at again
            "You heat the mug 1 using the microwave 1.",  # no place is visited by that
        ]
    )
    assert memory.contents == {"cabinet 1": ("pen 2",), "desk 1": ("mug 1",), "sidetable 2": ("desklamp 1", "apple 3")}
    assert memory.render() == "cabinet 1: pen 2; desk 1: mug 1; sidetable 2: desklamp 1, apple 3"
    assert memory.places_holding("mug") == ["desk 1"] and memory.places_holding("pen") == ["cabinet 1"]
    assert recall(["You are in the middle of a room."]).render() == "nothing yet"
    closed = recall(["You arrive at drawer 3. The drawer 3 is closed."])
    assert closed.contents == {"drawer 3": CLOSED} and closed.searched == frozenset()
    assert closed.render() == "drawer 3: closed"


def test_the_memory_line_of_a_real_mini_game_is_what_its_observations_said(monkeypatch):
    """Hand-computed from the engine's answers to WALK on the first mini training game."""
    monkeypatch.setenv("ALFWORLD_DATA", str(MINI_DATA))
    env = AlfWorldGame(str(discover_games(MINI_DATA, "train")[0].path))
    observations = [env.reset().observation]
    lines = []
    for action in WALK:
        observations.append(env.step(action).observation)
        lines.append(recall(observations).render())
    env.close()
    assert lines == [
        "drawer 2: closed",
        "drawer 2: closed; drawer 1: closed",
        "drawer 2: closed; drawer 1: book 1",
        "drawer 2: closed; drawer 1: nothing",  # the book is in hand now
        "drawer 2: closed; drawer 1: nothing",  # closing it forgets nothing
        "drawer 2: closed; drawer 1: nothing; shelf 1: alarmclock 1, cd 1",
        "drawer 2: closed; drawer 1: nothing; shelf 1: alarmclock 1, cd 1; desk 1: desklamp 1, pen 1, pencil 1",
    ]


def test_the_searcher_with_memory_goes_back_to_what_it_saw_where_the_memoryless_one_sweeps_on(monkeypatch):
    monkeypatch.setenv("ALFWORLD_DATA", str(MINI_DATA))
    path = str(discover_games(MINI_DATA, "train")[0].path)
    answers = {}
    for memory in (True, False):
        env = AlfWorldGame(path, expert="search", memory=memory)
        env.reset()
        for action in ("go to drawer 1", "open drawer 1", "go to shelf 1"):  # saw the book, walked past it
            state = env.step(action)
        answers[memory] = state.expert_action
        env.close()
    assert answers == {True: "go to drawer 1", False: "go to bed 1"}


@pytest.mark.parametrize("game_index", range(0, 12, 2))
def test_the_searcher_with_memory_wins_from_detours_and_never_searches_a_place_twice(monkeypatch, game_index):
    """After random detours, until it takes the object it never goes to a place whose contents it has seen
    without the object in them."""
    monkeypatch.setenv("ALFWORLD_DATA", str(MINI_DATA))
    game = discover_games(MINI_DATA, "train")[game_index]
    target = SearchTask.of_game(game.path).obj
    env = AlfWorldGame(str(game.path), expert="search", memory=True)
    state = env.reset()
    observations = [state.observation]
    rng = random.Random(game_index)
    for _ in range(3):
        state = env.step(rng.choice(state.admissible))
        observations.append(state.observation)
    searching = not any(action.startswith("move") for action in state.admissible)  # holding nothing yet
    for _ in range(30):
        if state.won:
            break
        assert state.expert_action in state.admissible
        searching = searching and not state.expert_action.startswith("take")
        if searching and state.expert_action.startswith("go to"):
            place, memory = state.expert_action.removeprefix("go to "), recall(observations)
            assert place not in memory.searched or place in memory.places_holding(target)
        state = env.step(state.expert_action)
        observations.append(state.observation)
    assert state.won
    env.close()


def test_every_prompt_of_an_episode_shows_the_memory_of_its_own_observations(tiny_models):
    tokenizer = load_tokenizer(tiny_models["student"])
    specs = [EpisodeSpec(game, 0) for game in discover_games(MINI_DATA, "train")[:2]]
    episodes = play_games(
        SearchingExpertPolicy("search", tokenizer, think=False), PromptRenderer(tokenizer, False), specs,
        str(MINI_DATA), num_workers=1, max_steps=20, history=0, think=False, expert="search", memory=True,
    )  # fmt: skip
    assert all(ep.won for ep in episodes)
    for ep in episodes:
        observations = [turn["observation"] for turn in ep.turns]
        for number, turn in enumerate(ep.turns):
            line = recall(observations[: number + 1]).render()
            assert f"Places you have been, with what you found there: {line}." in turn["prompt_text"]
