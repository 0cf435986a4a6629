"""The train stage and `round`: checkpoints, skipping what is done, rounds.jsonl, resume after a stop."""

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from pipeline import rounds as rounds_module
from pipeline.annotate import run_annotate
from pipeline.errors import UserError
from pipeline.play import run_rollout
from pipeline.rounds import ROUNDS_FILE, next_round, recorded_rounds, run_round
from pipeline.runs import RunLayout, resolve_policy
from pipeline.train import RECORD_FILE, run_train
from stages.cli import app

SMALL = ("rollout.num_games=3", "env.max_steps=3", "eval.splits=[valid_unseen]", "eval.num_games=2")


@pytest.fixture
def annotated(make_config):
    config = make_config(*SMALL, "train.per_device_batch_size=4", "train.learning_rate=1e-3", "train.epochs=1")
    run_rollout(config, 1)
    run_annotate(config, 1)
    return config


def test_train_writes_a_loadable_checkpoint_and_the_next_round_rolls_it_out(annotated):
    result = run_train(annotated, 1)
    assert result.trained and result.steps == 3  # 9 turns in batches of 4
    AutoModelForCausalLM.from_pretrained(result.directory)
    AutoTokenizer.from_pretrained(result.directory)
    record = json.loads((result.directory / RECORD_FILE).read_text())
    assert record["status"] == "complete" and record["student"] == annotated.models.student
    assert record["inputs"]["annotations"] is not None and len(record["log_history"]) >= 3
    layout = RunLayout.of(annotated)
    assert resolve_policy("student", annotated, layout, 2, after_training=False).model == str(result.directory)
    assert resolve_policy("student", annotated, layout, 1, after_training=True).model == str(result.directory)
    assert resolve_policy("student", annotated, layout, 1, after_training=False).model == annotated.models.student


def test_train_skips_when_done_and_refuses_other_settings_until_forced(annotated, make_config):
    first = run_train(annotated, 1)
    weights = first.directory / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    again = run_train(annotated, 1)
    assert not again.trained and again.steps == first.steps and weights.stat().st_mtime_ns == stamp
    other = make_config(
        *SMALL, "train.per_device_batch_size=4", "train.learning_rate=1e-3", "train.epochs=1", "train.alpha=0.9"
    )
    with pytest.raises(UserError, match="--force"):
        run_train(other, 1)
    assert run_train(other, 1, force=True).trained


def test_sft_trains_without_annotations(make_config):
    config = make_config(
        *SMALL,
        "rollout.policy=expert",
        "train.loss=sft",
        "train.turn_selection=false",
        "train.confidence=none",
        "train.normalize=false",
    )
    run_rollout(config, 1)
    assert run_train(config, 1).trained
    assert not (RunLayout.of(config).round_dir(1) / "annotations").exists()


def test_rounds_append_lines_and_a_stopped_round_carries_on(make_config, monkeypatch):
    config = make_config(*SMALL, "train.per_device_batch_size=4")
    first = run_round(config)
    assert first["round"] == 1 and "initial_success" in first
    assert set(first["initial_success_by_split"]) == set(first["success_by_split"]) == {"valid_unseen"}
    # one split evaluated: its success is the overall one, for the initial and the trained student alike
    assert first["initial_success_by_split"]["valid_unseen"] == first["initial_success"]
    assert first["success_by_split"]["valid_unseen"] == first["student_success"]
    assert set(first["seconds"]) == {"rollout", "annotate", "train", "eval", "eval-initial"}
    assert sum(first["labels"].values()) == 9

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rounds_module, "run_train", stop)
    with pytest.raises(KeyboardInterrupt):
        run_round(config)
    layout = RunLayout.of(config)
    assert [e["round"] for e in recorded_rounds(layout)] == [1] and next_round(layout) == 2
    monkeypatch.undo()
    second = run_round(config)
    assert second["round"] == 2 and "initial_success" not in second
    lines = (layout.root / ROUNDS_FILE).read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2]
    assert RunLayout.of(config).checkpoint(2) is not None


def test_round_command_prints_one_line(make_config, tiny_models):
    config = make_config(*SMALL)
    args = [
        "round",
        f"--set=runs_dir={config.runs_dir}",
        f"--set=models.student={tiny_models['student']}",
        f"--set=models.teacher={tiny_models['teacher']}",
        *[f"--set={item}" for item in SMALL],
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (line,) = [text for text in result.stdout.splitlines() if text.startswith("round ")]
    assert line.startswith("round 1: student success ") and "(initial student " in line
    assert line.endswith(f"{config.runs_dir}/default/rounds.jsonl")
