"""Where the stages run: in this process (`local`), or as tasks on a Ray cluster (`ray`).

With Ray, a data stage (rollout, annotate, eval) is cut into shards, `Sharding(i, n)`: part p belongs to
shard p % n. Each shard is one Ray task with the resources `config.resources.<stage>` asks for. The
stage's own resume logic keeps the result exact whatever happens to a task: parts are seeded by their
index, written whole and listed once, so a task Ray retries after its worker died redoes only the parts
that are not listed yet, and no part is ever written twice. The driver sets the stage up before the tasks
start (with --force it clears it there, once) and finalizes it after them. Train is one task that runs
the train stage in its own process, or with `resources.train.processes` > 1 under torchrun on the GPUs
of one node.

Tasks work in the driver's working directory with its HF/ALFWorld environment variables: on a cluster of
several nodes, the run folder, the models and the data must sit at the same paths on every node (a
shared filesystem), as they do for any torchrun job. `ray` is an optional extra, imported only here.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import yaml

from pipeline.config import Config, TaskResources
from pipeline.errors import Interrupted, StorageError, UserError
from pipeline.runs import RunLayout
from pipeline.sharding import ALL_PARTS, NO_PARTS, Sharding

EXECUTORS = ("local", "ray")
SHARD_RETRIES = 3  # Ray retries a task whose worker died this many times (not one that raised an error)
FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM", "ALFWORLD_DATA")
_STAGES = {  # stage -> (module, function), each called (config, round, sharding, force, progress)
    "rollout": ("pipeline.play", "run_rollout"),
    "eval": ("pipeline.play", "run_eval"),
    "annotate": ("pipeline.annotate", "run_annotate"),
}


@dataclass(frozen=True)
class ExecutorSettings:
    """The command line's `--executor`, `--ray-address`, `--shard-index` and `--num-shards`."""

    kind: str = "local"
    address: str | None = None  # a running Ray cluster (host:port); None starts a local one for the command
    shard_index: int = 0
    num_shards: int | None = None  # local: 1; ray: as many tasks as the cluster runs at once

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise UserError(f"--executor must be one of {', '.join(EXECUTORS)}, not {self.kind!r}")
        if self.kind != "ray" and self.address is not None:
            raise UserError("--ray-address needs --executor ray")
        if self.kind == "ray" and self.shard_index:
            raise UserError("--shard-index is for processes started by hand: with --executor ray, Ray deals the shards")
        if self.num_shards is not None and self.num_shards < 1:
            raise UserError(f"--num-shards must be 1 or more, got {self.num_shards}")


class LocalExecutor:
    """Every stage in this process (or this process's share, with `--shard-index/--num-shards`)."""

    def __init__(self, sharding: Sharding = ALL_PARTS) -> None:
        self.sharding = sharding

    def stage(self, stage: str, config: Config, round_: int, force: bool = False, progress: Any = None) -> Any:
        return _stage_function(stage)(config, round_, self.sharding, force, progress)

    def train(self, config: Config, round_: int, force: bool = False) -> Any:
        from pipeline.train import run_train

        return run_train(config, round_, force)


class RayExecutor:
    """Each data stage as shards on Ray tasks; train as one task (see the module docstring)."""

    def __init__(self, ray: Any, num_shards: int | None, report: Callable[[str], None] | None = None) -> None:
        self.ray = ray
        self.num_shards = num_shards
        self.report = report or (lambda line: None)

    def stage(self, stage: str, config: Config, round_: int, force: bool = False, progress: Any = None) -> Any:
        function = _stage_function(stage)
        function(config, round_, NO_PARTS, force, None)  # set up; with force, cleared once, here
        resources = getattr(config.resources, stage)
        count = self.num_shards or self._slots(resources)
        task = self.ray.remote(_run_shard).options(
            name=f"{stage}-shard", max_retries=SHARD_RETRIES, **_ray_resources(resources)
        )
        context = _task_context(config, resources)
        refs = [task.remote(context, stage, round_, Sharding(index, count)) for index in range(count)]
        shards = self._gather(refs, f"{stage} round {round_}")
        return _merged(function(config, round_, NO_PARTS, False, None), shards)

    def train(self, config: Config, round_: int, force: bool = False) -> Any:
        resources = config.resources.train
        # A retried train is safe too: the next one clears what a dead one left, or resumes its saved states.
        task = self.ray.remote(_run_train).options(name="train", max_retries=SHARD_RETRIES, **_ray_resources(resources))
        context = _task_context(config, resources)
        (result,) = self._gather([task.remote(context, round_, force, resources.processes)], f"train round {round_}")
        return result

    def _slots(self, resources: TaskResources) -> int:
        """How many tasks with `resources` the cluster runs at once (at least 1)."""
        total = self.ray.cluster_resources()
        fits = [total.get("CPU", 0) // resources.num_cpus]
        if resources.num_gpus:
            fits.append(total.get("GPU", 0) // resources.num_gpus)
        return max(1, int(min(fits)))

    def _gather(self, refs: list[Any], label: str) -> list[Any]:
        """The tasks' results in submission order; a task's own error is raised here as itself."""
        pending, done = list(refs), 0
        while pending:
            finished, pending = self.ray.wait(pending, num_returns=1)
            done += 1
            try:
                self.ray.get(finished[0])
            except self.ray.exceptions.RayTaskError as err:
                cause = getattr(err, "cause", None)
                if isinstance(cause, (UserError, StorageError, Interrupted)):
                    raise cause from None
                raise
            self.report(f"{label}: {done}/{len(refs)} Ray tasks done")
        return self.ray.get(refs)


@contextmanager
def open_executor(settings: ExecutorSettings, report: Callable[[str], None] | None = None) -> Iterator[Any]:
    """The executor `settings` names; a local Ray cluster started for it is shut down afterwards."""
    if settings.kind == "local":
        yield LocalExecutor(Sharding(settings.shard_index, settings.num_shards or 1))
        return
    ray = _import_ray()
    if settings.address is not None:
        _check_reachable(settings.address)
    try:
        ray.init(address=settings.address, include_dashboard=False, log_to_driver=False)
    except ConnectionError as err:
        raise UserError(f"no Ray cluster at {settings.address or 'auto'}: {str(err).splitlines()[0]}") from None
    try:
        yield RayExecutor(ray, settings.num_shards, report)
    finally:
        ray.shutdown()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install -e '.[ray]'") from None
    return ray


def _check_reachable(address: str) -> None:
    """A cluster address nobody answers at is one line at once, not Ray's minute of retries."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--ray-address must be host:port (the head node's GCS), not {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise UserError(
            f"no Ray cluster answers at {address} ({err.strerror or err}): start one with `ray start --head` "
            "or leave --ray-address out for a local cluster"
        ) from None


def _ray_resources(resources: TaskResources) -> dict[str, float]:
    return {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus}


def _stage_function(stage: str) -> Callable[..., Any]:
    module, name = _STAGES[stage]
    return getattr(__import__(module, fromlist=[name]), name)


@dataclass(frozen=True)
class _TaskContext:
    """What a task needs from the driver: the config (torch threads = the task's CPUs), its working directory
    (relative paths in the config) and environment variables."""

    config: Config
    cwd: str
    env: dict[str, str]


def _task_context(config: Config, resources: TaskResources) -> _TaskContext:
    threads = max(1, int(resources.num_cpus))
    env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
    return _TaskContext(replace(config, runtime=replace(config.runtime, threads=threads)), os.getcwd(), env)


def _enter(context: _TaskContext) -> None:
    os.chdir(context.cwd)
    os.environ.update(context.env)


def _run_shard(context: _TaskContext, stage: str, round_: int, sharding: Sharding) -> Any:
    """A Ray task: one shard of a data stage (never forced: the driver cleared the stage before)."""
    _enter(context)
    return _stage_function(stage)(context.config, round_, sharding, False, None)


def _run_train(context: _TaskContext, round_: int, force: bool, processes: int) -> Any:
    """A Ray task: the train stage here, or under torchrun with `processes` processes on this node."""
    _enter(context)
    from pipeline.train import run_train

    config = context.config
    if processes > 1:
        round_dir = RunLayout.of(config).round_dir(round_)
        round_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix=".train-config-", dir=round_dir) as file:
            yaml.safe_dump(dataclasses.asdict(config), file)
            file.flush()
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
            command += [str(processes), "-m", "stages", "train", "--config", file.name, "--round", str(round_)]
            done = subprocess.run([*command, *(["--force"] if force else [])], capture_output=True, text=True)
        if done.returncode:  # the stage's own one-line error if it gave one, else torchrun's last line
            lines = [line for line in done.stderr.splitlines() if line.strip()] or ["no output"]
            cause = next((line for line in lines if line.startswith("error: ")), lines[-1])
            raise UserError(f"train under torchrun ({processes} processes) failed: {cause.removeprefix('error: ')}")
        return replace(run_train(config, round_), trained=True)
    return run_train(config, round_, force)


def _merged(final: Any, shards: list[Any]) -> Any:
    """The coordinator's result (directory, completeness, summary) with the shards' counts added up."""
    counts = {}
    for item in dataclasses.fields(final):
        value = getattr(final, item.name)
        if isinstance(value, Counter):
            counts[item.name] = sum((getattr(shard, item.name) for shard in shards), Counter())
        elif isinstance(value, int) and not isinstance(value, bool):
            counts[item.name] = sum(getattr(shard, item.name) for shard in shards)
    return replace(final, **counts)
