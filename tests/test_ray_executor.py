"""`--executor ray` on a local Ray cluster on this CPU: the same bytes as one process, a killed worker's shard
retried without a duplicate, and the user errors as one line."""

import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.annotate import run_annotate
from pipeline.checkpoints import RECORD_FILE
from pipeline.config import load_config
from pipeline.executors import ExecutorSettings, open_executor
from pipeline.play import run_rollout
from pipeline.rounds import run_round
from pipeline.runs import RunLayout
from pipeline.shards import read_manifest
from stages.cli import app

pytestmark = pytest.mark.slow

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
ROUND = ("rollout.num_games=4", "rollout.episodes_per_shard=1", "eval.num_games=2", "eval.episodes_per_shard=1")


def part_hashes(directory: Path, stage: str) -> dict[str, str]:
    return {name: entry["sha256"] for name, entry in read_manifest(directory, stage)["parts"].items()}


UNCOMPARABLE = ("train_log.jsonl", "training_args.bin")  # seconds per step; the trainer's scratch path


def stage_bytes(layout: RunLayout) -> dict[str, dict[str, str]]:
    """Every part's sha256 of round 1 (turns, annotations, both evals), and every checkpoint file's but the
    two that hold wall-clock times and temporary paths: what a byte-for-byte comparison needs."""
    round_dir = layout.round_dir(1)
    found = {"turns": part_hashes(round_dir / "turns", "turns")}
    found["annotations"] = part_hashes(round_dir / "annotations", "annotations")
    for folder in sorted(round_dir.glob("eval*")):
        found[folder.name] = part_hashes(folder / "episodes", "eval")
    record = json.loads((layout.stage_dir(1, "checkpoint") / RECORD_FILE).read_text())
    found["checkpoint"] = {name: digest for name, digest in record["files"].items() if name not in UNCOMPARABLE}
    assert len(found) == 5 and "model.safetensors" in found["checkpoint"]
    return found


def test_a_round_in_4_ray_shards_is_the_sequential_round_byte_for_byte(tmp_path, small_settings):
    settings = [*small_settings, *ROUND, "run=same"]
    alone = load_config(DEFAULT_CONFIG, [f"runs_dir={tmp_path / 'alone'}", *settings])
    sharded = load_config(DEFAULT_CONFIG, [f"runs_dir={tmp_path / 'ray'}", *settings])
    expected = run_round(alone)
    with open_executor(ExecutorSettings("ray", num_shards=4)) as executor:
        entry = run_round(sharded, executor=executor)
    layouts = RunLayout.of(alone), RunLayout.of(sharded)
    assert len(part_hashes(layouts[1].stage_dir(1, "turns"), "turns")) == 4  # one part per shard
    assert stage_bytes(layouts[1]) == stage_bytes(layouts[0])
    for key in ("student_success", "success_by_split", "initial_success", "rollout_success", "labels", "train_loss"):
        assert entry[key] == expected[key], key
    assert entry["train_steps"] == expected["train_steps"]


def test_a_shard_whose_worker_is_killed_is_retried_and_the_stage_is_exact(tmp_path, small_settings):
    """Each of 4 shards plays 2 one-episode parts; once a part is listed, every worker inside a shard is
    killed (SIGKILL: no cleanup). Ray retries those shards, which redo only their unlisted parts."""
    settings = [*small_settings, "rollout.num_games=8", "rollout.episodes_per_shard=1", "run=same"]
    alone = load_config(DEFAULT_CONFIG, [f"runs_dir={tmp_path / 'alone'}", *settings])
    sharded = load_config(DEFAULT_CONFIG, [f"runs_dir={tmp_path / 'ray'}", *settings])
    expected = part_hashes(run_rollout(alone, 1).directory, "turns")
    directory = RunLayout.of(sharded).stage_dir(1, "turns")
    outcome: dict[str, object] = {}

    def rollout() -> None:
        try:
            with open_executor(ExecutorSettings("ray", num_shards=4)) as executor:
                outcome["result"] = executor.stage("rollout", sharded, 1)
        except BaseException as err:  # noqa: BLE001 - handed to the test's thread below
            outcome["error"] = err

    driver = threading.Thread(target=rollout)
    driver.start()
    killed = []
    deadline = time.monotonic() + 300
    while driver.is_alive() and not killed and time.monotonic() < deadline:
        if (directory / "_manifest.json").exists() and read_manifest(directory, "turns")["parts"]:
            killed = [pid for pid in shard_workers("rollout-shard") if kill(pid)]
        time.sleep(0.05)
    driver.join(600)
    assert "error" not in outcome, outcome.get("error")
    assert killed, "no shard was running when the first part was listed"
    result = outcome["result"]
    assert result.complete and part_hashes(directory, "turns") == expected
    # The shard that listed the first part was killed in its second: its retry skips the first one.
    assert result.parts_written + result.parts_skipped == 8 and result.parts_skipped >= 1


def test_train_as_a_ray_task_launches_its_data_parallel_processes(tmp_path, small_settings):
    """`resources.train.processes: 2`: the train task runs the stage under torchrun, 2 gloo processes here."""
    config = load_config(
        DEFAULT_CONFIG, [f"runs_dir={tmp_path}", *small_settings, "resources.train.processes=2", "run=ddp"]
    )
    run_rollout(config, 1)
    run_annotate(config, 1)
    with open_executor(ExecutorSettings("ray")) as executor:
        result = executor.train(config, 1)
    assert result.trained and result.provenance["world_size"] == 2 and result.steps > 0
    assert not list(RunLayout.of(config).round_dir(1).glob(".train-config-*"))  # its config file is gone


def shard_workers(name: str) -> list[int]:
    """PIDs of the Ray workers running a task called `name` (Ray titles a busy worker `ray::<task name>`)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                command = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if command.startswith(f"ray::{name}"):
                pids.append(int(proc.name))
    return pids


def kill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--executor", "ray", "--ray-address", "127.0.0.1:{port}"], "error: no Ray cluster answers at 127.0.0.1:"),
        (["--ray-address", "127.0.0.1:6379"], "error: --ray-address needs --executor ray"),
        (["--executor", "dask"], "error: --executor must be one of local, ray, not 'dask'"),
    ],
)
def test_executor_mistakes_are_one_line_and_exit_2(tmp_path, options, message):
    options = [option.format(port=free_port()) for option in options]
    result = CliRunner().invoke(app, ["rollout", "--set", f"runs_dir={tmp_path}", *options])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "default").exists()


def test_without_ray_installed_the_executor_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where it is not installed
    result = CliRunner().invoke(app, ["rollout", "--set", f"runs_dir={tmp_path}", "--executor", "ray"])
    assert result.exit_code == 2
    assert result.stderr == "error: --executor ray needs Ray: pip install -e '.[ray]'\n"
