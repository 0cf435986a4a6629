"""Action parsing flags and the prompt text the agent reads."""

import pytest

from pipeline.envs.actions import parse_action
from pipeline.envs.prompts import TurnView, build_messages, format_response, read_task, render_user_message


@pytest.mark.parametrize(
    ("response", "think", "action", "format_ok"),
    [
        ("<action>go to desk 1</action>", False, "go to desk 1", True),
        ("  <ACTION>  Go To   Desk 1 </ACTION>\n", False, "go to desk 1", True),
        ("<think>the mug is on the desk</think><action>go to desk 1</action>", True, "go to desk 1", True),
        ("<action>go to desk 1</action>", True, "go to desk 1", False),  # reasoning was asked for
        ("<action>go to desk 1</action><think>late</think>", True, "go to desk 1", False),
        ("<action>look</action><action>inventory</action>", False, "look", False),
        ("<action>  </action>", False, "", False),
        ("Go to desk 1", False, "go to desk 1", False),  # no tag: sent as-is, flagged
        ("<action>go to desk 1", False, "<action>go to desk 1", False),  # unclosed tag
        ("", False, "", False),
    ],
)
def test_parse_action(response, think, action, format_ok):
    parsed = parse_action(response, think)
    assert (parsed.action, parsed.format_ok) == (action, format_ok)


def test_expert_format_parses_back():
    assert parse_action(format_response("take mug 1 from desk 1")).format_ok
    assert parse_action(format_response("look", reasoning=""), think=True).format_ok


VIEW = TurnView(
    task="put a mug in desk",
    turn=3,
    max_steps=50,
    history=(("You arrive at shelf 1.", "go to shelf 1"), ("On the shelf 1, you see a mug 1.", "take mug 1")),
    observation="You pick up the mug 1 from the shelf 1.",
    admissible=("go to desk 1", "inventory", "look"),
)


def test_user_message_shows_task_step_history_observation_and_actions():
    assert render_user_message(VIEW) == (
        "Your task: put a mug in desk.\n"
        "This is step 4 of at most 50.\n"
        "What happened just before:\n"
        '- step 2: you saw "You arrive at shelf 1." and did "go to shelf 1".\n'
        '- step 3: you saw "On the shelf 1, you see a mug 1." and did "take mug 1".\n'
        "What you see now: You pick up the mug 1 from the shelf 1.\n"
        "Admissible actions: go to desk 1, inventory, look.\n"
        "Which action do you take?"
    )


def test_first_turn_has_no_history_block():
    first = TurnView("put a mug in desk", 0, 50, (), "You are in the middle of a room.", ("look",))
    assert "What happened just before" not in render_user_message(first)


def test_system_prompt_follows_the_reasoning_switch():
    with_thinking, action_only = build_messages(VIEW, True)[0]["content"], build_messages(VIEW, False)[0]["content"]
    assert "<think></think>" in with_thinking and "<think>" not in action_only


def test_the_task_reads_back_from_a_rendered_prompt():
    assert read_task("<|im_start|>user\n" + render_user_message(VIEW) + "<|im_end|>") == "put a mug in desk"
    assert read_task("no task line here") == ""
