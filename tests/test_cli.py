"""Every user error on the command line: one clear line on stderr, exit code 2, nothing written."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stages.cli import app

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cli(tmp_path, tiny_models):
    runner = CliRunner()
    base = [
        f"--set=runs_dir={tmp_path / 'runs'}",
        f"--set=models.student={tiny_models['student']}",
        "--set=env.max_steps=2",
        "--set=sampling.max_new_tokens=4",
    ]

    def invoke(*args: str):
        return runner.invoke(app, [args[0], *base, *args[1:]])

    return invoke


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["rollout", "--set", "rollout.bogus=1"], "unknown config key 'rollout.bogus'"),
        (["rollout", "--set", "env.max_steps=-1"], "bad config value in env: max_steps must be at least 1"),
        (["rollout", "--split", "test"], "unknown split 'test'"),
        (["eval", "--num-games", "-2"], "num_games must be 0 (all) or more"),
        (["rollout", "--num-games", "999"], "rollout.num_games=999 but split train holds 12 games"),
        (["rollout", "--config", "nowhere.yaml"], "config file not found: nowhere.yaml"),
        (["rollout", "--policy", "no/such/checkpoint"], "--policy must be one of student, teacher, expert"),
        (["rollout", "--set", "models.student=/no/such/model"], "model folder /no/such/model does not exist"),
        (["rollout", "--shard-index", "2", "--num-shards", "2"], "--shard-index must be in [0, --num-shards)"),
        (["rollout", "--round", "0"], "--round must be 1 or more"),
        (["eval", "--set", "data.path=/no/data"], "data.path=/no/data does not hold ALFWorld games"),
        (["train", "--set", "train.trainer_args.lr_sheduler=cosine"], "train.trainer_args.lr_sheduler is not a"),
        (["round", "--set", "train.trainer_args.lr_scheduler_type=sideways"], "train.trainer_args.lr_scheduler_type: "),
        (["round", "--set", "train.trainer_args.learning_rate=1"], "set train.learning_rate instead."),
        (["train", "--set", "train.report_to=[tensorbord]"], "'tensorbord' is not a tracker TRL knows"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(cli, tmp_path, args, message):
    if "models.student=/no/such/model" in args:
        args = [*args, "--split", "valid_unseen", "--num-games", "1"]
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists(), "a refused command must not create anything"


@pytest.mark.parametrize("unset", [{}, {"ALFWORLD_DATA": ""}], ids=["unset", "empty"])
def test_missing_full_data_says_what_to_provide(tmp_path, unset):
    """A fresh process in an empty folder with no ALFWORLD_DATA (or an empty one, as `export
    ALFWORLD_DATA=$UNSET` leaves it): the message names every way to fix it."""
    env = {**{k: v for k, v in os.environ.items() if k != "ALFWORLD_DATA"}, **unset}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "stages",
            "eval",
            "--config",
            str(REPO / "configs" / "default.yaml"),
            "--set",
            "data.source=alfworld",
            "--set",
            f"runs_dir={tmp_path / 'runs'}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: ALFWorld data not found: set ALFWORLD_DATA to the folder holding json_2.1.1/, or run "
        "`sage-opd prepare --archive PATH/alfworld-json_2.1.1.tar.gz` (or `--download`)"
    )
    assert not (tmp_path / "runs").exists()


def test_an_empty_alfworld_data_reads_as_unset_so_alfworld_imports(tmp_path):
    """alfworld's import creates $ALFWORLD_DATA and fails on "": the commands drop an empty one first."""
    code = "from stages.common import set_offline_defaults; set_offline_defaults(); import alfworld.info"
    env = {**os.environ, "ALFWORLD_DATA": "", "HOME": str(tmp_path)}  # its default folder lands in tmp_path
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_rollout_ends_with_a_one_line_summary(cli):
    result = cli("rollout", "--policy", "expert", "--num-games", "2", "--samples-per-game", "1")
    assert result.exit_code == 0, result.output
    (line,) = [text for text in result.stdout.splitlines() if text.startswith("rollout:")]
    assert line.startswith("rollout: 2 episodes played (0 won, 0.0%), 4 turns; 1 shards written, 0 already done")
    assert line.endswith("[complete]")
