"""Data parallelism: `torchrun --nproc_per_node 2`, and `accelerate launch` with the shipped DDP config (gloo,
CPU), train a round exactly as one process does.

The row count leaves a ragged last optimizer batch that the ranks' micro-batches do not divide, where
accelerate would otherwise fill the short step with rows from the start of the data. One process gets
per-device batch 2 × accumulation 4; two processes per-device batch 2 × accumulation 2 × 2 ranks: the
same 8-row optimizer batches.
"""

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM

from pipeline.annotate import run_annotate
from pipeline.checkpoints import read_train_log
from pipeline.config import load_config
from pipeline.play import run_rollout
from pipeline.runs import RunLayout
from pipeline.seeding import derive_seed
from pipeline.shards import StageWriter, part_name, read_manifest, read_stage
from pipeline.train import RECORD_FILE, run_train
from pipeline.train_data import build_examples

pytestmark = pytest.mark.slow

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
ACCELERATE_CONFIGS = DEFAULT_CONFIG.parent / "accelerate"
# The LM head in pieces of 5 positions: DDP must reduce the gradient of a head used outside the model's forward.
SETTINGS = (
    "rollout.num_games=5",
    "env.max_steps=3",
    "train.learning_rate=1e-2",
    "train.epochs=2",
    "train.head_chunk_tokens=5",
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def trained(layout: RunLayout):
    directory = layout.stage_dir(1, "checkpoint")
    record = json.loads((directory / RECORD_FILE).read_text())
    steps = [entry for entry in read_train_log(directory, record) if "loss" in entry]
    model = AutoModelForCausalLM.from_pretrained(directory)
    return record, steps, {name: value.detach() for name, value in model.named_parameters()}


def launch(launcher: str) -> list[str]:
    """The start of a command that runs `-m stages` in 2 processes: torchrun, or accelerate launch with the
    shipped DDP config (on a machine without GPUs it starts the 2 processes on the CPU, gloo). FSDP and
    DeepSpeed need GPUs: accelerate runs neither on a CPU."""
    if launcher == "torchrun":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
        ]
    config = ACCELERATE_CONFIGS / f"{launcher}.yaml"
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)] + [
        "--num_processes",
        "2",
        "--main_process_port",
        str(free_port()),
    ]


@pytest.mark.parametrize(
    ("launcher", "all_skip"),
    [("torchrun", False), ("torchrun", True), ("ddp", False)],
    ids=["torchrun-ragged", "torchrun-ragged-all-skip", "accelerate-ddp-ragged"],
)
def test_two_gloo_processes_train_a_round_as_one_process_does(tmp_path, small_settings, launcher, all_skip):
    overrides = [f"runs_dir={tmp_path / 'runs'}", *small_settings, *SETTINGS, "train.per_device_batch_size=2"]
    one = load_config(DEFAULT_CONFIG, [*overrides, "run=one", "train.gradient_accumulation_steps=4"])
    run_rollout(one, 1)
    run_annotate(one, 1)
    rows = read_stage(RunLayout.of(one).stage_dir(1, "turns"), "turns").num_rows
    # a whole 8-row batch, then a ragged one that 2 ranks × 2 rows per micro-batch do not divide
    assert 8 < rows < 16 and rows % 4
    if all_skip:  # the ragged last batch holds only turns the judge skipped: Σw = 0, no update from it
        _relabel_last_batch_skip(one, world_batch=8)
    shutil.copytree(RunLayout.of(one).root, tmp_path / "runs" / "two")
    run_train(one, 1)

    # torchrun's own parser takes `--run` for its `--run-path`: the run is named through --set.
    command = [*launch(launcher), "-m", "stages", "train", "--config", str(DEFAULT_CONFIG)]
    command += [f"--set={item}" for item in (*overrides, "run=two", "train.gradient_accumulation_steps=2")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("train: ") == 1 and " steps on 2 processes, " in done.stdout  # one line, rank 0's

    single, double = (
        trained(RunLayout.of(one)),
        trained(RunLayout.of(load_config(DEFAULT_CONFIG, [*overrides, "run=two"]))),
    )
    assert (single[0]["provenance"]["world_size"], double[0]["provenance"]["world_size"]) == (1, 2)
    assert single[0]["steps"] == double[0]["steps"] == 2 * 2  # two optimizer batches per epoch
    assert [entry["tokens"] for entry in double[1]] == [entry["tokens"] for entry in single[1]]
    assert [entry["label_skip"] for entry in double[1]] == [entry["label_skip"] for entry in single[1]]
    assert [entry["loss"] for entry in double[1]] == pytest.approx([entry["loss"] for entry in single[1]], rel=1e-5)
    if all_skip:  # the second and fourth steps: Σw = 0, loss 0
        assert [entry["skipped_batches"] for entry in double[1]] == [0, 1, 0, 1]
        assert [entry["loss"] for entry in double[1]][1::2] == [0.0, 0.0]
    # float32 sums in another order (gloo's all-reduce against one process's accumulation): measured up to
    # 1.2e-6 apart on 1 of 12,288 weights after 4 Adam steps (2026-12-08, torch 2.13.0), so 1e-5 absolute
    for name, value in single[2].items():
        torch.testing.assert_close(double[2][name], value, rtol=1e-5, atol=1e-5)


def _relabel_last_batch_skip(config, world_batch: int) -> None:
    """Rewrite the round's annotation parts with `skip` on the turns that `build_examples` puts in the
    last optimizer batch (the same seeded shuffle `run_train` does), through a StageWriter as annotate would."""
    layout = RunLayout.of(config)
    turns_dir, directory = layout.stage_dir(1, "turns"), layout.stage_dir(1, "annotations")
    notes = read_stage(directory, "annotations").to_pylist()
    examples, _ = build_examples(
        read_stage(turns_dir, "turns").to_pylist(),
        notes,
        config.train,
        world_batch=world_batch,
        seed=derive_seed(config.seed, 1, "train"),
    )
    last = {(e["episode_id"], e["turn"]) for e in examples if e["batch_index"] == examples[-1]["batch_index"]}
    manifest = read_manifest(directory, "annotations")
    parts = [pq.read_table(directory / part_name(index)).to_pylist() for index in range(manifest["num_parts"])]
    writer = StageWriter(
        directory,
        "annotations",
        config=manifest["config"],
        inputs=manifest["inputs"],
        models=manifest["models"],
        num_parts=manifest["num_parts"],
        force=True,
    )
    for index, rows in enumerate(parts):
        writer.write_part(
            index, [{**row, "label": "skip"} if (row["episode_id"], row["turn"]) in last else row for row in rows]
        )
    assert writer.finalize()
