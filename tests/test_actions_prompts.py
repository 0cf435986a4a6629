"""Action parsing flags and the prompt text the agent reads."""

import dataclasses

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


def test_the_memory_line_sits_before_what_the_agent_sees_now():
    view = dataclasses.replace(VIEW, history=(), memory="shelf 1: nothing; drawer 1: closed")
    assert render_user_message(view).splitlines()[2:4] == [
        "Places you have been, with what you found there: shelf 1: nothing; drawer 1: closed.",
        "What you see now: You pick up the mug 1 from the shelf 1.",
    ]
    assert "Places you have been" not in render_user_message(VIEW)  # off unless env.memory is on


def test_first_turn_has_no_history_block():
    first = TurnView("put a mug in desk", 0, 50, (), "You are in the middle of a room.", ("look",))
    assert "What happened just before" not in render_user_message(first)


def test_system_prompt_follows_the_reasoning_switch():
    with_thinking, action_only = build_messages(VIEW, True)[0]["content"], build_messages(VIEW, False)[0]["content"]
    assert "<think></think>" in with_thinking and "<think>" not in action_only


def test_the_task_reads_back_from_a_rendered_prompt():
    assert read_task("<|im_start|>user\n" + render_user_message(VIEW) + "<|im_end|>") == "put a mug in desk"
    assert read_task("no task line here") == ""


@pytest.mark.parametrize("template", ["chatml", "thinking"])
def test_the_thinking_switch_reaches_a_qwen3_style_template_and_no_other(template):
    """`env.think` goes to the template as `enable_thinking`: a Qwen3-style template closes an empty thinking
    block in the prompt when it is off; plain ChatML renders the same prompt either way."""
    from pipeline.envs.prompts import PromptRenderer
    from pipeline.tiny_models import CHAT_TEMPLATE, THINKING_CHAT_TEMPLATE, train_tokenizer

    tokenizer = train_tokenizer(["you see a mug on the desk <think> </think> <action> go to </action>"] * 20, 300)
    tokenizer.chat_template = THINKING_CHAT_TEMPLATE if template == "thinking" else CHAT_TEMPLATE
    (off, off_ids), (on, on_ids) = (PromptRenderer(tokenizer, think).render(VIEW) for think in (False, True))
    assert on.endswith("<|im_start|>assistant\n")
    if template == "thinking":
        assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
        closed = tokenizer("<think>\n\n</think>\n\n", add_special_tokens=False)["input_ids"]
        assert off_ids[-len(closed) :] == closed  # the prompt's ids end with the closed block: the response follows
    else:
        assert off.endswith("<|im_start|>assistant\n") and off.replace(*_system_prompts()) == on
    # what a thinking model writes after either prompt parses back to its action
    said = "<think>\nThe mug is in my hand; the desk is next.\n</think>\n\n<action>go to desk 1</action>"
    assert parse_action(said, think=True) == parse_action("<action>go to desk 1</action>", think=False)


def _system_prompts() -> tuple[str, str]:
    from pipeline.envs.prompts import SYSTEM_ACTION_ONLY, SYSTEM_WITH_THINKING

    return SYSTEM_ACTION_ONLY, SYSTEM_WITH_THINKING
