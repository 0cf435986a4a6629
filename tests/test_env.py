"""The real ALFWorld engine: our wrapper, the worker pool's failure handling, and expert play."""

import os
import random
import signal

import pytest

from pipeline.backends.hf import load_tokenizer
from pipeline.envs.alfworld_env import AlfWorldGame, EnvFailure, EnvStep, split_task
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
        victim = pool._lanes[0].process
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(timeout=10)
        pool.submit_step(0, "look")
        (failure,) = pool.collect().values()
        assert isinstance(failure, EnvFailure) and "worker died" in failure.error
        pool.submit_reset(0, str(good.path))
        assert isinstance(pool.collect()[0], EnvStep)


def planner_copies(pid: int) -> int:
    """How many deleted copies of fast_downward's library process `pid` maps (one per game it started)."""
    with open(f"/proc/{pid}/maps", encoding="utf-8") as maps:
        return len({line.split()[-2] for line in maps if "libdownward" in line and line.rstrip().endswith("(deleted)")})


def test_recycled_workers_bound_the_planner_copies_and_change_no_result(tiny_models):
    """48 episodes in one lane: unbounded, its process maps a copy per game it started; recycled every 8 games,
    no process maps more than 8, and every turn is what the unbounded pool gave."""
    tokenizer = load_tokenizer(tiny_models["student"])
    games = [game for split in MINI_SPLITS for game in discover_games(MINI_DATA, split)]
    specs = [EpisodeSpec(game, sample) for game in games for sample in range(2)]

    def play(games_per_worker: int) -> tuple[list, int]:
        most = [0]
        with EnvPool(1, str(MINI_DATA), games_per_worker=games_per_worker) as pool:
            runner = EpisodeRunner(
                ExpertPolicy(tokenizer, think=False), PromptRenderer(tokenizer, think=False), pool,
                batch_size=4, max_steps=50, history=2, think=False,
            )  # fmt: skip

            def sample(_episode) -> None:
                most[0] = max(most[0], *map(planner_copies, pool.worker_pids()))

            episodes = runner.play(specs, seed=0, on_finished=sample)
        assert all(ep.won for ep in episodes)
        return [(t["prompt_ids"], t["action"], t["feedback"]) for ep in episodes for t in ep.turns], most[0]

    unbounded, leaked = play(0)
    recycled, bounded = play(8)
    assert len(specs) == 48 and leaked >= 40  # the leak: a copy for every game the process started
    assert bounded <= 8 and recycled == unbounded


def play_expert(games, tokenizer, data_root, max_steps=50, listing="sorted"):
    with EnvPool(2, str(data_root)) as pool:
        runner = EpisodeRunner(
            ExpertPolicy(tokenizer, think=False),
            PromptRenderer(tokenizer, think=False),
            pool,
            batch_size=8,
            max_steps=max_steps,
            history=2,
            think=False,
            listing=listing,
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
    expert = ("search", "sweep")[game_index // 2 % 2]
    env = AlfWorldGame(str(game.path), expert=expert)
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
    """Until it holds something, the sweep's `go to` is the next receptacle by name after where it stands
    (wrapping around) that is not of the task's parent class, and it opens every closed receptacle it stands
    at: no receptacle table to learn. (The engine lists the `go to`s by name, and leaves out the one it stands at.)"""
    monkeypatch.setenv("ALFWORLD_DATA", str(MINI_DATA))
    game = discover_games(MINI_DATA, "train")[game_index]
    parent = SearchTask.of_game(game.path).parent
    env = AlfWorldGame(str(game.path), expert="sweep")
    state, searched, here = env.reset(), 0, None
    for _ in range(30):
        if state.expert_action.startswith("take"):
            break
        if "is closed" in state.observation:
            assert state.expert_action == f"open {here}"
        else:
            places = [a.removeprefix("go to ") for a in state.admissible if a.startswith("go to ")]
            places = [name for name in places if kind(name) != parent]
            after = [name for name in places if here is None or name > here]
            assert state.expert_action == f"go to {(after or places)[0]}"
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
