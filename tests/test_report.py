"""`sage-opd report` on run folders written by the stages' own writers, with values chosen by hand.

Three runs: `opd` (rounds 1–2, teacher evaluated on the mini games, expert on the full ALFWorld games),
`sage` (rounds 1–3, round 2's eval left unfinished, fewer valid_seen games) and `sft` (one round, no
annotations). Every number the report shows is checked against the episodes written here.
"""

import json
import math
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.atomic import write_json
from pipeline.checkpoints import TRAIN_LOG
from pipeline.evaluation import summarize
from pipeline.play import EPISODES_DIR, SUMMARY_FILE
from pipeline.report import write_report
from pipeline.report.comparisons import Comparison, comparability_notes, compare_to_baseline, improvement_table
from pipeline.report.loading import load_runs
from pipeline.report.metrics import ALL_TASKS, eval_metrics
from pipeline.report.stats import relative_improvement
from pipeline.report.tables import MISSING, NOT_EVALUATED, round_log_table, success_grid, success_table, task_type_table
from pipeline.rounds import append_round
from pipeline.runs import RunLayout
from pipeline.shards import StageWriter
from pipeline.train import RECORD_FILE
from stages.cli import app

STUDENT = "data/models/tiny-student"  # the initial student: evaluated into round-001/eval-tiny-student
GAMES = [
    ("pick_and_place_simple-a", "pick_and_place_simple"),
    ("pick_and_place_simple-b", "pick_and_place_simple"),
    ("look_at_obj_in_light-c", "look_at_obj_in_light"),
    ("pick_two_obj_and_place-d", "pick_two_obj_and_place"),
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MINI = {"data": {"source": "mini"}}


def eval_rows(run: str, round_: int, policy: str, split: str, wins: str) -> list[dict]:
    """One episode per game of GAMES[:len(wins)]; wins "1010" = games a and c won. Turns, invalid and
    repeated actions follow from the game's position so that every rate is a known fraction."""
    rows = []
    for index, won in enumerate(wins):
        game, task_type = GAMES[index]
        rows.append(
            {
                "run": run,
                "round": round_,
                "policy": policy,
                "split": split,
                "episode_id": f"{split}/{game}#0",
                "game": f"{split}/{game}",
                "task_type": task_type,
                "sample": 0,
                "won": won == "1",
                "turns": 4 + index,
                "invalid_actions": index % 2,
                "repeated_actions": index // 2,
                "error": None,
            }
        )
    return rows


def write_eval(directory: Path, rows: list[dict], parts: int = 1, config: dict | None = None) -> None:
    """Eval shards and summary.json as `run_eval` writes them; with parts > 1 only the first is written."""
    writer = StageWriter(directory / EPISODES_DIR, "eval", config=config or MINI, inputs={}, models={}, num_parts=parts)
    writer.write_part(0, rows)
    if writer.finalize():
        write_json(directory / SUMMARY_FILE, summarize(rows))


def annotation_row(run: str, round_: int, episode: str, turn: int, label: str, confidence: list[float]) -> dict:
    return {
        "run": run,
        "round": round_,
        "episode_id": episode,
        "turn": turn,
        "label": label,
        "label_source": "judge",
        "rule_flags": [],
        "judge_output": label,
        "teacher_logprobs": [math.log(c) for c in confidence],
        "topk_ids": [[1] for _ in confidence],
        "topk_logprobs": [[math.log(c)] for c in confidence],
        "confidence": confidence,
        "teacher": "test-teacher",
    }


def write_annotations(directory: Path, run: str, round_: int, labels: list[str]) -> None:
    """Turn t of episode e gets labels[e * 3 + t]; its tokens have confidence 1/2 (skip), 1/4, 3/4 (others)."""
    token_confidence = {"skip": [0.5, 0.5], "weak": [0.25, 0.75], "strong": [0.25, 0.25]}
    rows = [
        annotation_row(run, round_, f"train/game-{i // 3}#0", i % 3, label, token_confidence.get(label, [0.5]))
        for i, label in enumerate(labels)
    ]
    writer = StageWriter(directory, "annotations", config={}, inputs={}, models={}, num_parts=1)
    writer.write_part(0, rows)
    assert writer.finalize()


def write_training(directory: Path, losses: list[float], turns: int, settings: dict | None = None) -> None:
    """A `_train.json` and `train_log.jsonl` with the keys `run_train` writes that the report reads; `settings`
    adds `train` and `seed`."""
    history = [{"step": i + 1, "loss": loss, "nll": 2 * loss, "rkl_sampled": loss / 2} for i, loss in enumerate(losses)]
    history.append({"step": len(losses), "train_runtime": 1.0, "train_loss": sum(losses) / len(losses)})
    record = {
        "student": STUDENT,
        "status": "complete",
        "steps": len(losses),
        "stats": {"turns": turns},
        **(settings or {}),
    }
    write_json(directory / RECORD_FILE, {**record, "mean_loss": sum(losses) / len(losses)})
    (directory / TRAIN_LOG).write_text("".join(json.dumps(entry) + "\n" for entry in history))


def log_line(round_: int, labels: dict | None, loss: float) -> dict:
    return {
        "round": round_,
        "student_success": None,
        "success_by_split": {},
        "rollout_success": 0.25 * round_,
        "labels": labels,
        "train_loss": loss,
        "train_steps": 2,
        "seconds": {"rollout": 10.0 * round_, "train": 3.0},
    }


def write_round(
    layout: RunLayout, round_: int, evals: dict[str, str] | None, labels: list[str] | None, loss: float
) -> None:
    """A finished round: annotations and student eval (each unless None), training record, rounds.jsonl line."""
    if labels is not None:
        write_annotations(layout.stage_dir(round_, "annotations"), layout.root.name, round_, labels)
    write_training(layout.stage_dir(round_, "checkpoint"), [loss + 0.5, loss], turns=len(labels or []) or 6)
    if evals is not None:
        rows = [r for split, wins in evals.items() for r in eval_rows(layout.root.name, round_, "student", split, wins)]
        write_eval(layout.stage_dir(round_, "eval"), rows)
    counts = None if labels is None else {name: labels.count(name) for name in ("skip", "weak", "strong")}
    append_round(layout, log_line(round_, counts, loss))


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    opd, sage, sft = (RunLayout(root / name) for name in ("opd", "sage", "sft"))
    labels = ["skip", "weak", "strong", "strong", "strong", "weak"]

    write_round(opd, 1, {"valid_seen": "1000", "valid_unseen": "1010"}, labels, 1.0)
    write_round(opd, 2, {"valid_seen": "1010", "valid_unseen": "1110"}, labels[::-1], 0.5)
    initial = {"valid_seen": "0000", "valid_unseen": "1000"}
    for layout in (opd, sage):
        rows = [r for split, wins in initial.items() for r in eval_rows("x", 1, STUDENT, split, wins)]
        write_eval(layout.stage_dir(1, "eval-tiny-student"), rows)
    write_eval(opd.stage_dir(1, "eval-teacher"), eval_rows("opd", 1, "teacher", "valid_unseen", "1111"))
    expert = eval_rows("opd", 2, "expert", "valid_unseen", "11")
    write_eval(opd.stage_dir(2, "eval-expert"), expert, config={"data": {"source": "alfworld"}})

    write_round(sage, 1, {"valid_seen": "10", "valid_unseen": "1101"}, ["skip"] * 4 + ["strong"] * 2, 0.8)
    write_round(sage, 2, None, ["skip"] * 6, 0.4)
    write_eval(sage.stage_dir(2, "eval"), eval_rows("sage", 2, "student", "valid_unseen", "0000"), parts=2)
    write_round(sage, 3, {"valid_seen": "11", "valid_unseen": "1111"}, ["skip", "weak", "weak"] * 2, 0.2)

    write_round(sft, 1, {"valid_unseen": "0100"}, None, 2.0)
    return root


@pytest.fixture(scope="module")
def loaded(runs_dir):
    runs = load_runs(runs_dir, ["opd", "sage"])
    return runs, eval_metrics(pd.concat([run.evals for run in runs], ignore_index=True))


def test_success_grid_holds_the_written_rates_and_nan_where_nothing_was_evaluated(loaded):
    """A column per run, data source, split and game set: never one number over two of them."""
    runs, metrics = loaded
    success, episodes = success_grid(metrics, runs)
    assert list(success.index) == ["initial student", "round 1", "round 2", "round 3", "teacher", "expert"]
    expected = {
        ("opd", "mini · valid_seen", "4 games"): [0.0, 1 / 4, 2 / 4, None, None, None],
        ("opd", "alfworld · valid_unseen", "2 games"): [None, None, None, None, None, 1.0],
        ("opd", "mini · valid_unseen", "4 games"): [1 / 4, 2 / 4, 3 / 4, None, 1.0, None],
        ("sage", "mini · valid_seen", "2 games"): [None, 1 / 2, None, 1.0, None, None],  # sage's own: 2 games
        ("sage", "mini · valid_seen", "4 games"): [0.0, None, None, None, None, None],  # the initial student: 4
        ("sage", "mini · valid_unseen", "4 games"): [1 / 4, 3 / 4, None, 1.0, None, None],
    }
    shown = {(run, measured, games.split(" · ")[0]): (run, measured, games) for run, measured, games in success}
    assert list(shown) == list(expected)  # in run order, then split order, sources and game sets apart
    assert shown[("sage", "mini · valid_seen", "2 games")][2].startswith("2 games · set ")
    assert shown[("opd", "mini · valid_seen", "4 games")][2] == "4 games"  # one game set: no set id
    for key, values in expected.items():
        got = success[shown[key]].tolist()
        assert [None if math.isnan(v) else v for v in got] == values, key
    assert episodes[shown[("sage", "mini · valid_seen", "2 games")]].tolist()[1] == 2


def test_metrics_agree_with_every_summary_json(runs_dir, loaded):
    _, metrics = loaded
    summary = json.loads((runs_dir / "opd" / "round-002" / "eval" / SUMMARY_FILE).read_text())
    rows = metrics[(metrics["run"] == "opd") & (metrics["policy"] == "student") & (metrics["round"] == 2)]
    pooled = rows[rows["task_type"] == ALL_TASKS].set_index("split")
    assert set(pooled.index) == set(summary["splits"])  # no rate pooled over splits
    for split, block in summary["splits"].items():
        for rate in ("success", "invalid_action_rate", "repeated_action_rate"):
            assert pooled.loc[split, rate] == block[rate], (split, rate)
        assert pooled.loc[split, "episodes"] == block["episodes"]
    # valid_unseen of round 2: turns 4+5+6+7 = 22, invalid 0+1+0+1, repeated 0+0+1+1
    assert pooled.loc["valid_unseen", "invalid_action_rate"] == 2 / 22
    assert pooled.loc["valid_unseen", "games"] == 4


def test_success_table_shows_counts_and_missing_never_as_zero(loaded):
    runs, metrics = loaded
    table = success_table(metrics, runs).frame
    unseen = table[("opd", "mini · valid_unseen", "4 games", "n=4")]
    assert unseen.tolist() == ["25.0%", "50.0%", "75.0%", MISSING, "100.0%", NOT_EVALUATED]
    (alfworld,) = [column for column in table if column[1] == "alfworld · valid_unseen"]
    assert alfworld == ("opd", "alfworld · valid_unseen", "2 games", "n=2")
    assert table[alfworld].tolist() == [MISSING] * 4 + [NOT_EVALUATED, "100.0%"]
    assert not any("overall" in part for column in table.columns for part in column)


def test_task_type_table_uses_each_runs_newest_evaluated_round(loaded):
    runs, metrics = loaded
    table = task_type_table(metrics, runs).frame
    opd = table[("opd", "mini · valid_unseen", "round 2, 4 games")]  # wins 1110: a, b won; c won; d lost
    assert opd["pick_and_place_simple"] == "100.0% (n=2)"
    assert opd["look_at_obj_in_light"] == "100.0% (n=1)"
    assert opd["pick_two_obj_and_place"] == "0.0% (n=1)"
    assert opd["pick_heat_then_place_in_recep"] == MISSING
    assert opd["all task types"] == "75.0% (n=4)"
    assert table[("sage", "mini · valid_seen", "round 3, 2 games")]["pick_and_place_simple"] == "100.0% (n=2)"


def test_improvement_over_baseline_at_the_newest_common_round_on_identical_episodes(loaded):
    runs, metrics = loaded
    comparisons = {c.split: c for c in compare_to_baseline(metrics, runs, "opd")}
    unseen = comparisons["valid_unseen"]  # sage round 2 is unfinished and round 3 has no opd counterpart
    assert (unseen.round, unseen.value, unseen.baseline) == (1, 3 / 4, 2 / 4)
    assert unseen.points == pytest.approx(25.0) and unseen.relative == (3 / 4 - 2 / 4) / (2 / 4)
    assert comparisons["valid_seen"].reason == "different episodes in round 1: 2 vs 4"
    assert set(comparisons) == {"valid_seen", "valid_unseen"}
    cells = improvement_table(list(comparisons.values()), "opd").frame
    assert cells.loc[("sage", "valid_unseen")].tolist() == ["1", "75.0% vs 50.0%", "+25.0 pts", "+50.0%"]
    assert cells.loc[("sage", "valid_seen"), "relative"] == MISSING


def test_relative_improvement_math_and_a_zero_baseline():
    assert relative_improvement(0.52, 0.459) == (0.52 - 0.459) / 0.459
    assert relative_improvement(0.4, 0.5) == pytest.approx(-0.2)
    assert math.isnan(relative_improvement(0.3, 0.0))
    cells = improvement_table([Comparison("sage", "valid_unseen", 2, 0.25, 0.0)], "opd").frame
    assert cells.loc[("sage", "valid_unseen"), "relative"] == f"{MISSING} (baseline at 0%)"
    assert cells.loc[("sage", "valid_unseen"), "difference"] == "+25.0 pts"


def test_different_episode_sets_are_flagged(loaded):
    _, metrics = loaded
    notes = comparability_notes(metrics)
    flagged = {note.split(" ")[0] for note in notes}
    assert flagged == {"valid_seen"}
    seen = next(note for note in notes if note.startswith("valid_seen"))
    assert "sage rounds 1, 3: 2 episodes of 2 games" in seen and "opd rounds 0–2: 4 episodes of 4 games" in seen


def test_unfinished_eval_is_missing_and_noted(loaded):
    runs, metrics = loaded
    sage = runs[1]
    assert sage.rounds == [1, 2, 3]
    assert 2 not in set(metrics.loc[(metrics["run"] == "sage") & (metrics["policy"] == "student"), "round"])
    assert len(sage.notes) == 1 and "round-002/eval/episodes is incomplete: 1 of 2 parts" in sage.notes[0]


def test_rows_with_an_unknown_label_are_counted_and_named_not_dropped_silently(tmp_path):
    layout = RunLayout(tmp_path / "runs" / "odd")
    write_round(layout, 1, {"valid_unseen": "10"}, ["skip", "maybe", "weak", "maybe", "strong", "huh"], 1.0)
    (run,) = load_runs(tmp_path / "runs", ["odd"])
    assert run.annotations["label"].tolist() == ["skip", "weak", "strong"]
    (note,) = run.notes
    folder = layout.stage_dir(1, "annotations")
    assert note == (
        f"left out: 3 annotation row(s) of {folder} with unknown label(s) 'huh', 'maybe' (expected skip, weak, strong)"
    )
    report = write_report(tmp_path / "runs", ["odd"], tmp_path / "report")
    assert f"odd: {note}" in report.notes and f"- odd: {note}" in report.page.read_text()


def test_annotations_training_and_round_log_are_loaded_as_written(loaded):
    runs, _ = loaded
    opd = runs[0]
    first = opd.annotations[opd.annotations["round"] == 1]
    assert first["label"].tolist() == ["skip", "weak", "strong", "strong", "strong", "weak"]
    assert opd.trained_turns == {1: 6, 2: 6}
    assert opd.training[["round", "step", "loss"]].values.tolist() == [
        [1, 1, 1.5],
        [1, 2, 1.0],
        [2, 1, 1.0],
        [2, 2, 0.5],
    ]
    log = round_log_table(runs).frame
    assert log.loc["opd · round 1"].tolist() == ["25.0%", "1 / 2 / 3", "2", "1.0000", "10", "3"]


def test_report_folder_holds_the_page_and_readable_pngs(runs_dir, tmp_path):
    report = write_report(runs_dir, ["opd", "sage", "sft"], tmp_path / "report", baseline="opd")
    names = sorted(figure.path.name for figure in report.figures)
    assert names == sorted(
        [
            "success_by_round.png",
            "action_rates_by_round.png",
            "labels_by_round.png",
            "labels_by_turn.png",
            "confidence_by_label.png",
            "training.png",
        ]
    )
    page = report.page.read_text()
    for figure in report.figures:
        assert figure.path.read_bytes()[:8] == PNG_MAGIC
        with Image.open(figure.path) as image:
            image.verify()
        assert matplotlib.image.imread(figure.path).shape[0] > 100
        assert f"](figures/{figure.path.name})" in page
    assert "## Improvement over opd" in page and "| sage | valid_unseen | 1 | 75.0% vs 50.0% |" in page


def test_a_figure_with_nothing_to_show_is_not_drawn_and_an_old_copy_goes(runs_dir, tmp_path):
    out = tmp_path / "report"
    stale = out / "figures" / "labels_by_round.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(PNG_MAGIC)
    report = write_report(runs_dir, ["sft"], out)
    assert not stale.exists()
    assert {figure.path.name for figure in report.figures} == {
        "success_by_round.png",
        "action_rates_by_round.png",
        "training.png",
    }


def test_a_run_that_evaluated_nothing_is_a_column_of_dashes(tmp_path):
    (tmp_path / "runs" / "bare" / "round-001" / "turns").mkdir(parents=True)
    report = write_report(tmp_path / "runs", ["bare"], tmp_path / "report")
    table = report.headline[0].frame
    assert list(table.columns) == [("bare", MISSING, "", "")]
    assert table[("bare", MISSING, "", "")].tolist() == [MISSING, MISSING, NOT_EVALUATED, NOT_EVALUATED]
    assert report.figures == [] and report.page.is_file()


def test_an_eval_under_a_removed_listing_is_reported_and_named(tmp_path):
    """Past results stay readable (#28): an eval made under `deliver_last` is in the tables, with a note saying
    that the listing is gone and why."""
    layout = RunLayout(tmp_path / "runs" / "shaped")
    shaped = {**MINI, "env": {"history": 0, "go_to_order": "deliver_last"}}
    write_eval(layout.stage_dir(1, "eval"), eval_rows("shaped", 1, "student", "valid_unseen", "1100"), config=shaped)
    report = write_report(tmp_path / "runs", ["shaped"], tmp_path / "report")
    assert report.headline[0].frame.loc["round 1"].tolist() == ["50.0%"]
    note = next(line for line in report.page.read_text().splitlines() if "removed listing" in line)
    assert "played under the removed listing deliver_last: it ordered the actions by the task" in note


def invoke(runs_dir: Path, *args: str):
    return CliRunner().invoke(app, ["report", f"--set=runs_dir={runs_dir}", *args])


def test_cli_prints_the_success_table_and_one_summary_line(runs_dir, tmp_path):
    result = invoke(runs_dir, "--run", "opd", "--run", "sage", "--baseline", "opd", "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    assert "Student success per round" in result.stdout and "Improvement over opd" in result.stdout
    last = result.stdout.strip().splitlines()[-1]
    assert last == f"report: opd 2 rounds, sage 3 rounds; 4 tables, 6 figures -> {tmp_path / 'r' / 'report.md'}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--run", "opd", "--baseline", "nope"], "--baseline nope: no such run in"),
        (["--run", "opd", "--run", "sage", "--baseline", "sft"], "--baseline sft is not among the runs reported"),
        (["--run", "nope"], "no run 'nope' in"),
        (["--run", "opd", "--run", "opd"], "run(s) opd named more than once"),
    ],
)
def test_cli_user_errors_are_one_line_and_exit_2(runs_dir, tmp_path, args, message):
    result = invoke(runs_dir, *args, "--out", str(tmp_path / "r"))
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert not (tmp_path / "r").exists()
