"""The console: light start-up, a progress line on stderr when it is not a terminal, and stdout holding only
the one-line summary, down to `make round`."""

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.progress import open_progress, showing
from stages.cli import app
from stages.common import EpisodeProgress, StageProgress

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "trl", "datasets", "matplotlib", "pandas")


def loaded_after(code: str) -> list[str]:
    """The heavy modules a fresh interpreter holds after running `code`."""
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_the_command_line_loads_no_heavy_module_for_help_or_a_config_error():
    assert loaded_after("import stages.cli") == []
    invoke = "from typer.testing import CliRunner\nfrom stages.cli import app\nr = CliRunner().invoke(app, {args!r})"
    sweep_typo = ["sweep", "--config", "configs/ablations/opd.yaml", "--set", "rollout.bogus=1"]
    for args in (["round", "--help"], ["view", "--help"], ["rollout", "--set", "rollout.bogus=1"], sweep_typo):
        assert loaded_after(invoke.format(args=args)) == [], args


def test_round_help_shows_force():
    result = CliRunner().invoke(app, ["round", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--force" in result.stdout


def test_a_bar_off_a_terminal_writes_a_line_every_interval_and_one_at_the_end(capsys):
    bar = StageProgress("annotate round 1", "turns", every=0.05)
    bar.begin(4)
    bar.advance(1, "half way")
    time.sleep(0.3)
    bar.advance(3)  # the total: the bar closes itself
    time.sleep(0.1)
    bar.close()  # and closing again says nothing more
    lines = capsys.readouterr().err.splitlines()
    assert capsys.readouterr().out == ""
    assert len(lines) >= 3
    assert all(re.fullmatch(r"annotate round 1: 1/4 turns, half way, \d+ s", line) for line in lines[:-1]), lines
    assert re.fullmatch(r"annotate round 1: 4/4 turns, half way, \d+ s", lines[-1])


def test_episode_progress_notes_the_success_so_far(capsys):
    class Played:
        def __init__(self, won: bool) -> None:
            self.won = won

    bar = EpisodeProgress("eval round 2", every=60)
    bar.begin(3)
    for won in (True, False, False):
        bar(Played(won))
    assert re.fullmatch(r"eval round 2: 3/3 episodes, success 33%, \d+ s\n", capsys.readouterr().err)


def test_library_progress_goes_to_the_installed_display_only():
    assert open_progress("train", "steps") is None
    with showing(lambda label, unit: (label, unit)):
        assert open_progress("train", "steps") == ("train", "steps")
    assert open_progress("train", "steps") is None


@pytest.mark.slow
def test_make_round_prints_exactly_the_summary_line(tmp_path, tiny_models):
    """The real `make round` on the tiny default, made small: stdout is the round's line and nothing else."""
    if subprocess.run(["make", "-q", "setup"], cwd=REPO, capture_output=True).returncode != 0:
        pytest.skip("the virtualenv is not set up: `make setup` first (CI runs it before the tests)")
    config = tmp_path / "small.yaml"
    settings = {
        "base": str(REPO / "configs" / "default.yaml"),
        "runs_dir": str(tmp_path / "runs"),
        "models": {"student": str(tiny_models["student"]), "teacher": str(tiny_models["teacher"])},
        "env": {"max_steps": 3},
        "sampling": {"max_new_tokens": 12, "batch_size": 6},
        "rollout": {"num_games": 3, "samples_per_game": 1, "episodes_per_shard": 3},
        "eval": {"splits": ["valid_unseen"], "num_games": 2, "samples_per_game": 1},
        "train": {"epochs": 1, "per_device_batch_size": 4, "logging_steps": 1},
        "prepare": {"teacher_sft_epochs": 0, "student_sft_epochs": 0},
        "runtime": {"threads": 1},
    }
    config.write_text(yaml.safe_dump(settings))
    done = subprocess.run(
        ["make", "--no-print-directory", "round", f"CONFIG={config}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    rounds_file = tmp_path / "runs" / "default" / "rounds.jsonl"
    pattern = (
        r"round 1: student success valid_unseen \d+\.\d% \(initial student valid_unseen \d+\.\d%\); "
        r"rollout success \d+\.\d%; skip \d+ / weak \d+ / strong \d+; rollout \d+s, annotate \d+s, train \d+s, "
        rf"eval \d+s, eval-initial \d+s -> {re.escape(str(rounds_file))}\n"
    )
    assert re.fullmatch(pattern, done.stdout), done.stdout
    assert "{'loss'" not in done.stderr and "'loss':" not in done.stderr
    for stage in ("rollout round 1: 3/3 episodes", "annotate round 1: ", "train: ", "eval round 1: 2/2 episodes"):
        assert stage in done.stderr, stage
    assert re.search(r"^train: (\d+)/\1 steps, loss \d+\.\d{4}, \d+ s$", done.stderr, re.MULTILINE), done.stderr
