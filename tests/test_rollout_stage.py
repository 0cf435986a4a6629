"""Rollout and eval stages end to end on the shipped mini games with tiny models."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import datasets
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from conftest import wait_until_a_part_is_listed

from pipeline.backends.hf import load_causal_lm
from pipeline.errors import UserError
from pipeline.play import Sharding, run_eval, run_rollout
from pipeline.schema import EVAL_SCHEMA, TURNS_SCHEMA
from pipeline.shards import read_manifest, read_stage

REPO = Path(__file__).resolve().parents[1]

LIST_COLUMNS = ["prompt_ids", "response_ids", "sampler_logprobs", "admissible_commands"]


@pytest.fixture
def rollout_dir(make_config):
    config = make_config()
    result = run_rollout(config, 1)
    assert result.complete and result.parts_written == 2
    return result.directory


def test_turn_shards_have_the_exact_schema_and_any_reader_opens_them(rollout_dir, tmp_path):
    parts = sorted(rollout_dir.glob("part-*.parquet"))
    assert [p.name for p in parts] == ["part-00000.parquet", "part-00001.parquet"]
    for part in parts:
        assert pq.read_schema(part).remove_metadata() == TURNS_SCHEMA
    frame = pd.read_parquet(rollout_dir)
    loaded = datasets.load_dataset(
        "parquet", data_files=[str(p) for p in parts], split="train", cache_dir=str(tmp_path / "hf")
    )
    assert len(loaded) == len(frame) > 0
    assert loaded.column_names == TURNS_SCHEMA.names
    first = loaded[0]
    assert first["prompt_ids"] == list(frame.iloc[0]["prompt_ids"])
    assert first["sampler_logprobs"] == pytest.approx(list(frame.iloc[0]["sampler_logprobs"]))


def test_turn_rows_are_consistent(rollout_dir, tiny_models):
    frame = pd.read_parquet(rollout_dir)
    assert frame["episode_id"].nunique() == 6
    assert not frame.duplicated(["episode_id", "turn"]).any()
    assert (frame["response_ids"].map(len) == frame["sampler_logprobs"].map(len)).all()
    assert (frame["response_ids"].map(len) > 0).all()
    for _, episode in frame.groupby("episode_id"):
        assert episode["turn"].tolist() == list(range(len(episode)))
        assert (episode["episode_turns"] == len(episode)).all()
        assert episode["done"].tolist() == [False] * (len(episode) - 1) + [True]
        assert (episode["episode_won"] == episode["won"].iloc[-1]).all()
        # the feedback of one turn is the observation of the next
        assert episode["feedback"].iloc[:-1].tolist() == episode["observation"].iloc[1:].tolist()
    assert set(frame["policy"]) == {"student"} and set(frame["run"]) == {"default"}
    assert frame["error"].isna().all()
    manifest = read_manifest(rollout_dir, "turns")
    assert manifest["status"] == "complete"
    assert manifest["models"]["checkpoint"] == str(tiny_models["student"])


def test_sampler_logprobs_equal_a_fresh_forward_pass_of_the_checkpoint(rollout_dir, tiny_models):
    model = load_causal_lm(tiny_models["student"], torch.device("cpu"), torch.float32)
    frame = pd.read_parquet(rollout_dir).head(8)
    for row in frame.itertuples():
        prompt, response = list(row.prompt_ids), list(row.response_ids)
        with torch.no_grad():
            logits = model(torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1]
        expected = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)
        torch.testing.assert_close(torch.tensor(row.sampler_logprobs), expected, atol=1e-4, rtol=1e-4)


def test_prompt_ids_are_the_tokenized_prompt_text(rollout_dir, tiny_models):
    from pipeline.backends.hf import load_tokenizer

    tokenizer = load_tokenizer(tiny_models["student"])
    row = pd.read_parquet(rollout_dir).iloc[0]
    assert tokenizer.decode(list(row["prompt_ids"])) == row["prompt_text"]
    assert row["prompt_text"].endswith("<|im_start|>assistant\n")
    assert "help" not in row["admissible_commands"]


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.drop(columns=["run"]).sort_values(["episode_id", "turn"]).reset_index(drop=True)
    for column in LIST_COLUMNS:
        frame[column] = frame[column].map(list)
    return frame


def test_same_seed_same_turns(make_config, rollout_dir):
    again = run_rollout(make_config("run=again"), 1).directory
    pd.testing.assert_frame_equal(comparable(pd.read_parquet(rollout_dir)), comparable(pd.read_parquet(again)))
    other = run_rollout(make_config("run=other", "seed=1"), 1).directory
    assert not comparable(pd.read_parquet(other))["response_ids"].equals(
        comparable(pd.read_parquet(rollout_dir))["response_ids"]
    )


def test_two_shard_processes_make_the_same_stage_as_one(make_config, rollout_dir):
    config = make_config("run=split")
    first = run_rollout(config, 1, Sharding(0, 2))
    assert (first.parts_written, first.complete) == (1, False)
    second = run_rollout(config, 1, Sharding(1, 2))
    assert (second.parts_written, second.complete) == (1, True)
    pd.testing.assert_frame_equal(
        comparable(pd.read_parquet(rollout_dir)), comparable(pd.read_parquet(second.directory))
    )


def test_a_rerun_skips_finished_shards(make_config, rollout_dir):
    mtimes = {p.name: p.stat().st_mtime_ns for p in rollout_dir.glob("part-*")}
    again = run_rollout(make_config(), 1)
    assert (again.parts_written, again.parts_skipped, again.complete) == (0, 2, True)
    assert {p.name: p.stat().st_mtime_ns for p in rollout_dir.glob("part-*")} == mtimes


def test_changed_settings_are_refused_until_forced(make_config, rollout_dir):
    with pytest.raises(UserError, match="--force"):
        run_rollout(make_config("env.max_steps=3"), 1)
    forced = run_rollout(make_config("env.max_steps=3"), 1, force=True)
    assert forced.parts_written == 2
    assert pd.read_parquet(forced.directory)["episode_turns"].max() <= 3


def test_killed_rollout_resumes_without_duplicates_or_loss(make_config, rollout_dir, tmp_path):
    """SIGKILL a real `sage-opd rollout` after its first shard, rerun it: same episodes, nothing twice."""
    config = make_config("run=killed")
    args = [sys.executable, "-m", "stages", "rollout", "--config", str(REPO / "configs" / "default.yaml")]
    args += [f"--set={item}" for item in overrides_of(config)]
    stage_dir = rollout_dir.parent.parent.parent / "killed" / "round-001" / "turns"
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_a_part_is_listed(stage_dir, "turns", process, 240)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = sorted(p.name for p in stage_dir.glob("part-*.parquet"))
    assert written == ["part-00000.parquet"], "the kill should land between the two shards"
    assert read_manifest(stage_dir, "turns")["status"] == "running"
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "1 shards written, 1 already done" in done.stdout
    resumed = read_stage(stage_dir, "turns").to_pandas()
    assert not resumed.duplicated(["episode_id", "turn"]).any()
    pd.testing.assert_frame_equal(comparable(pd.read_parquet(rollout_dir)), comparable(resumed))


def overrides_of(config) -> list[str]:
    return [
        f"run={config.run}",
        f"runs_dir={config.runs_dir}",
        f"models.student={config.models.student}",
        f"env.max_steps={config.env.max_steps}",
        f"sampling.max_new_tokens={config.sampling.max_new_tokens}",
        f"sampling.batch_size={config.sampling.batch_size}",
        f"rollout.num_games={config.rollout.num_games}",
        f"rollout.samples_per_game={config.rollout.samples_per_game}",
        f"rollout.episodes_per_shard={config.rollout.episodes_per_shard}",
        "runtime.threads=1",
    ]


def test_expert_eval_summary(make_config):
    config = make_config("eval.policy=expert", "env.max_steps=20", "eval.splits=[train, valid_unseen]")
    result = run_eval(config, 1)
    assert result.complete and result.directory.parent.name == "eval-expert"
    rows = pd.read_parquet(result.directory)
    assert pq.read_schema(next(result.directory.glob("part-*"))).remove_metadata() == EVAL_SCHEMA
    assert len(rows) == 18 and rows["won"].all()
    summary = result.summary
    assert summary["overall"]["episodes"] == 18 and summary["overall"]["success"] == 1.0
    assert summary["splits"]["train"]["episodes"] == 12
    assert {t: b["episodes"] for t, b in summary["splits"]["valid_unseen"]["task_types"].items()} == {
        t: 1 for t in rows["task_type"].unique()
    }
    assert summary["overall"]["invalid_action_rate"] == 0.0
    assert summary["overall"]["mean_turns"] == rows["turns"].mean()
    assert json.loads((result.directory.parent / "summary.json").read_text()) == summary


def test_student_eval_counts_invalid_and_repeated_actions(make_config):
    result = run_eval(make_config(), 1)
    rows = pd.read_parquet(result.directory)
    assert result.directory.parent.name == "eval"
    overall = result.summary["overall"]
    assert overall["episodes"] == len(rows) == 6
    assert overall["success"] == rows["won"].mean()
    assert overall["invalid_action_rate"] == rows["invalid_actions"].sum() / rows["turns"].sum()
    assert overall["repeated_action_rate"] == rows["repeated_actions"].sum() / rows["turns"].sum()


def test_admissible_only_rollout_plays_only_admissible_actions_on_real_games(make_config):
    """The untrained tiny student mostly spells no valid command; constrained, every action is one the game offered."""
    free = pd.read_parquet(run_rollout(make_config("run=free"), 1).directory)
    constrained = pd.read_parquet(
        run_rollout(make_config("run=constrained", "sampling.admissible_only=true"), 1).directory
    )
    assert not free["admissible"].all()
    assert constrained["admissible"].all() and constrained["format_ok"].all()
    assert all(
        action in commands
        for action, commands in zip(constrained["action"], constrained["admissible_commands"], strict=True)
    )


def test_stage_files_are_readable_by_others(rollout_dir):
    assert all(os.stat(p).st_mode & 0o044 for p in rollout_dir.iterdir() if not p.name.startswith("."))


def test_a_broken_environment_stops_the_stage_instead_of_writing_empty_shards(make_config, tmp_path):
    """Every game fails to load (here: unreadable game files): no empty 'complete' stage is left behind."""
    for task in ("pick_and_place_simple-Mug-None-Desk-1", "look_at_obj_in_light-Book-None-DeskLamp-2"):
        game = tmp_path / "broken" / "json_2.1.1" / "train" / task / "trial_0" / "game.tw-pddl"
        game.parent.mkdir(parents=True)
        game.write_text("{not a game")
    config = make_config(f"data.path={tmp_path / 'broken'}", "rollout.policy=expert", "rollout.num_games=2")
    with pytest.raises(UserError, match=r"every episode of part 0 failed, .*\(first error: reset failed: "):
        run_rollout(config, 1)
    assert not list((Path(config.runs_dir) / "default" / "round-001" / "turns").glob("part-*"))
