"""`sage-opd inspect` on a real rollout joined with annotations whose labels and confidences we chose."""

import math
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.backends.hf import load_tokenizer
from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.inspection import (
    apply_filters,
    label_summary,
    load_round,
    mean_confidence_by_label,
    token_strings,
)
from pipeline.play import run_rollout
from pipeline.shards import StageWriter, read_stage
from stages.cli import app
from stages.inspect import HIGH, LOW, shaded_response

REPO = Path(__file__).resolve().parents[1]
LABELS = ("skip", "weak", "strong")


@dataclass
class Round:
    runs_dir: Path
    round_dir: Path
    student: Path  # the tokenizer folder the rollout recorded (a copy this module may move away)
    turns: pd.DataFrame  # sorted by (episode_id, turn)
    notes: pd.DataFrame  # the annotations written to round-001/annotations, same order


def confidence_of(index: int, length: int) -> list[float]:
    """Multiples of 1/8 (exact in float32) that vary within and across turns."""
    return [((5 * index + j * j) % 7 + 1) / 8 for j in range(length)]


def annotation(row: dict, index: int) -> dict:
    label = LABELS[index % 3]
    confidence = confidence_of(index, len(row["response_ids"]))
    ruled = label == "strong"
    return {
        "run": row["run"],
        "round": row["round"],
        "episode_id": row["episode_id"],
        "turn": row["turn"],
        "label": label,
        "label_source": "rule" if ruled else "judge",
        "rule_flags": (["nothing_happens"] if index % 2 else ["not_admissible", "repeat"]) if ruled else [],
        "judge_output": None if ruled else f"verdict-{label}-{index}",
        "teacher_logprobs": [math.log(c) for c in confidence],
        "topk_ids": [[int(token), int(token) + 1] for token in row["response_ids"]],
        "topk_logprobs": [[math.log(c), math.log(1 - c)] for c in confidence],
        "confidence": confidence,
        "teacher": "test-teacher",
    }


def write_annotations(directory: Path, rows: list[dict], num_parts: int = 2) -> None:
    writer = StageWriter(
        directory, "annotations", config={}, inputs={}, models={"teacher": "test"}, num_parts=num_parts
    )
    size = math.ceil(len(rows) / num_parts)
    for index in range(num_parts):
        writer.write_part(index, rows[index * size : (index + 1) * size])
    assert writer.finalize()


@pytest.fixture(scope="module")
def round_(tmp_path_factory, tiny_models, small_settings) -> Round:
    """One real rollout (module-wide: inspect only reads) and several annotation folders beside its turns."""
    root = tmp_path_factory.mktemp("inspect")
    student = Path(shutil.copytree(tiny_models["student"], root / "student"))
    config = load_config(
        REPO / "configs" / "default.yaml",
        [f"runs_dir={root / 'runs'}", *small_settings, f"models.student={student}"],
    )
    turns_dir = run_rollout(config, 1).directory
    turns = read_stage(turns_dir, "turns").to_pandas().sort_values(["episode_id", "turn"], ignore_index=True)
    rows = [annotation(row, index) for index, row in enumerate(turns.to_dict("records"))]
    # Shuffled across parts: the join, not the part order, pairs turns with annotations.
    write_annotations(turns_dir.parent / "annotations", rows[::-1])
    write_annotations(turns_dir.parent / "partial", rows[2:])
    stray = {**rows[0], "episode_id": "nowhere#0"}
    write_annotations(turns_dir.parent / "extra", [*rows, stray])
    write_annotations(turns_dir.parent / "odd-label", [{**rows[0], "label": "maybe"}, *rows[1:]])
    write_annotations(turns_dir.parent / "short", [{**rows[0], "confidence": rows[0]["confidence"][1:]}, *rows[1:]])
    empty = root / "runs" / "empty" / "round-001"
    for stage, folder in (("turns", "turns"), ("annotations", "annotations")):
        writer = StageWriter(
            empty / folder, stage, config={}, inputs={}, models={"tokenizer": str(student)}, num_parts=1
        )
        writer.write_part(0, [])
        writer.finalize()
    return Round(root / "runs", turns_dir.parent, student, turns, pd.DataFrame(rows))


@pytest.fixture
def cli(round_):
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, ["inspect", f"--set=runs_dir={round_.runs_dir}", *args], env={"COLUMNS": "500"})

    return invoke


def flat(text: str) -> str:
    """Output with rich's wrapping undone: runs of whitespace as one space."""
    return " ".join(text.split())


def turn_means(notes: pd.DataFrame, label: str) -> list[float]:
    """Hand-computed: each `label` turn's mean token confidence."""
    return [mean(c) for c, lab in zip(notes["confidence"], notes["label"], strict=True) if lab == label]


def keys(frame: pd.DataFrame) -> set[tuple[str, int]]:
    return set(zip(frame["episode_id"], frame["turn"].astype(int), strict=True))


def test_join_pairs_every_turn_with_its_annotation(round_):
    joined = load_round(round_.round_dir / "turns", round_.round_dir / "annotations")
    assert len(joined) == len(round_.turns) > 6
    assert joined[["episode_id", "turn"]].equals(round_.turns[["episode_id", "turn"]])
    assert joined["label"].tolist() == round_.notes["label"].tolist()
    assert joined["observation"].tolist() == round_.turns["observation"].tolist()
    assert [list(c) for c in joined["confidence"]] == round_.notes["confidence"].tolist()
    assert "prompt_text" not in joined and "topk_ids" not in joined


def test_filters_select_exact_rows(round_):
    joined = load_round(round_.round_dir / "turns", round_.round_dir / "annotations")
    notes, turns = round_.notes, round_.turns
    for label in LABELS:
        assert keys(apply_filters(joined, label=label)) == keys(notes[notes["label"] == label])
    task = turns["task_type"].iloc[0]
    assert keys(apply_filters(joined, task_type=task)) == keys(turns[turns["task_type"] == task])
    episode = turns["episode_id"].iloc[-1]
    assert keys(apply_filters(joined, episode=episode)) == keys(turns[turns["episode_id"] == episode])
    both = (turns["task_type"] == task) & (notes["label"] == "strong")
    assert keys(apply_filters(joined, label="strong", task_type=task)) == keys(turns[both])
    assert apply_filters(joined, episode="nowhere#0").empty
    assert len(apply_filters(joined)) == len(joined)
    with pytest.raises(UserError, match="unknown label 'great': expected one of skip, weak, strong"):
        apply_filters(joined, label="great")


def test_label_counts_per_task_type_and_turn(round_):
    joined = load_round(round_.round_dir / "turns", round_.round_dir / "annotations")
    summary = label_summary(joined)
    pairs = list(zip(round_.turns["task_type"], round_.turns["turn"], round_.notes["label"], strict=True))
    for by, position in (("task_type", 0), ("turn", 1)):
        expected = Counter((pair[position], pair[2]) for pair in pairs)
        table = summary[by]
        assert list(table.columns) == [*LABELS, "total"]
        for value, counts in table.iterrows():
            assert [counts[label] for label in LABELS] == [expected[(value, label)] for label in LABELS]
            assert counts["total"] == sum(expected[(value, label)] for label in LABELS)
        assert table["total"].sum() == len(joined)


def test_mean_confidence_is_a_mean_of_turn_means():
    frame = pd.DataFrame(
        {
            "label": ["weak", "weak", "strong"],
            "confidence": [[1.0], [0.0, 0.0, 0.0], [0.25, 0.75]],
        }
    )
    table = mean_confidence_by_label(frame)
    assert table.loc["weak", "mean_confidence"] == 0.5  # pooled over tokens it would be 0.25
    assert table.loc["strong", "mean_confidence"] == 0.5
    assert table["turns"].tolist() == [0, 2, 1]
    assert math.isnan(table.loc["skip", "mean_confidence"])


def test_mean_confidence_by_label_on_the_round(round_):
    joined = load_round(round_.round_dir / "turns", round_.round_dir / "annotations")
    table = mean_confidence_by_label(joined)
    for label in LABELS:
        means = turn_means(round_.notes, label)
        assert table.loc[label, "turns"] == len(means)
        assert table.loc[label, "mean_confidence"] == pytest.approx(mean(means))


def test_cli_prints_the_turns_in_order(cli, round_):
    result = cli("--limit", "4")
    assert result.exit_code == 0, result.output
    out = flat(result.stdout)
    tokenizer = load_tokenizer(round_.student)
    positions = []
    for turn, note in zip(round_.turns.head(4).itertuples(), round_.notes.head(4).itertuples(), strict=True):
        positions.append(out.index(f"episode {turn.episode_id} · turn {turn.turn} · {turn.task_type}"))
        assert flat(turn.feedback) in out and flat(turn.action) in out
        assert f"{note.label} ({note.label_source})" in out
        assert f"mean {mean(note.confidence):.3f} over {len(note.confidence)} tokens" in out
        assert flat("".join(token_strings(tokenizer, turn.response_ids))) in out
        if note.label_source == "judge":
            assert f"judge {note.judge_output}" in out
        else:
            assert f"rule flags {', '.join(note.rule_flags)}" in out
    assert out.count(" · turn ") == 4 and positions == sorted(positions)
    assert "teacher confidence (top-1 probability)" in out
    assert result.stdout.splitlines()[-1] == f"inspect: 4 of {len(round_.turns)} turns shown (round 1, annotations)"
    assert result.stderr == ""


def test_headers_are_whole_when_piped_at_80_columns(round_):
    """Piped, rich lays out at 80 columns: a turn's header must wrap there, never be cut (it names the turn)."""
    args = ["inspect", f"--set=runs_dir={round_.runs_dir}", "--limit", "3"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    out = flat(result.stdout)
    for turn in round_.turns.head(3).itertuples():
        assert f"episode {turn.episode_id} · turn {turn.turn} · {turn.task_type}" in out
    assert "…" not in result.stdout


def test_cli_filters(cli, round_):
    notes, turns = round_.notes, round_.turns
    task = turns["task_type"].iloc[0]
    wanted = turns[(turns["task_type"] == task) & (notes["label"] == "weak")]
    result = cli("--label", "weak", "--task-type", task, "--limit", "100")
    assert result.exit_code == 0, result.output
    out = flat(result.stdout)
    assert out.count(" · turn ") == len(wanted) > 0
    for turn in wanted.itertuples():
        assert f"episode {turn.episode_id} · turn {turn.turn} · {task}" in out
    assert "strong (rule)" not in out and "skip (judge)" not in out
    assert result.stdout.splitlines()[-1] == (
        f"inspect: {len(wanted)} of {len(wanted)} matching turns shown "
        f"(round 1, annotations; {len(turns)} turns in the round)"
    )
    episode = turns["episode_id"].iloc[0]
    result = cli("--episode", episode)
    assert flat(result.stdout).count(f"episode {episode} · turn ") == (turns["episode_id"] == episode).sum()


def test_cli_no_match_is_not_an_error(cli, round_):
    result = cli("--task-type", "juggling", "--label", "skip")
    assert result.exit_code == 0
    assert result.stdout == (
        "inspect: no turns match --label skip --task-type juggling "
        f"({len(round_.turns)} turns in round 1, annotations)\n"
    )


def test_empty_round_says_so(cli):
    result = cli("--run", "empty", "--summary")
    assert result.exit_code == 0, result.output
    assert result.stdout == "inspect: no turns in round 1, annotations\n"


def test_cli_summary_shows_counts_and_means(cli, round_):
    result = cli("--summary")
    assert result.exit_code == 0, result.output
    out = result.stdout
    notes, turns = round_.notes, round_.turns
    for task, group in turns.groupby("task_type"):
        labels = Counter(notes.loc[group.index, "label"])
        row = r"\W+".join([task, *(str(labels[label]) for label in LABELS), str(len(group))])
        assert re.search(row, out), row
    assert "mean confidence (token mean per turn, then mean over turns)" in flat(out)
    for label in LABELS:
        assert f"{mean(turn_means(notes, label)):.3f}" in out
    assert out.splitlines()[-1] == f"inspect: {len(turns)} turns summarized (round 1, annotations)"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--annotations", "nothing"], "run `sage-opd annotate` first"),
        (["--label", "great"], "unknown label 'great': expected one of skip, weak, strong"),
        (["--limit", "0"], "--limit must be 1 or more, got 0"),
        (["--annotations", "partial"], "2 turn(s) in "),
        (["--annotations", "extra"], "0 turn(s) in "),
        (["--annotations", "odd-label"], "holds unknown label(s) 'maybe' (expected skip, weak, strong)"),
        (["--annotations", "short"], "1 annotation(s) in "),
        (["--annotations", "../escape"], "out must be a plain folder name"),
        (["--round", "2"], "no turns outputs in"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(cli, args, message):
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert result.stdout == ""


def test_unpaired_rows_are_counted_both_ways(round_):
    with pytest.raises(UserError, match=r"2 turn\(s\) in .* have no annotation and 0 annotation\(s\)"):
        load_round(round_.round_dir / "turns", round_.round_dir / "partial")
    with pytest.raises(UserError, match=r"0 turn\(s\) .* and 1 annotation\(s\) .* no turn \(first: episode nowhere#0"):
        load_round(round_.round_dir / "turns", round_.round_dir / "extra")


def test_missing_tokenizer_falls_back_to_plain_text(cli, round_):
    moved = round_.student.with_name("moved-away")
    round_.student.rename(moved)
    try:
        result = cli("--limit", "2")
    finally:
        moved.rename(round_.student)
    assert result.exit_code == 0, result.output
    assert result.stderr.count("\n") == 1
    assert f"note: tokenizer folder {round_.student} (recorded by the rollout) is gone or unreadable" in result.stderr
    out = flat(result.stdout)
    for turn in round_.turns.head(2).itertuples():
        assert f"response {flat(turn.response_text)}" in out
    assert "teacher confidence (top-1 probability)" not in out
    assert result.stdout.splitlines()[-1].startswith("inspect: 2 of ")


def test_response_tokens_are_shaded_from_low_to_high():
    text = shaded_response(["go", " to", " desk"], [0.0, 0.5, 1.0])
    assert text.plain == "go to desk"
    colours = [span.style.bgcolor.triplet for span in text.spans]
    assert colours[0] == LOW and colours[2] == HIGH
    assert colours[1] not in (LOW, HIGH)
    assert [(span.start, span.end) for span in text.spans] == [(0, 2), (2, 5), (5, 10)]
