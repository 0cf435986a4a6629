"""Train at scale: peak memory as the round grows, and tokens/s of data-parallel processes.

Both rows run `sage-opd train` as a child process, as a user would, on copies of a round that `make bench`
has already rolled out and annotated:
- memory: the round as it is, and the same round with its turns ×8 (every episode copied under a new id,
  written through `StageWriter` as rollout and annotate write theirs). The child's peak resident memory
  is the kernel's high-water mark (VmHWM). That number also counts the pages of the memory-mapped Arrow
  files the process has touched: page cache, which the kernel takes back under pressure. So a second row
  gives the peak of anonymous memory (RssAnon), the memory only the process can give back, which is what
  grows with the round when its rows are Python objects;
- data parallel: the same optimizer batches trained by one process with 2 threads and by
  `torchrun --nproc_per_node 2` with 1 thread each, on the same 2 cores; tokens trained per second of
  the Trainer's own runtime.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench.table import Row
from pipeline.checkpoints import read_record, read_train_log
from pipeline.config import Config
from pipeline.runs import RunLayout
from pipeline.shards import StageWriter, read_manifest, stage_parts

COPY_MARK = "~copy"  # episode ids of the copies: <episode>~copy<c>


def replicate_round(source: RunLayout, target: RunLayout, round_: int, copies: int) -> None:
    """Write round `round_`'s turns and annotations into `target`'s round `copies` times over, each copy's
    episodes under new ids, so that the copies are distinct turns to the join."""
    for stage, folder in (("turns", "turns"), ("annotations", "annotations")):
        origin = source.stage_dir(round_, folder)
        manifest = read_manifest(origin, stage)
        parts = stage_parts(origin, stage)
        writer = StageWriter(
            target.stage_dir(round_, folder),
            stage,
            config=manifest["config"],
            inputs=manifest["inputs"],
            models=manifest["models"],
            num_parts=len(parts) * copies,
            force=True,
        )
        for copy in range(copies):
            for index, part in enumerate(parts):
                table = pq.read_table(part)
                if copy:
                    ids = pc.binary_join_element_wise(table["episode_id"], f"{COPY_MARK}{copy}", "")
                    table = table.set_column(table.schema.get_field_index("episode_id"), "episode_id", ids)
                writer.write_part(copy * len(parts) + index, table.to_pylist())
        if not writer.finalize():
            raise RuntimeError(f"the copy of {origin} is incomplete")


def train_command(config_path: str, config: Config, *settings: str, processes: int = 1) -> list[str]:
    """`sage-opd train` of round 1 of `config`'s run (with `settings` laid over), in `processes` processes."""
    launch = [sys.executable, "-m", "stages"]
    if processes > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "-m", "stages"]
    # torchrun's own parser takes `--run` for its `--run-path`: the run is named through --set.
    overrides = (f"runs_dir={config.runs_dir}", f"run={config.run}", *settings)
    return [*launch, "train", "--round", "1", "--config", config_path, *(f"--set={item}" for item in overrides)]


def peak_memory(command: list[str], env: dict[str, str] | None = None) -> tuple[int, int]:
    """(peak resident bytes, peak anonymous resident bytes) of `command` run to its end; it must succeed.

    Read from /proc every 20 ms: the kernel's own high-water mark (VmHWM) and the largest RssAnon seen.
    (Not `wait4`'s ru_maxrss: it keeps the pages the child shared with this big process between fork and exec.)
    """
    peaks = {"VmHWM:": 0, "RssAnon:": 0}
    with tempfile.TemporaryFile() as errors:
        child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=errors)
        status = Path(f"/proc/{child.pid}/status")
        while child.poll() is None:
            with contextlib.suppress(OSError):  # the process may end between poll and read
                for line in status.read_text().splitlines():
                    name, value, *_ = [*line.split(), ""]
                    if name in peaks:
                        peaks[name] = max(peaks[name], int(value) * 1024)
            time.sleep(0.02)
        if child.returncode:
            errors.seek(0)
            raise RuntimeError(f"{' '.join(command)} failed: {errors.read().decode(errors='replace')[-2000:]}")
    return peaks["VmHWM:"], peaks["RssAnon:"]


def train_memory(config_path: str, config: Config, scale: int = 8) -> list[Row]:
    """Peak memory of `train` on round 1 of `config`'s run and on that round with its turns ×`scale`."""
    peaks, turns = {}, {}
    for copies in (1, scale):
        run = replace(config, run=f"{config.run}-memory-x{copies}")
        layout = RunLayout.of(run)
        shutil.rmtree(layout.root, ignore_errors=True)
        replicate_round(RunLayout.of(config), layout, 1, copies)
        peaks[copies] = peak_memory(train_command(config_path, run, "train.epochs=1"))
        turns[copies] = read_record(layout.stage_dir(1, "checkpoint"))["stats"]["turns"]
        shutil.rmtree(layout.root)
    rows = []
    for index, kind in enumerate(("resident", "anonymous")):
        small, large = peaks[1][index], peaks[scale][index]
        rows.append(
            Row(
                f"train peak {kind} memory, turns x{scale} over x1",
                large / small,
                "<= 1.3",
                large / small <= 1.3,
                f"{small / 2**20:.0f} MiB on {turns[1]} turns, {large / 2**20:.0f} MiB on {turns[scale]}",
            )
        )
    return rows


def data_parallel_throughput(config_path: str, config: Config) -> Row:
    """Train tokens/s of `torchrun --nproc_per_node 2` (1 thread each) over one process with 2 threads, on
    the same optimizer batches of round 1 (per-device batch × accumulation × processes the same)."""
    batch = config.train.per_device_batch_size
    if batch % 2:
        raise ValueError(f"train.per_device_batch_size {batch} does not split over 2 processes")
    rates = {}
    for processes, threads in ((1, 2), (2, 1)):
        run = replace(config, run=f"{config.run}-ddp-{processes}")
        layout = RunLayout.of(run)
        shutil.rmtree(layout.root, ignore_errors=True)
        replicate_round(RunLayout.of(config), layout, 1, 1)
        settings = ("train.epochs=1", f"train.per_device_batch_size={batch // processes}", f"runtime.threads={threads}")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run(
            train_command(config_path, run, *settings, processes=processes), env=env, check=True, capture_output=True
        )
        directory = layout.stage_dir(1, "checkpoint")
        log = read_train_log(directory, read_record(directory))
        tokens = sum(entry.get("tokens", 0) for entry in log if "loss" in entry)
        rates[processes] = tokens / next(entry["train_runtime"] for entry in log if "train_runtime" in entry)
        shutil.rmtree(layout.root)
    ratio = rates[2] / rates[1]
    return Row(
        "train tokens/s, 2 processes over 1",
        ratio,
        "-",
        True,
        f"{rates[1]:.0f} tokens/s in 1 process x 2 threads, {rates[2]:.0f} in 2 x 1 thread (torchrun, gloo)",
    )
