"""Never silently wrong: checkpoint swaps under a kill, locks between real processes, one-line OS errors."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import DEFAULT_CONFIG, wait_until_a_part_is_listed
from typer.testing import CliRunner

from pipeline import shards
from pipeline.atomic import atomic_dir
from pipeline.checkpoints import RECORD_FILE, model_fingerprint, read_record
from pipeline.config import Config, load_config
from pipeline.errors import StorageError, UserError
from pipeline.executors import LocalExecutor
from pipeline.locks import writer_lock
from pipeline.losses import LABEL_NAMES
from pipeline.rounds import ROUNDS_FILE, recorded_rounds, run_round
from pipeline.runs import RunLayout
from pipeline.shards import read_manifest, read_stage
from stages.cli import app

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO, capture_output=True, text=True, **kwargs
    )


@pytest.mark.parametrize("moment", ["while the old folder is removed", "right after it is removed"])
def test_a_kill_inside_the_folder_swap_leaves_a_whole_folder(tmp_path, moment):
    """SIGKILL at the removal of the old checkpoint: the new one is already in place, whole."""
    target = tmp_path / "checkpoint"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("old")
    partial = moment.startswith("while")
    killed = run_python(
        """
        import os, shutil, signal, sys
        from pathlib import Path
        from pipeline.atomic import atomic_dir

        real_rmtree = shutil.rmtree
        def rmtree_then_die(path, *args, **kwargs):
            if sys.argv[2] == "1":
                os.remove(os.path.join(path, "weights"))  # killed half way through the removal
            else:
                real_rmtree(path, *args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        shutil.rmtree = rmtree_then_die
        with atomic_dir(Path(sys.argv[1])) as tmp:
            (tmp / "weights").write_text("new")
        """,
        str(target),
        "1" if partial else "0",
    )
    assert killed.returncode == -9, killed.stderr
    assert (target / "weights").read_text() == "new"


# ------------------------------------------------------------------ one real round, shared by the tests below

SMALL = (
    "rollout.num_games=3",
    "env.max_steps=3",
    "eval.splits=[valid_unseen]",
    "eval.num_games=2",
    "train.per_device_batch_size=4",
    "train.learning_rate=1e-3",
)


def settings_for(runs_dir: Path, small_settings: list[str], *extra: str) -> list[str]:
    return [f"runs_dir={runs_dir}", *small_settings, *SMALL, *extra]


@pytest.fixture(scope="module")
def finished_round(tmp_path_factory, small_settings):
    """Round 1 made the hard way: a first `round` stopped by Ctrl-C in training, a second one finishing it."""
    runs_dir = tmp_path_factory.mktemp("finished") / "runs"
    config = load_config(DEFAULT_CONFIG, settings_for(runs_dir, small_settings))
    real_train = LocalExecutor.train

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LocalExecutor, "train", stopped)
        with pytest.raises(KeyboardInterrupt):
            run_round(config)
    assert LocalExecutor.train is real_train and recorded_rounds(RunLayout.of(config)) == []
    entry = run_round(config)
    return config, entry


def copy_run(finished_round, tmp_path, small_settings, *extra: str) -> tuple[Config, RunLayout, list[str]]:
    """A private copy of the finished run to damage; the `--set` items that point at it."""
    config, _entry = finished_round
    shutil.copytree(config.runs_dir, tmp_path / "runs")
    items = settings_for(tmp_path / "runs", small_settings, *extra)
    copied = load_config(DEFAULT_CONFIG, items)
    return copied, RunLayout.of(copied), items


def invoke(command: str, items: list[str], *args: str):
    return CliRunner().invoke(app, [command, *(f"--set={item}" for item in items), *args])


def assert_one_line(result, exit_code: int, *fragments: str) -> None:
    """The command failed with `exit_code` and said why in one line (the console's progress lines aside)."""
    assert result.exit_code == exit_code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    said = [line for line in result.stderr.splitlines() if line.startswith(("error: ", "stopped: "))]
    assert len(said) == 1 and result.stderr.endswith(said[0] + "\n"), result.stderr
    for fragment in fragments:
        assert fragment in said[0], result.stderr


def test_an_interrupted_rounds_line_counts_the_work_of_every_process(finished_round):
    """Labels from the annotations, seconds from the manifests: not what the finishing process did itself."""
    config, entry = finished_round
    layout = RunLayout.of(config)
    annotations = read_stage(layout.stage_dir(1, "annotations"), "annotations").to_pandas()
    assert entry["labels"] == {label: int((annotations["label"] == label).sum()) for label in LABEL_NAMES}
    assert sum(entry["labels"].values()) == len(annotations) == 9
    for stage, folder in (("rollout", "turns"), ("annotate", "annotations")):
        parts = read_manifest(layout.stage_dir(1, folder), folder)["parts"].values()
        assert entry["seconds"][stage] == round(sum(part["seconds"] for part in parts), 2) > 0
    assert entry["seconds"]["train"] == round(read_record(layout.stage_dir(1, "checkpoint"))["seconds"], 2)
    assert recorded_rounds(layout) == [json.loads(json.dumps(entry))]


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    position = len(data) // 2 if offset is None else offset
    data[position] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["missing", "flipped byte", "no record"])
def test_a_damaged_checkpoint_stops_every_consumer(finished_round, tmp_path, small_settings, damage):
    """Next round's rollout, eval and train's "already done" all check the hashes; no fallback to models.student."""
    config, layout, items = copy_run(finished_round, tmp_path, small_settings)
    checkpoint = layout.stage_dir(1, "checkpoint")
    if damage == "missing":
        shutil.rmtree(checkpoint)
    elif damage == "flipped byte":
        flip_byte(checkpoint / "model.safetensors")
    else:
        (checkpoint / RECORD_FILE).unlink()
    with pytest.raises(StorageError, match=r"^round 1 has no checkpoint|^round 1's checkpoint"):
        layout.student_entering(2, config.models.student)
    assert_one_line(invoke("rollout", items, "--round", "2"), 1, "round 1")
    assert not layout.round_dir(2).exists() or not list(layout.round_dir(2).rglob("part-*"))
    assert_one_line(invoke("round", items), 1, "round 1")
    assert_one_line(invoke("eval", items, "--round", "1", "--force"), 1, "round 1")
    if damage != "missing":  # a missing checkpoint is train's to make; a damaged one it refuses to skip
        assert_one_line(invoke("train", items, "--round", "1"), 1, "round 1's checkpoint", "--force")


def test_train_force_repairs_a_damaged_checkpoint(finished_round, tmp_path, small_settings):
    config, layout, items = copy_run(finished_round, tmp_path, small_settings)
    checkpoint = layout.stage_dir(1, "checkpoint")
    flip_byte(checkpoint / "model.safetensors")
    (checkpoint.parent / ".checkpoint.k1ll3d.tmp").mkdir()  # what a kill in the old swap left behind
    (checkpoint.parent / ".checkpoint.scratch.tmp" / "sage-opd-trainer-x").mkdir(parents=True)
    result = invoke("train", items, "--round", "1", "--force")
    assert result.exit_code == 0, result.stderr
    assert layout.checkpoint(1) == checkpoint
    assert sorted(path.name for path in checkpoint.parent.iterdir() if path.name.startswith(".checkpoint")) == [
        ".checkpoint.writer-0-of-1.lock",
        ".checkpoint.writers.lock",
    ]
    assert "already done" in invoke("train", items, "--round", "1").stdout


def test_eval_after_a_retrain_is_refused_not_reused(finished_round, tmp_path, small_settings):
    """`annotate --force` + `train --force` with new weights: the old eval results must not come back."""
    _config, layout, items = copy_run(finished_round, tmp_path, small_settings, "train.learning_rate=5e-3")
    old_summary = (layout.stage_dir(1, "eval") / "summary.json").read_text()
    assert invoke("annotate", items, "--round", "1", "--force").exit_code == 0
    assert invoke("train", items, "--round", "1", "--force").exit_code == 0
    refused = invoke("eval", items, "--round", "1")
    assert_one_line(refused, 2, "different inputs (model, tokenizer)", "--force")
    assert (layout.stage_dir(1, "eval") / "summary.json").read_text() == old_summary
    redone = invoke("eval", items, "--round", "1", "--force")
    assert redone.exit_code == 0 and "already done" not in redone.stdout.replace("0 already done", "")
    manifest = read_manifest(layout.stage_dir(1, "eval") / "episodes", "eval")
    assert manifest["inputs"]["model"] == model_fingerprint(layout.stage_dir(1, "checkpoint"))


def test_a_truncated_training_record_is_one_line(finished_round, tmp_path, small_settings):
    _config, layout, items = copy_run(finished_round, tmp_path, small_settings)
    record = layout.stage_dir(1, "checkpoint") / RECORD_FILE
    record.write_text(record.read_text()[:100])
    assert_one_line(invoke("train", items, "--round", "1"), 1, f"cannot read {record}")
    assert_one_line(invoke("round", items), 1, f"cannot read {record}")


def test_half_a_line_in_rounds_jsonl_is_one_line(finished_round, tmp_path, small_settings):
    _config, layout, items = copy_run(finished_round, tmp_path, small_settings)
    path = layout.root / ROUNDS_FILE
    path.write_text(path.read_text() + '{"round": 2, "stud')
    assert_one_line(invoke("round", items), 1, f"{path} line 2 is not a whole JSON record")


def test_an_unknown_label_reaching_train_is_one_line_naming_the_shard(finished_round, tmp_path, small_settings):
    _config, layout, items = copy_run(finished_round, tmp_path, small_settings)
    directory = layout.stage_dir(1, "annotations")
    part = directory / "part-00000.parquet"
    table = pq.read_table(part)
    labels = ["maybe"] + table["label"].to_pylist()[1:]
    column = table.schema.get_field_index("label")
    pq.write_table(table.set_column(column, table.schema.field(column), pa.array(labels)), part)
    manifest = json.loads((directory / "_manifest.json").read_text())
    manifest["parts"][part.name].update(sha256=hashlib.sha256(part.read_bytes()).hexdigest(), bytes=part.stat().st_size)
    (directory / "_manifest.json").write_text(json.dumps(manifest))
    assert_one_line(invoke("train", items, "--round", "1", "--force"), 1, f"{part} holds label 'maybe'")


def test_a_stray_file_in_a_stage_folder_is_foreign(finished_round, tmp_path, small_settings):
    _config, layout, items = copy_run(finished_round, tmp_path, small_settings)
    stray = layout.stage_dir(1, "turns") / "notes.txt"
    stray.write_text("my notes")
    assert_one_line(invoke("annotate", items, "--round", "1"), 2, f"foreign file {stray}")
    assert_one_line(invoke("rollout", items, "--round", "1"), 2, f"foreign file {stray}")


# ------------------------------------------------------------------ OS-level failures: one line, exit 1


@pytest.fixture
def items(tmp_path, small_settings) -> list[str]:
    return settings_for(tmp_path / "runs", small_settings, "rollout.episodes_per_shard=1")


def test_a_runs_dir_the_os_refuses_is_one_line(items, tmp_path):
    """A real refusal, even for root: nothing may be created under /sys."""
    refused = invoke("rollout", [*items, "runs_dir=/sys/sage-opd-test"])
    assert_one_line(refused, 1, "Operation not permitted: /sys/sage-opd-test")
    (tmp_path / "a-file").write_text("not a folder")
    assert_one_line(invoke("rollout", [*items, f"runs_dir={tmp_path / 'a-file'}"]), 1, str(tmp_path / "a-file"))


def test_a_full_disk_during_rollout_is_one_line_and_keeps_the_finished_parts(items, tmp_path, monkeypatch):
    """A full disk cannot be made without root: the Parquet write is made to fail the way one does (ENOSPC)."""
    real_write = shards._write_parquet
    calls = []

    def write_then_fill_up(table, path):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(table, path)

    monkeypatch.setattr(shards, "_write_parquet", write_then_fill_up)
    turns = tmp_path / "runs" / "default" / "round-001" / "turns"
    assert_one_line(invoke("rollout", items), 1, f"No space left on device: {turns / 'part-00001.parquet'}")
    assert sorted(path.name for path in turns.iterdir() if not path.name.startswith(".")) == [
        "_manifest.json",
        "part-00000.parquet",
    ]
    monkeypatch.setattr(shards, "_write_parquet", real_write)
    resumed = invoke("rollout", items)
    assert resumed.exit_code == 0 and "2 shards written, 1 already done" in resumed.stdout


def test_a_damaged_or_half_copied_model_folder_is_one_line_and_blocks_nothing(items, tmp_path, tiny_models):
    """Only config.json, or weights whose header is garbage: refused before any manifest is written."""
    half = tmp_path / "half-copied"
    half.mkdir()
    shutil.copy(tiny_models["student"] / "config.json", half)
    turns = tmp_path / "runs" / "default" / "round-001" / "turns"
    assert_one_line(invoke("rollout", [*items, f"models.student={half}"]), 1, f"model folder {half} holds no weights")
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_models["student"], damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(b"\xff" * 16 + weights.read_bytes()[16:])
    assert_one_line(invoke("rollout", [*items, f"models.student={damaged}"]), 1, f"weights file {weights} is damaged")
    assert not (turns / "_manifest.json").exists()
    assert invoke("rollout", items, "--num-games", "1").exit_code == 0  # the corrected rerun, without --force


def test_more_games_than_the_split_holds_is_refused(items):
    assert_one_line(invoke("rollout", items, "--num-games", "999"), 2, "rollout.num_games=999 but split train holds")


# ------------------------------------------------------------------ one writer per stage folder


def hold_lock(folder: Path, share: str = "0 1") -> subprocess.Popen:
    """A real process holding `folder`'s writer lock until killed; returns once it holds it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(
            """
            import sys, time
            from pathlib import Path
            from pipeline.locks import writer_lock
            with writer_lock(Path(sys.argv[1]), (int(sys.argv[2]), int(sys.argv[3]))):
                print("held", flush=True)
                time.sleep(600)
            """
        ), str(folder), *share.split()],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_ones_lock_is_taken_over(items, tmp_path):
    turns = tmp_path / "runs" / "default" / "round-001" / "turns"
    holder = hold_lock(turns)
    try:
        refused = invoke("rollout", items, "--num-games", "1")
        assert_one_line(refused, 2, f"{turns} is being written by pid {holder.pid} on ", "shard 0 of 1")
        assert not turns.exists() or not list(turns.iterdir())
    finally:
        holder.kill()
        holder.wait()
    taken_over = invoke("rollout", items, "--num-games", "1")
    assert taken_over.exit_code == 0, taken_over.stderr


def test_shares_that_overlap_exclude_each_other_and_disjoint_ones_run_together(tmp_path):
    folder = tmp_path / "turns"
    holder = hold_lock(folder, "1 2")  # the odd parts
    try:
        with writer_lock(folder, (0, 2)):  # the even ones: no part in common
            pass
        for overlapping in ((1, 2), (0, 1), (1, 4), (3, 4), (0, 3)):
            with pytest.raises(UserError, match=f"pid {holder.pid}"), writer_lock(folder, overlapping):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_train_has_one_writer_too(finished_round, tmp_path, small_settings):
    _config, layout, items = copy_run(finished_round, tmp_path, small_settings)
    holder = hold_lock(layout.stage_dir(1, "checkpoint"))
    try:
        assert_one_line(invoke("train", items, "--round", "1", "--force"), 2, f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    assert layout.checkpoint(1) is not None  # the refused --force took nothing away


# ------------------------------------------------------------------ Ctrl-C


def test_ctrl_c_in_rollout_with_workers_is_one_line_exit_130_and_resumes(items, tmp_path):
    """SIGINT to the whole process group, as a terminal sends it: main process and env workers alike."""
    command = [sys.executable, "-m", "stages", "rollout", *(f"--set={item}" for item in items)]
    command += ["--set=env.num_workers=2", "--set=rollout.num_games=6"]
    turns = tmp_path / "runs" / "default" / "round-001" / "turns"
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    wait_until_a_part_is_listed(turns, "turns", process, 300)
    os.killpg(process.pid, signal.SIGINT)
    _stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if "interrupted" in line]
    assert len(lines) == 1 and lines[0].startswith("stopped: rollout of round 1 interrupted: "), stderr
    assert f"parts are kept in {turns}; run the same command again" in lines[0]
    kept = len(list(turns.glob("part-*.parquet")))
    assert 1 <= kept < 6 and f": {kept} of 6 parts" in lines[0]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{6 - kept} shards written, {kept} already done" in done.stdout
    table = read_stage(turns, "turns").to_pandas()
    assert table["episode_id"].nunique() == 6 and not table.duplicated(["episode_id", "turn"]).any()
