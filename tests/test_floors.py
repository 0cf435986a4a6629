"""The zero-parameter floors (issue #28): exact choices on hand-built states, and real games through `eval`."""

import random

import pandas as pd
import pytest

from pipeline.floors import FloorPolicy, floor_action, task_blind_rule
from pipeline.play import run_eval
from pipeline.policies import TurnRequest

AT_DRAWER = [
    "close drawer 1",
    "examine drawer 1",
    "go to cabinet 1",
    "go to desk 1",
    "inventory",
    "look",
    "take pen 1 from drawer 1",
    "take pencil 2 from drawer 1",
]
CLOSED_HERE = ["examine cabinet 1", "go to desk 1", "go to drawer 1", "inventory", "look", "open cabinet 1"]
HOLDING_AT_SINK = [
    "clean pen 1 with sinkbasin 1",
    "examine pen 1",
    "go to desk 1",
    "go to drawer 1",
    "inventory",
    "look",
    "move pen 1 to sinkbasin 1",
]
HOLDING_AT_DESK_WITH_LAMP = [
    "examine pen 1",
    "go to drawer 1",
    "inventory",
    "look",
    "move pen 1 to desk 1",
    "use desklamp 1",
]


def test_first_and_last_take_the_ends_of_the_list():
    rng = random.Random(0)
    assert floor_action("first", "You arrive at drawer 1.", AT_DRAWER, rng) == "close drawer 1"
    assert floor_action("last", "You arrive at drawer 1.", AT_DRAWER, rng) == "take pencil 2 from drawer 1"
    assert floor_action("last", "Nothing happens.", [], rng) == "look"  # nothing listed: look, as the expert does


def test_random_draws_uniformly_from_the_list_with_the_given_generator():
    assert floor_action("random", "", AT_DRAWER, random.Random(7)) == random.Random(7).choice(AT_DRAWER)
    counts = pd.Series([floor_action("random", "", CLOSED_HERE, random.Random(s)) for s in range(600)]).value_counts()
    assert set(counts.index) == set(CLOSED_HERE) and counts.min() > 600 / len(CLOSED_HERE) / 2


def test_the_task_blind_rule_on_hand_built_states():
    rng = random.Random(0)
    assert task_blind_rule("You arrive at cabinet 1. The cabinet 1 is closed.", CLOSED_HERE, rng) == "open cabinet 1"
    # holding nothing where things lie: take one of them at random
    assert task_blind_rule("You open the drawer 1.", AT_DRAWER, random.Random(3)) == random.Random(3).choice(
        AT_DRAWER[-2:]
    )
    # just arrived at a device holding something: transform it
    assert task_blind_rule("You arrive at sinkbasin 1.", HOLDING_AT_SINK, rng) == "clean pen 1 with sinkbasin 1"
    # a lamp here: use it, whatever else is listed
    assert task_blind_rule("You arrive at desk 1.", HOLDING_AT_DESK_WITH_LAMP, rng) == "use desklamp 1"
    # just transformed it: put it down here or walk on, even odds; picked up: walk on to a random place
    draws = {
        task_blind_rule("You clean the pen 1 using the sinkbasin 1.", HOLDING_AT_SINK, random.Random(s))
        for s in range(40)
    }
    assert draws == {"move pen 1 to sinkbasin 1", "go to desk 1", "go to drawer 1"}
    picked_up = "You pick up the pen 1 from the drawer 1."
    assert task_blind_rule(picked_up, HOLDING_AT_SINK, random.Random(1)) in {"go to desk 1", "go to drawer 1"}


def test_the_rule_reads_no_name():
    """Task-blind by construction: renaming every object and receptacle renames its choice and nothing else."""
    renamed = {"pen": "vase", "pencil": "watch", "drawer": "shelf", "cabinet": "safe", "desk": "sofa"}

    def rename(text):
        return " ".join(renamed.get(word, word) for word in text.split(" "))

    for observation, listed in [("You arrive at drawer 1.", AT_DRAWER), ("You arrive at cabinet 1.", CLOSED_HERE)]:
        for seed in range(10):
            choice = task_blind_rule(observation, listed, random.Random(seed))
            assert task_blind_rule(rename(observation), [rename(c) for c in listed], random.Random(seed)) == rename(
                choice
            )


def test_a_floor_policy_answers_in_the_prompt_format_and_replays_with_its_seed(generator):
    requests = [TurnRequest([1, 2], None, 0, tuple(AT_DRAWER), observation="You arrive at drawer 1.")] * 3
    policy = FloorPolicy("random", generator.tokenizer, think=False)
    first = policy.act(requests, seed=5)
    assert [g.text for g in first] == [g.text for g in policy.act(requests, seed=5)]
    assert all(g.text.startswith("<action>") and set(g.logprobs) == {0.0} for g in first)
    assert policy.name == "floor:random"
    with pytest.raises(ValueError, match="floor must be one of random, first, last, rule, not 'best'"):
        FloorPolicy("best", generator.tokenizer, think=False)


@pytest.mark.parametrize("floor", ["random", "first", "last", "rule"])
def test_each_floor_is_an_eval_policy_on_real_games(make_config, floor):
    config = make_config(f"eval.policy=floor:{floor}", "env.max_steps=6")
    result = run_eval(config, 1)
    assert result.complete and result.directory.parent.name == f"eval-floor_{floor}"
    rows = pd.read_parquet(result.directory)
    assert len(rows) == 6 and (rows["policy"] == f"floor:{floor}").all() and (rows["invalid_actions"] == 0).all()
    again = run_eval(make_config(f"eval.policy=floor:{floor}", "env.max_steps=6", "run=again"), 1)
    assert pd.read_parquet(again.directory)["turns"].tolist() == rows["turns"].tolist()  # the same draws


def test_the_searching_expert_is_the_ceiling_policy(make_config):
    """`expert:sweep` plays the env's sweeping expert: it wins every mini game it has the steps for."""
    result = run_eval(make_config("eval.policy=expert:sweep", "env.max_steps=30"), 1)
    rows = pd.read_parquet(result.directory)
    assert result.directory.parent.name == "eval-expert_sweep"
    assert len(rows) == 6 and rows["won"].all() and (rows["policy"] == "expert:sweep").all()
