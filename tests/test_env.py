"""The real ALFWorld engine: our wrapper, the worker pool's failure handling, and expert play."""

import os
import random
import signal

import pytest

from pipeline.backends.hf import load_tokenizer
from pipeline.config import GO_TO_ORDERS
from pipeline.envs.alfworld_env import (
    AlfWorldGame,
    EnvFailure,
    EnvStep,
    deliver_last,
    next_last,
    split_task,
    task_last,
    tour_from_here,
)
from pipeline.envs.games import MINI_DATA, MINI_SPLITS, TASK_TYPES, discover_games, select_games
from pipeline.envs.prompts import PromptRenderer
from pipeline.envs.search_expert import SearchTask, kind
from pipeline.envs.workers import EnvPool
from pipeline.episodes import EpisodeRunner, EpisodeSpec
from pipeline.policies import ExpertPolicy, TurnRequest


def test_first_observation_is_split_into_observation_and_task():
    text = (
        "-= Welcome to TextWorld, ALFRED! =-\n\nYou are in the middle of a room. Looking quickly around you, "
        "you see a desk 1.\n\nYour task is to: put a mug in desk."
    )
    assert split_task(text) == (
        "You are in the middle of a room. Looking quickly around you, you see a desk 1.",
        "put a mug in desk",
    )


def test_a_mini_game_in_the_engine(monkeypatch):
    monkeypatch.setenv("ALFWORLD_DATA", str(MINI_DATA))
    game = discover_games(MINI_DATA, "train")[0]
    env = AlfWorldGame(str(game.path))
    start = env.reset()
    assert start.task and start.observation.startswith("You are in the middle of a room")
    assert "help" not in start.admissible and "look" in start.admissible
    nothing = env.step("dance wildly")
    assert (nothing.observation, nothing.won, nothing.done) == ("Nothing happens.", False, False)
    for action in game.walkthrough:
        step = env.step(action)
    assert step.won and step.done
    env.close()


def test_the_go_to_tour_starts_after_where_the_agent_stands_and_wraps_around():
    receptacles = ["cabinet 1", "cabinet 10", "cabinet 2", "desk 1", "fridge 1"]  # sorted by name, as the engine does
    at_cabinet_2 = [
        "examine cabinet 2",
        "go to cabinet 1",
        "go to cabinet 10",
        "go to desk 1",
        "go to fridge 1",
        "look",
    ]
    assert tour_from_here(at_cabinet_2, receptacles) == [
        "examine cabinet 2", "go to desk 1", "go to fridge 1", "go to cabinet 1", "go to cabinet 10", "look",
    ]  # fmt: skip
    at_fridge = ["go to cabinet 1", "go to cabinet 10", "go to cabinet 2", "go to desk 1", "inventory"]
    assert tour_from_here(at_fridge, receptacles) == at_fridge  # the last one: the tour is the sorted list
    in_the_middle = ["go to " + name for name in receptacles]
    assert tour_from_here(in_the_middle, receptacles) == in_the_middle  # nowhere yet: nothing to start after
    assert next_last(at_cabinet_2, receptacles) == [
        "examine cabinet 2", "look", "go to cabinet 10", "go to cabinet 1", "go to fridge 1", "go to desk 1",
    ]  # fmt: skip
    assert next_last(in_the_middle, receptacles) == in_the_middle[::-1]


def test_task_last_moves_the_commands_naming_a_task_word_after_the_tour():
    receptacles = ["cabinet 1", "desk 1", "drawer 1", "dresser 1"]
    at_drawer_1 = [
        "close drawer 1",
        "examine drawer 1",
        "go to cabinet 1",
        "go to desk 1",
        "go to dresser 1",
        "heat mug 1 with microwave 1",  # "heat" is a task word, but only as the verb here
        "inventory",
        "take book 1 from drawer 1",
        "take pen 2 from drawer 1",
        "take pen 3 from dresser 1",  # the task's receptacle, not its object
    ]
    task = frozenset("heat some book and put it on dresser".split())
    assert task_last(at_drawer_1, receptacles, task) == [
        "close drawer 1", "examine drawer 1", "heat mug 1 with microwave 1", "inventory", "take pen 2 from drawer 1",
        "take pen 3 from dresser 1",
        "go to desk 1", "go to cabinet 1", "go to dresser 1",  # the tour from here backwards; a `go to` stays in it
        "take book 1 from drawer 1",
    ]  # fmt: skip
    assert task_last(at_drawer_1, receptacles, frozenset()) == next_last(at_drawer_1, receptacles)


def test_deliver_last_moves_the_task_receptacles_out_of_the_search_and_to_the_end_of_a_delivery():
    receptacles = ["cabinet 1", "cabinet 10", "cabinet 2", "countertop 1", "drawer 1", "microwave 1", "sinkbasin 1"]
    go_tos = [f"go to {name}" for name in receptacles if name != "drawer 1"]
    task = frozenset("heat some cup and put it in cabinet".split())
    searching = ["examine drawer 1", *go_tos, "inventory", "take cup 1 from drawer 1"]
    assert deliver_last(searching, receptacles, task) == [
        "examine drawer 1", "inventory",
        "go to cabinet 2", "go to cabinet 10", "go to cabinet 1",  # never searched: out of the tour's end
        "go to countertop 1", "go to sinkbasin 1", "go to microwave 1",  # the tour from drawer 1, backwards
        "take cup 1 from drawer 1",
    ]  # fmt: skip
    holding = ["examine cup 1", "examine drawer 1", *go_tos, "inventory", "move cup 1 to drawer 1"]
    assert deliver_last(holding, receptacles, task) == [
        "examine drawer 1", "inventory", "examine cup 1", "move cup 1 to drawer 1",  # idle: before the tour
        "go to countertop 1", "go to sinkbasin 1",
        "go to cabinet 2", "go to cabinet 10", "go to cabinet 1", "go to microwave 1",  # cabinet 1 first by name
    ]  # fmt: skip
    at_the_device = [
        "examine cup 1", "examine microwave 1", *(g for g in go_tos if g != "go to microwave 1"), "go to drawer 1",
        "heat cup 1 with microwave 1", "inventory", "move cup 1 to microwave 1",
    ]  # fmt: skip
    assert deliver_last(at_the_device, receptacles, task)[-4:] == [
        "go to cabinet 2", "go to cabinet 10", "go to cabinet 1", "heat cup 1 with microwave 1",
    ]  # fmt: skip
    at_a_cabinet = ["examine cabinet 2", "examine cup 1", "go to microwave 1", "move cup 1 to cabinet 2"]
    assert deliver_last(at_a_cabinet, receptacles, task)[-2:] == ["go to microwave 1", "move cup 1 to cabinet 2"]
    at_the_wrong_device = ["cool cup 1 with fridge 1", "examine cup 1", "go to microwave 1", "move cup 1 to fridge 1"]
    assert deliver_last(at_the_wrong_device, receptacles + ["fridge 1"], task) == [
        "cool cup 1 with fridge 1", "examine cup 1", "move cup 1 to fridge 1", "go to microwave 1",  # no use here
    ]  # fmt: skip
    other_object = ["examine drawer 1", "examine mug 1", *go_tos, "inventory", "move mug 1 to drawer 1"]
    assert deliver_last(other_object, receptacles, task)[-1] == "go to microwave 1"  # searching: the tour's next
    searching_at_a_cabinet = [g for g in go_tos if g != "go to cabinet 2"] + ["go to drawer 1", "examine cabinet 2"]
    receptacle_words = frozenset("put some book on cabinet".split())  # "examine cabinet 2" holds nothing
    assert deliver_last(searching_at_a_cabinet, receptacles, receptacle_words)[-2:] == [
        "go to countertop 1",
        "examine cabinet 2",
    ]


@pytest.mark.parametrize("game_index", range(0, 24, 4))
def test_the_sweeping_expert_always_goes_to_the_last_go_to_on_screen_with_deliver_last(monkeypatch, game_index):
    """On real games, from the first state to the win: searching, carrying to the device, then to the task's
    receptacle, the sweep's every `go to` is the last one listed."""
    monkeypatch.setenv("ALFWORLD_DATA", str(MINI_DATA))
    game = [g for split in MINI_SPLITS for g in discover_games(MINI_DATA, split)][game_index]
    env = AlfWorldGame(str(game.path), expert="sweep", go_to_order="deliver_last")
    state, go_tos = env.reset(), 0
    for _ in range(30):
        if state.won:
            break
        if state.expert_action.startswith("go to "):
            assert state.expert_action == [a for a in state.admissible if a.startswith("go to ")][-1]
            go_tos += 1
        state = env.step(state.expert_action)
    assert state.won and go_tos >= 2
    env.close()


@pytest.mark.parametrize("game_index", [0, 5])
def test_a_game_lists_the_same_actions_in_either_go_to_order(monkeypatch, game_index):
    """`from_here` reorders the `go to` block of the engine's list and changes nothing else; `next_last` lists
    that tour backwards after the other actions; `task_last` then moves the commands naming the task's words."""
    monkeypatch.setenv("ALFWORLD_DATA", str(MINI_DATA))
    game = discover_games(MINI_DATA, "train")[game_index]
    orders = ("sorted", "from_here", "next_last", "task_last", "deliver_last")
    games = [AlfWorldGame(str(game.path), go_to_order=order) for order in orders]
    states = [env.reset() for env in games]
    assert states[0].admissible == states[1].admissible  # at the start the agent stands at no receptacle
    words = frozenset(states[0].task.split())
    receptacles = sorted(c.removeprefix("go to ") for c in states[0].admissible if c.startswith("go to "))
    moved = 0
    for action in game.walkthrough[:-1]:
        states = [env.step(action) for env in games]
        engine, tour, backwards, task_at_end, delivery = (state.admissible for state in states)
        assert delivery == deliver_last(engine, receptacles, words) and sorted(delivery) == sorted(engine)
        go_tos = [c for c in tour if c.startswith("go to")]
        assert backwards == [c for c in tour if not c.startswith("go to")] + go_tos[::-1]
        assert task_at_end == task_last(engine, receptacles, words) and sorted(task_at_end) == sorted(engine)
        moved += task_at_end != backwards
        assert sorted(engine) == sorted(tour) and states[0].observation == states[1].observation
        assert [c for c in engine if not c.startswith("go to")] == [c for c in tour if not c.startswith("go to")]
        if action.startswith("go to "):
            here, targets = (
                action.removeprefix("go to "),
                [c.removeprefix("go to ") for c in tour if c.startswith("go to")],
            )
            after = [name for name in targets if name > here]
            assert targets == after + [name for name in targets if name < here]
    assert moved, "the walkthrough takes the task's object: some state lists a command naming it last"
    for env in games:
        env.close()


def test_an_unknown_go_to_order_is_refused(monkeypatch):
    monkeypatch.setenv("ALFWORLD_DATA", str(MINI_DATA))
    with pytest.raises(ValueError, match="go_to_order must be one of sorted, from_here"):
        AlfWorldGame(str(discover_games(MINI_DATA, "train")[0].path), go_to_order="random")


def test_a_broken_game_fails_its_episode_only(tmp_path):
    broken = tmp_path / "game.tw-pddl"
    broken.write_text("{not json")
    good = discover_games(MINI_DATA, "train")[0]
    with EnvPool(2, str(MINI_DATA)) as pool:
        pool.submit_reset(0, str(broken))
        pool.submit_reset(1, str(good.path))
        results = pool.collect()
        assert isinstance(results[0], EnvFailure) and results[0].error.startswith("reset failed:")
        assert isinstance(results[1], EnvStep)
        pool.submit_step(1, good.walkthrough[0])
        assert isinstance(pool.collect()[1], EnvStep)


def test_a_dead_worker_fails_its_episodes_and_is_replaced():
    good = discover_games(MINI_DATA, "train")[0]
    with EnvPool(1, str(MINI_DATA)) as pool:
        pool.submit_reset(0, str(good.path))
        pool.collect()
        victim = pool._workers[0][0]
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(timeout=10)
        pool.submit_step(0, "look")
        (failure,) = pool.collect().values()
        assert isinstance(failure, EnvFailure) and "worker died" in failure.error
        pool.submit_reset(0, str(good.path))
        assert isinstance(pool.collect()[0], EnvStep)


def play_expert(games, tokenizer, data_root, max_steps=50):
    with EnvPool(2, str(data_root)) as pool:
        runner = EpisodeRunner(
            ExpertPolicy(tokenizer, think=False),
            PromptRenderer(tokenizer, think=False),
            pool,
            batch_size=8,
            max_steps=max_steps,
            history=2,
            think=False,
        )
        return runner.play([EpisodeSpec(g, 0) for g in games], seed=0), runner.timings


def test_expert_wins_every_shipped_mini_game(tiny_models):
    tokenizer = load_tokenizer(tiny_models["student"])
    games = [g for split in MINI_SPLITS for g in discover_games(MINI_DATA, split)]
    episodes, timings = play_expert(games, tokenizer, MINI_DATA)
    assert [ep.won for ep in episodes] == [True] * len(games)
    assert all(ep.error is None and len(ep.turns) == len(ep.spec.game.walkthrough) for ep in episodes)
    assert all(t["format_ok"] and t["admissible"] for ep in episodes for t in ep.turns)
    assert timings.steps == sum(len(g.walkthrough) for g in games)


@pytest.mark.alfworld_data
def test_expert_wins_a_sample_of_valid_unseen_games(tiny_models, alfworld_data):
    tokenizer = load_tokenizer(tiny_models["student"])
    games = select_games(discover_games(alfworld_data, "valid_unseen"), 12)
    assert {g.task_type for g in games} == set(TASK_TYPES)
    episodes, _ = play_expert(games, tokenizer, alfworld_data)
    assert [ep.won for ep in episodes] == [True] * 12, [ep.error for ep in episodes]


def test_a_game_that_breaks_mid_run_is_a_failed_episode_with_its_error(tiny_models, tmp_path):
    from dataclasses import replace

    tokenizer = load_tokenizer(tiny_models["student"])
    good = discover_games(MINI_DATA, "train")[:2]
    broken_file = tmp_path / "game.tw-pddl"
    broken_file.write_text('{"pddl_domain": "(define (domain broken"}')
    broken = replace(good[0], game_id="train/broken/trial_0", path=broken_file)
    episodes, _ = play_expert([good[0], broken, good[1]], tokenizer, MINI_DATA)
    assert [ep.won for ep in episodes] == [True, False, True]
    assert episodes[1].error.startswith("reset failed:") and episodes[1].turns == []


def test_a_planning_game_names_an_expert_action_from_any_state(monkeypatch):
    """The planner answers from states off the walkthrough too: after a detour its plan still wins."""
    monkeypatch.setenv("ALFWORLD_DATA", str(MINI_DATA))
    game = discover_games(MINI_DATA, "train")[0]
    assert AlfWorldGame(str(game.path)).reset().expert_action is None  # no expert unless asked
    env = AlfWorldGame(str(game.path), expert="planner")
    state = env.reset()
    assert state.expert_action == game.walkthrough[0]
    detour = next(a for a in state.admissible if a.startswith("go to") and a != game.walkthrough[0])
    state = env.step(detour)
    for _ in range(3 * len(game.walkthrough)):
        assert state.expert_action in state.admissible
        state = env.step(state.expert_action)
        if state.won:
            break
    assert state.won and state.expert_action is None  # nothing left to plan once won
    env.close()


@pytest.mark.parametrize("game_index", range(12))
def test_the_searching_expert_wins_from_any_state_with_admissible_actions_only(monkeypatch, game_index):
    """Two random detours first (the states a student strays into), then the searcher alone wins."""
    monkeypatch.setenv("ALFWORLD_DATA", str(MINI_DATA))
    game = discover_games(MINI_DATA, "train")[game_index]
    expert, order = ("search", "sweep")[game_index // 2 % 2], GO_TO_ORDERS[game_index % len(GO_TO_ORDERS)]
    env = AlfWorldGame(str(game.path), expert=expert, go_to_order=order)
    state = env.reset()
    rng = random.Random(game_index)
    for _ in range(2):
        state = env.step(rng.choice(state.admissible))
    for _ in range(30):
        if state.won:
            break
        assert state.expert_action in state.admissible
        state = env.step(state.expert_action)
    assert state.won and state.expert_action is None
    env.close()


@pytest.mark.parametrize("game_index", range(0, 12, 3))
def test_the_sweeping_expert_searches_the_next_receptacle_of_the_tour_that_is_not_the_parent(monkeypatch, game_index):
    """Until it holds something, the sweep's `go to` is the first of the tour that is not of the task's parent
    class (first on screen with `from_here`, last with `next_last`), and it opens every closed receptacle it
    stands at: no receptacle table to learn."""
    monkeypatch.setenv("ALFWORLD_DATA", str(MINI_DATA))
    game = discover_games(MINI_DATA, "train")[game_index]
    parent = SearchTask.of_game(game.path).parent
    order = ("from_here", "next_last")[game_index % 2]
    env = AlfWorldGame(str(game.path), expert="sweep", go_to_order=order)
    state, searched, here = env.reset(), 0, None
    for _ in range(30):
        if state.expert_action.startswith("take"):
            break
        go_tos = [a for a in state.admissible if a.startswith("go to ")]
        go_tos = go_tos if order == "from_here" else go_tos[::-1]
        if "is closed" in state.observation:
            assert state.expert_action == f"open {here}"
        else:
            assert state.expert_action == next(a for a in go_tos if kind(a.removeprefix("go to ")) != parent)
            here, searched = state.expert_action.removeprefix("go to "), searched + 1
        state = env.step(state.expert_action)
    assert state.expert_action.startswith("take") and searched >= 1
    env.close()


def test_an_unknown_env_expert_is_refused(monkeypatch):
    monkeypatch.setenv("ALFWORLD_DATA", str(MINI_DATA))
    with pytest.raises(ValueError, match="expert must be one of planner, search"):
        AlfWorldGame(str(discover_games(MINI_DATA, "train")[0].path), expert="oracle")


@pytest.mark.parametrize("expert", ["planner", "search", "sweep"])
def test_the_noisy_expert_records_the_expert_action_of_every_state_it_visits(tiny_models, expert):
    from pipeline.episodes import play_games
    from pipeline.policies import NoisyExpertPolicy

    tokenizer = load_tokenizer(tiny_models["student"])
    games = discover_games(MINI_DATA, "train")[:2]
    specs = [EpisodeSpec(g, s) for g in games for s in range(2)]

    def play(epsilon: float):
        policy = NoisyExpertPolicy(tokenizer, think=False, epsilon=epsilon)
        episodes = play_games(
            policy, PromptRenderer(tokenizer, False), specs, str(MINI_DATA),
            num_workers=2, max_steps=16, history=2, think=False, expert=expert,
        )  # fmt: skip
        return policy, episodes

    clean, episodes = play(0.0)
    assert all(ep.won for ep in episodes)  # the expert alone wins every game
    assert len(clean.demonstrations) == sum(len(ep.turns) for ep in episodes)
    played = sorted((tuple(t["prompt_ids"]), t["response_text"]) for ep in episodes for t in ep.turns)
    assert sorted((tuple(p), r.text) for p, r in clean.demonstrations) == played  # recorded turn by turn, batched
    noisy, episodes = play(1.0)  # every action random; the labels are still the expert's
    played = [t["prompt_ids"] for ep in episodes for t in ep.turns]
    assert sorted(map(tuple, played)) == sorted(tuple(p) for p, _ in noisy.demonstrations)
    actions = [t["action"] for ep in episodes for t in ep.turns]
    labels = [r.text.removeprefix("<action>").removesuffix("</action>") for _, r in noisy.demonstrations]
    assert actions != labels and all(r.logprobs == [0.0] * len(r.ids) for _, r in noisy.demonstrations)
    with pytest.raises(ValueError, match="epsilon"):
        NoisyExpertPolicy(tokenizer, think=False, epsilon=1.5)


def test_expert_labels_follow_the_states_another_policy_reaches(tiny_models):
    """DAgger proper: the walkthrough plays, every state it reaches is labelled with the sweeping expert's action."""
    from pipeline.episodes import play_games
    from pipeline.policies import ExpertLabelledPolicy

    tokenizer = load_tokenizer(tiny_models["student"])
    specs = [EpisodeSpec(g, 0) for g in discover_games(MINI_DATA, "train")[:3]]
    policy = ExpertLabelledPolicy(ExpertPolicy(tokenizer, think=False), tokenizer, think=False)
    episodes = play_games(
        policy, PromptRenderer(tokenizer, False), specs, str(MINI_DATA),
        num_workers=2, max_steps=16, history=0, think=False, expert="sweep",
    )  # fmt: skip
    turns = [t for ep in episodes for t in ep.turns]
    assert all(ep.won for ep in episodes) and len(policy.demonstrations) == len(turns)
    assert sorted(tuple(t["prompt_ids"]) for t in turns) == sorted(tuple(p) for p, _ in policy.demonstrations)
    labels = {tuple(p): r.text.removeprefix("<action>").removesuffix("</action>") for p, r in policy.demonstrations}
    assert all(labels[tuple(t["prompt_ids"])] in t["admissible_commands"] for t in turns)
    assert any(labels[tuple(t["prompt_ids"])] != t["action"] for t in turns)  # the walkthrough is not the sweep
    unlabelled = policy.demonstrations[0][0], specs[0].game
    with pytest.raises(ValueError, match="DAgger labels need the env expert's action"):
        policy.act([TurnRequest(*unlabelled, turn=0)], seed=0)  # an env without an expert cannot label


def test_many_requests_to_one_worker_never_fill_its_pipes(monkeypatch):
    """Past MAX_IN_FLIGHT a submit takes in an answer first: with every reset sent before any answer is
    read, the pipes fill both ways and both sides block (prepare's 1,000-episode plays hung that way)."""
    from pipeline.envs import workers

    monkeypatch.setattr(workers, "MAX_IN_FLIGHT", 2)
    games = discover_games(MINI_DATA, "train")[:3]
    with EnvPool(1, str(MINI_DATA)) as pool:
        for slot in range(9):
            pool.submit_reset(slot, str(games[slot % 3].path))
        results = pool.collect()
    assert sorted(results) == list(range(9)) and all(isinstance(r, EnvStep) for r in results.values())
    assert [results[slot].task for slot in range(3)] == [results[slot].task for slot in range(3, 6)]
