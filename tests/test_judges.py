"""Turn judgment: each rule on its own, the prompt judge's parser, and the likelihood judge's thresholds."""

import pytest
import torch

from pipeline.backends.hf import Generation, load_causal_lm, load_tokenizer
from pipeline.backends.hf_score import HFScorer
from pipeline.envs.prompts import PromptRenderer, TurnView, format_response
from pipeline.errors import UserError
from pipeline.judges import (
    Judgment,
    LikelihoodJudge,
    PromptJudge,
    RulesOnlyJudge,
    judge_turns,
    parse_judgment,
    rule_flags,
)

CLEAN = {
    "truncated": False,
    "format_ok": True,
    "admissible": True,
    "feedback": "You arrive at desk 1.",
    "repeated": False,
}


@pytest.mark.parametrize(
    ("change", "flag"),
    [
        ({"truncated": True}, "truncated"),
        ({"format_ok": False}, "malformed"),
        ({"admissible": False}, "not_admissible"),
        ({"feedback": "Nothing happens."}, "nothing_happens"),
        ({"repeated": True}, "repeat"),
    ],
)
def test_each_rule_fires_on_its_case_and_only_there(change, flag):
    assert rule_flags({**CLEAN, **change}) == (flag,)


def test_a_clean_turn_fires_no_rule_and_several_can_fire_together():
    assert rule_flags(CLEAN) == ()
    garbled = {**CLEAN, "format_ok": False, "admissible": False, "feedback": "Nothing happens."}
    assert rule_flags(garbled) == ("malformed", "not_admissible", "nothing_happens")


def test_rules_settle_flagged_turns_and_only_open_ones_reach_the_judge():
    seen = []

    class Recorder:
        def judge(self, turns, histories):
            seen.extend(t["name"] for t in turns)
            return [Judgment("skip", "judge") for _ in turns]

    turns = [{**CLEAN, "name": "a"}, {**CLEAN, "repeated": True, "name": "b"}, {**CLEAN, "name": "c"}]
    judgments = judge_turns(Recorder(), turns, [[], [], []])
    assert seen == ["a", "c"]
    assert judgments == [
        Judgment("skip", "judge"),
        Judgment("strong", "rule", ("repeat",)),
        Judgment("skip", "judge"),
    ]
    assert judge_turns(RulesOnlyJudge(), turns[:1], [[]]) == [Judgment("weak", "rule")]


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("skip", "skip"),
        ("Weak", "weak"),
        ("STRONG.", "strong"),
        ("  strong\n", "strong"),
        ("Answer: weak, because the mug is elsewhere", "weak"),
        ("I would say strong, not weak", "strong"),
        ("skipping ahead", None),
        ("asdf qwer", None),
        ("", None),
        ("\x00\ufffd<|im_end|>", None),
    ],
)
def test_prompt_judge_parser(answer, label):
    assert parse_judgment(answer) == label


class FixedAnswers:
    """Stands in for the teacher's generator: the judge's own logic is under test here."""

    def __init__(self, tokenizer, answers):
        self.tokenizer, self.answers, self.prompts = tokenizer, answers, []

    def generate(self, prompts, **kwargs):
        self.prompts += prompts
        assert kwargs["temperature"] == 0.0  # greedy
        return [Generation([], text, []) for text in self.answers]


def turn_row(tokenizer, action="go to desk 1", admissible=("go to desk 1", "go to shelf 1", "look")):
    view = TurnView("put a mug in desk", 1, 20, (("You are in a room.", "look"),), "You see a desk 1.", admissible)
    prompt_text, prompt_ids = PromptRenderer(tokenizer, think=False).render(view)
    return {
        **CLEAN,
        "prompt_text": prompt_text,
        "prompt_ids": prompt_ids,
        "response_text": format_response(action),
        "action": action,
        "observation": view.observation,
        "admissible_commands": list(admissible),
    }


def test_prompt_judge_labels_and_falls_back_with_the_raw_answer(tiny_models):
    tokenizer = load_tokenizer(tiny_models["teacher"])
    turns = [turn_row(tokenizer)] * 3
    generator = FixedAnswers(tokenizer, ["weak", "Skip.", "no idea"])
    judgments = PromptJudge(generator, max_new_tokens=8, history=2).judge(turns, [[("o", "a")]] * 3)
    assert judgments == [
        Judgment("weak", "judge", (), "weak"),
        Judgment("skip", "judge", (), "Skip."),
        Judgment("strong", "fallback", (), "no idea"),
    ]
    request = tokenizer.decode(generator.prompts[0])
    assert "Task: put a mug in desk" in request and "The game replied: You arrive at desk 1." in request
    assert "won" not in request.lower() and "reward" not in request.lower()


def test_prompt_judge_fits_the_context_keeping_the_reply_and_the_action(tiny_models):
    """A long reasoning and a long history against a small context: the oldest moves go, then the front of
    the answer; the game's reply, the question and the action at the answer's end stay whole."""
    tokenizer = load_tokenizer(tiny_models["teacher"])
    reasoning = " ".join(["the mug may be on the shelf or in the cabinet"] * 40)
    turn = {**turn_row(tokenizer), "episode_id": "game-s0", "turn": 6}
    turn["response_text"] = format_response("go to desk 1", reasoning=reasoning)
    history = [(f"You arrive at shelf {i}. On the shelf {i}, you see nothing.", f"go to shelf {i}") for i in range(6)]
    generator = FixedAnswers(tokenizer, ["weak"])
    whole = len(PromptJudge(generator, max_new_tokens=8, history=6)._request(turn, history, "put a mug in desk"))
    room = whole // 3
    (judgment,) = PromptJudge(generator, max_new_tokens=8, history=6, max_prompt_tokens=room).judge([turn], [history])
    assert judgment == Judgment("weak", "judge", (), "weak")
    request = tokenizer.decode(generator.prompts[-1])
    assert len(generator.prompts[-1]) <= room
    assert "The game replied: You arrive at desk 1." in request and "Grade this move: skip, weak or strong?" in request
    assert "The student answered: […]" in request and request.count("<action>go to desk 1</action>") == 1
    assert "shelf 0" not in request  # the oldest move went first
    with pytest.raises(UserError, match=r"needs \d+ tokens with only the game's reply and the question left whole"):
        PromptJudge(generator, max_new_tokens=8, history=6, max_prompt_tokens=20).judge([turn], [history])


def test_prompt_judge_on_a_real_teacher_keeps_whatever_it_says(tiny_models):
    from pipeline.backends.hf import HFGenerator

    tokenizer = load_tokenizer(tiny_models["teacher"])
    model = load_causal_lm(tiny_models["teacher"], torch.device("cpu"), torch.float32)
    (judgment,) = PromptJudge(HFGenerator(model, tokenizer), max_new_tokens=6, history=2).judge(
        [turn_row(tokenizer)], [[]]
    )
    expected = parse_judgment(judgment.output)
    assert judgment.label == (expected or "strong")
    assert judgment.source == ("judge" if expected else "fallback")


def fine_tune_to_prefer(model, tokenizer, prompt_ids, preferences, steps=40):
    """A few optimizer steps so the teacher puts most mass on one action and some on another."""
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = 0.0
        for action, weight in preferences.items():
            response = tokenizer(format_response(action), add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt_ids + response + [tokenizer.eos_token_id]])
            labels = ids.clone()
            labels[0, : len(prompt_ids)] = -100
            loss = loss + weight * model(ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def test_likelihood_judge_follows_its_thresholds(tiny_models):
    tokenizer = load_tokenizer(tiny_models["teacher"])
    model = load_causal_lm(tiny_models["teacher"], torch.device("cpu"), torch.float32)
    admissible = ("go to desk 1", "go to shelf 1", "look", "inventory", "go to drawer 2")
    base = turn_row(tokenizer, admissible=admissible)
    fine_tune_to_prefer(model, tokenizer, base["prompt_ids"], {"go to desk 1": 1.0, "go to shelf 1": 0.5})
    judge = LikelihoodJudge(HFScorer(model, k=5, max_tokens_per_batch=4096), tokenizer, strong_below=0.05, think=False)
    turns = [{**base, "action": action} for action in admissible]
    judgments = judge.judge(turns, [[]] * len(turns))
    probs = {a: float(j.output.split()[0].removeprefix("p=")) for a, j in zip(admissible, judgments, strict=True)}
    assert max(probs, key=probs.get) == "go to desk 1"
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-3)
    for action, judgment in zip(admissible, judgments, strict=True):
        expected = "skip" if action == "go to desk 1" else "strong" if probs[action] < 0.05 else "weak"
        assert (judgment.label, judgment.source) == (expected, "judge"), (action, judgment.output)
    labels = [j.label for j in judgments]
    assert labels[0] == "skip" and labels[1] == "weak" and "strong" in labels[2:]
    assert judgments[1].output.startswith("p=") and "rank=2/5 top='go to desk 1'" in judgments[1].output
