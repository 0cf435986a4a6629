"""The train stage and `round`: checkpoints, skipping what is done, rounds.jsonl, resume after a stop."""

import functools
import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from typer.testing import CliRunner

from pipeline import train as train_module
from pipeline.annotate import run_annotate
from pipeline.checkpoints import TRAIN_LOG, read_train_log
from pipeline.errors import StorageError, UserError
from pipeline.executors import LocalExecutor
from pipeline.play import run_rollout
from pipeline.provenance import code_version
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
    steps = read_train_log(result.directory, record)
    assert record["inputs"]["annotations"] is not None and [entry["step"] for entry in steps if "loss" in entry] == [
        1,
        2,
        3,
    ]
    assert "log_history" not in record and TRAIN_LOG in record["files"]  # the log is hashed with the weights
    assert record["provenance"] == {**code_version(), "world_size": 1, "device": "cpu", "dtype": "float32"}
    layout = RunLayout.of(annotated)
    assert resolve_policy("student", annotated, layout, 2, after_training=False).model == str(result.directory)
    assert resolve_policy("student", annotated, layout, 1, after_training=True).model == str(result.directory)
    assert resolve_policy("student", annotated, layout, 1, after_training=False).model == annotated.models.student


def test_tensorboard_gets_every_logged_step_inside_the_round(annotated, make_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = make_config(
        *SMALL, "train.per_device_batch_size=4", "train.learning_rate=1e-3", "train.report_to=[tensorboard]"
    )
    result = run_train(config, 1)
    record = json.loads((result.directory / RECORD_FILE).read_text())
    logged = [entry for entry in read_train_log(result.directory, record) if "loss" in entry]
    events = EventAccumulator(str(RunLayout.of(config).round_dir(1) / "logs" / "tensorboard"))
    events.Reload()
    points = events.Scalars("train/loss")
    assert [point.step for point in points] == [entry["step"] for entry in logged]
    assert [point.value for point in points] == pytest.approx([entry["loss"] for entry in logged])
    assert [point.value for point in events.Scalars("train/nll")] == pytest.approx([entry["nll"] for entry in logged])


def test_a_train_log_from_before_its_file_is_read_from_the_record_and_a_damaged_one_is_refused(tmp_path):
    history = [{"step": 1, "loss": 0.5}, {"step": 1, "train_runtime": 2.0}]
    assert read_train_log(tmp_path, {"log_history": history}) == history
    (tmp_path / TRAIN_LOG).write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')
    with pytest.raises(StorageError, match="rerun `sage-opd train` with --force"):
        read_train_log(tmp_path, {})


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


class StopAfter(TrainerCallback):
    """A kill right after optimizer step `step` (its saved state, if due, is already written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_a_killed_train_resumes_from_its_last_whole_saved_state_and_ends_as_a_straight_one(
    annotated, make_config, monkeypatch
):
    config = make_config(
        *SMALL, "train.per_device_batch_size=4", "train.learning_rate=1e-3", "train.epochs=2", "train.save_steps=2"
    )
    straight = run_train(config, 1)  # 9 turns in batches of 4: 3 steps per epoch, 6 in all
    reference = parameters(straight.directory)
    saves = straight.directory.parent / ".train-states"
    assert straight.steps == 6 and not saves.exists()  # a whole checkpoint needs no saved states
    shutil.rmtree(straight.directory)
    (saves / "checkpoint-2").mkdir(parents=True)  # left by a training with other settings: never resumed
    (saves / "checkpoint-2" / "sage-opd-whole").touch()
    (saves / "setup.fingerprint").write_text("another training")

    monkeypatch.setattr(
        train_module, "train_student", functools.partial(train_module.train_student, callbacks=[StopAfter(5)])
    )
    with pytest.raises(KeyboardInterrupt):
        run_train(config, 1)
    monkeypatch.undo()
    assert not straight.directory.exists()
    assert sorted(path.name for path in saves.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    (saves / "checkpoint-4" / "sage-opd-whole").unlink()  # as if the kill came while step 4 was being saved

    resumed = run_train(config, 1)
    record = json.loads((resumed.directory / RECORD_FILE).read_text())
    assert resumed.steps == 6 and record["resumed_from_step"] == 2 and not saves.exists()
    logged = [entry["step"] for entry in read_train_log(resumed.directory, record) if "loss" in entry]
    assert logged == [1, 2, 3, 4, 5, 6]  # the steps before the saved state come back with it
    after = parameters(resumed.directory)
    for name, value in reference.items():
        torch.testing.assert_close(after[name], value, rtol=1e-5, atol=1e-7)


def parameters(directory):
    return {
        name: value.detach().clone()
        for name, value in AutoModelForCausalLM.from_pretrained(directory).named_parameters()
    }


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
    # each stage's own record: this checkout, one process, the CPU in float32
    ran_here = {**code_version(), "world_size": 1, "device": "cpu", "dtype": "float32"}
    assert first["provenance"] == {stage: ran_here for stage in first["seconds"]}

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(LocalExecutor, "train", stop)
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


def test_a_lora_round_loads_as_any_checkpoint_and_the_next_round_adapts_it_again(make_config):
    config = make_config(*SMALL, "train.per_device_batch_size=4", "train.peft.r=4", "train.learning_rate=1e-2")
    first, second = run_round(config), run_round(config)
    layout = RunLayout.of(config)
    for round_ in (1, 2):
        checkpoint = layout.stage_dir(round_, "checkpoint")
        assert (checkpoint / "adapter" / "adapter_config.json").is_file()  # the adapter beside the merged model
        assert not (checkpoint / "adapter_config.json").exists()  # the checkpoint itself is a plain model
    assert second["train_steps"] == first["train_steps"] > 0 and second["student_success"] is not None
    assert resolve_policy("student", config, layout, 2, after_training=False).model == str(
        layout.stage_dir(1, "checkpoint")
    )
