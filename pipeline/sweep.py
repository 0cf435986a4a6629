"""`sweep`: a grid of configs × seeds, each (config, seed) its own run, brought to R rounds.

Each run of the grid is a sequence of `python -m stages round` children (then, once, the teacher's
reference `eval`), so a run made by a sweep is exactly a run made by hand: same code path, same files.
`round` itself finishes a round that a stop interrupted, so resuming is "count the rounds in
rounds.jsonl, run the rest", and a finished round is never run again (the teacher's eval, once
complete, is skipped by the stage itself). Children are processes of their own so
that a failing run cannot take the others down, and so that each gets its own thread count: torch and
OpenMP take every core by default, and jobs that each do so oversubscribe the machine badly (see the
README), so each child gets `cores // jobs` threads.

The only scheduling is a thread pool of `jobs` workers, each driving one run at a time. Every run
holds an exclusive lock on its `sweep.log` while it is driven; the children inherit the open log as
their output, so a child that outlives a killed sweep still holds the lock, and a restarted sweep waits
for it instead of working on the same round twice.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from pipeline.config import FLOORS, Config, load_config
from pipeline.errors import UserError
from pipeline.locks import try_flock
from pipeline.runs import RunLayout, next_round, recorded_rounds

if TYPE_CHECKING:
    from pipeline.report import Report

SEEDS_ITEM = re.compile(r"^(\d+)(?:-(\d+))?$")
# `--set` keys a sweep sets itself, per run and per child: a user's value would be silently overridden.
RESERVED_KEYS = {
    "run": "run names are <config stem>-s<seed>",
    "seed": "use --seeds",
    "runtime.threads": "use --threads",
}
LOG_FILE = "sweep.log"
LOCK_POLL_SECONDS = 1.0
STOP_GRACE_SECONDS = 30.0  # after a stop, children get this long to wind down before they are killed
TAIL_BYTES = 64 * 1024


def parse_seeds(text: str) -> tuple[int, ...]:
    """`0,1,2`, `0-2` or a mix (`0-2,5`), in the order given; a UserError for anything else."""
    seeds: list[int] = []
    for item in text.split(","):
        match = SEEDS_ITEM.match(item.strip())
        if match is None:
            raise UserError(f"--seeds expects seeds and ranges separated by commas (0,1,2 or 0-2), got {text!r}")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise UserError(f"--seeds range {item.strip()} runs backwards: write {last}-{first}")
        seeds.extend(range(first, last + 1))
    return tuple(seeds)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells, else all of them)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_per_job(cores: int, jobs: int, runs: int) -> int:
    """The cores shared by the children that can run at once (never fewer than one thread each)."""
    return max(1, cores // min(jobs, runs))


@dataclass(frozen=True)
class SweepRun:
    """One cell of the grid. `config` is loaded with the sweep's overrides, run name and seed: what its
    children will see."""

    config_path: Path
    seed: int
    config: Config
    base: Path | None = None  # laid under the config instead of its own `base:` (`--base`)

    @property
    def group(self) -> str:
        """What the runs of one config share: the config's file name, after the base's when one is given."""
        return group_name(self.config_path, self.base)

    @property
    def name(self) -> str:
        return f"{self.group}-s{self.seed}"

    @property
    def layout(self) -> RunLayout:
        return RunLayout.of(self.config)


def group_name(config_path: Path, base: Path | None = None) -> str:
    """`opd` for configs/ablations/opd.yaml; `bench-opd` for it over configs/bench.yaml."""
    return config_path.stem if base is None else f"{base.stem}-{config_path.stem}"


@dataclass(frozen=True)
class SweepPlan:
    """A checked grid of runs and how to drive them.

    runs: configs × seeds, in that order. rounds: each run is brought to this many recorded rounds.
    jobs: runs driven at once. threads: torch/OpenMP threads per child (0 = the cores shared by the
    jobs). overrides: `--set` items passed to every child. teacher: evaluate the teacher once per run
    (a reference row per seed in the report); floors: the zero-parameter floors too (`pipeline/floors.py`,
    the report's gap closed). baseline: a config stem or run name the report compares the others with.
    """

    runs: tuple[SweepRun, ...]
    rounds: int
    jobs: int
    threads: int = 0
    overrides: tuple[str, ...] = ()
    teacher: bool = True
    baseline: str | None = None
    floors: bool = False

    def __post_init__(self) -> None:
        _require(bool(self.runs), "name at least one --config")
        _require(self.rounds >= 1, f"--rounds must be 1 or more, got {self.rounds}")
        _require(self.jobs >= 1, f"--jobs must be 1 or more, got {self.jobs}")
        _require(self.threads >= 0, f"--threads must be 0 (the cores shared by the jobs) or more, got {self.threads}")
        for item in self.overrides:
            key = item.partition("=")[0].strip()
            _require(key not in RESERVED_KEYS, f"--set {key}=… is the sweep's to set: {RESERVED_KEYS.get(key)}")
        seen: dict[str, SweepRun] = {}
        for run in self.runs:
            first = seen.setdefault(run.name, run)
            _require(
                first is run,
                f"run name {run.name} comes twice ({first.config_path} and {run.config_path}, seed {run.seed}): "
                "configs need different file names and seeds must not repeat",
            )
        for what, value in (("runs_dir", lambda c: c.runs_dir), ("train.annotations", lambda c: c.train.annotations)):
            values = {value(run.config) for run in self.runs}
            _require(
                len(values) == 1, f"the configs disagree on {what} ({', '.join(sorted(values))}): one sweep, one report"
            )
        groups = {run.group for run in self.runs}
        _require(
            self.baseline is None or self.baseline in groups or self.baseline in seen,
            f"--baseline {self.baseline} is neither a config of the sweep ({', '.join(sorted(groups))}) "
            "nor one of its runs",
        )

    @property
    def references(self) -> tuple[str, ...]:
        """The policies each run evaluates once, after its rounds: they depend on the seed, not the method."""
        return ("teacher",) * self.teacher + tuple(f"floor:{name}" for name in FLOORS) * self.floors

    @property
    def names(self) -> list[str]:
        return [run.name for run in self.runs]

    @property
    def runs_dir(self) -> Path:
        return Path(self.runs[0].config.runs_dir)

    @property
    def child_threads(self) -> int:
        return self.threads or threads_per_job(available_cores(), self.jobs, len(self.runs))

    def child(self, run: SweepRun, command: str, round_: int, policy: str = "teacher") -> Child:
        """The child process for `round` (the run's next round) or a reference policy's `eval` of round 1."""
        threads = self.child_threads
        items = [*self.overrides, f"seed={run.seed}", f"runtime.threads={threads}"]
        argv = [sys.executable, "-m", "stages", command, "--config", str(run.config_path), "--run", run.name]
        argv += ["--base", str(run.base)] if run.base is not None else []
        argv += [f"--set={item}" for item in items]
        if command == "eval":
            argv += ["--policy", policy, "--round", "1"]
        return Child(run.name, command, round_, tuple(argv), threads)

    def report_dir(self) -> Path:
        stems = dict.fromkeys(run.group for run in self.runs)
        return self.runs_dir.parent / "reports" / ("sweep-" + "-".join(stems))


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def plan_sweep(
    configs: Sequence[Path],
    seeds: str,
    rounds: int,
    jobs: int,
    overrides: Sequence[str] = (),
    threads: int = 0,
    teacher: bool = True,
    baseline: str | None = None,
    base: Path | None = None,
    floors: bool = False,
) -> SweepPlan:
    """The grid, every config loaded as its children will load it: bad input is a UserError before any work."""
    seed_list = parse_seeds(seeds)
    grid = tuple(
        SweepRun(
            Path(path),
            seed,
            load_config(path, [*overrides, f"run={group_name(Path(path), base)}-s{seed}", f"seed={seed}"], base),
            base,
        )
        for seed in seed_list  # seed by seed: a sweep stopped midway leaves its groups within one seed of each other
        for path in configs
    )
    return SweepPlan(grid, rounds, jobs, threads, tuple(overrides), teacher, baseline, floors)


# ------------------------------------------------------------------------------------------ children


@dataclass(frozen=True)
class Child:
    """One child process of a run: `command` is `round` (bringing the run to round `round`) or `eval`."""

    run: str
    command: str
    round: int
    argv: tuple[str, ...]
    threads: int

    def env(self) -> dict[str, str]:
        threads = str(self.threads)
        return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


@dataclass(frozen=True)
class ChildExit:
    returncode: int
    last_line: str  # the child's last line of output: its error, when it failed


Execute = Callable[[Child, TextIO], ChildExit]


class ChildProcesses:
    """The children running now, so that a stop reaches each of them and no new one starts after it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[subprocess.Popen] = set()
        self._stopped = False

    def run(self, child: Child, log: TextIO) -> ChildExit:
        """Run `child` with its output appended to `log`; its last line comes back with its exit code."""
        log.write(f"\n$ {' '.join(child.argv)}\n")
        log.flush()
        start = log.tell()
        with self._lock:
            if self._stopped:
                return ChildExit(-signal.SIGINT, "not started: the sweep was stopped")
            process = subprocess.Popen(
                child.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=child.env()
            )
            self._live.add(process)
        try:
            returncode = process.wait()
        finally:
            with self._lock:
                self._live.discard(process)
        return ChildExit(returncode, _last_line(Path(log.name), start))

    def interrupt(self) -> None:
        """Ctrl-C for every child (each stage keeps what it finished), and no child after this."""
        self._signal(signal.SIGINT)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, number: int) -> None:
        with self._lock:
            self._stopped = True
            for process in self._live:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(number)


def _last_line(path: Path, start: int) -> str:
    with path.open("rb") as handle:
        handle.seek(max(start, handle.seek(0, os.SEEK_END) - TAIL_BYTES))
        lines = [line.strip() for line in handle.read().decode("utf-8", "replace").splitlines()]
    return next((line for line in reversed(lines) if line), "(no output)")


# ------------------------------------------------------------------------------------------ schedule


@dataclass(frozen=True)
class RunOutcome:
    """What a sweep did to one run. state: done | failed | interrupted. rounds: recorded when it ended;
    rounds_run: how many of them this sweep ran. error: which child failed, and its last line."""

    name: str
    state: str
    rounds: int
    rounds_run: int
    error: str = ""


@dataclass(frozen=True)
class SweepResult:
    outcomes: list[RunOutcome]
    interrupted: bool
    seconds: float

    @property
    def failed(self) -> list[RunOutcome]:
        return [outcome for outcome in self.outcomes if outcome.state == "failed"]


def run_sweep(
    plan: SweepPlan, execute: Execute | None = None, notify: Callable[[str], None] = lambda line: None
) -> SweepResult:
    """Bring every run of the plan to `plan.rounds` rounds, `plan.jobs` runs at a time.

    `execute` runs one child (default: a real process); `notify` gets a line per finished round and per
    failure. Ctrl-C (or SIGTERM) stops the children and returns with `interrupted` set.
    """
    children = ChildProcesses()
    stopping = threading.Event()
    tick = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=min(plan.jobs, len(plan.runs)), thread_name_prefix="sweep")
    futures = [pool.submit(drive_run, plan, run, execute or children.run, stopping, notify) for run in plan.runs]
    interrupted = False
    try:
        with _sigterm_as_interrupt():
            wait(futures)
    except KeyboardInterrupt:
        interrupted = True
        stopping.set()
        _stop(children, futures)
    finally:
        pool.shutdown(wait=True)
    return SweepResult([future.result() for future in futures], interrupted, time.perf_counter() - tick)


def _stop(children: ChildProcesses, futures: list) -> None:
    """Interrupt the children; kill those still there after the grace period or a second Ctrl-C."""
    children.interrupt()
    try:
        pending = wait(futures, timeout=STOP_GRACE_SECONDS).not_done
    except KeyboardInterrupt:
        pending = True
    if pending:
        children.kill()
        wait(futures)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """`kill PID` stops a sweep the way Ctrl-C does: children interrupted, not orphaned mid-round."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def drive_run(
    plan: SweepPlan, run: SweepRun, execute: Execute, stopping: threading.Event, notify: Callable[[str], None]
) -> RunOutcome:
    """Run the run's missing rounds one child at a time, then the reference evals; stop at the first failure.

    A child that exits non-zero while the sweep is stopping was stopped, not failed.
    """
    layout = run.layout
    start = done = 0
    step = "set-up"
    try:
        start = done = _rounds_done(layout)
        with _run_lock(
            layout.root, stopping, lambda: notify(f"{run.name}: waiting for another process on this run")
        ) as log:
            while log is not None and done < plan.rounds and not stopping.is_set():
                step = f"round {done + 1}"
                exit_ = execute(plan.child(run, "round", done + 1), log)
                if stopping.is_set():
                    break
                if exit_.returncode != 0:
                    return _failed(run, step, exit_.last_line, start, done, notify)
                if _rounds_done(layout) != done + 1:
                    return _failed(run, step, "it ended without its line in rounds.jsonl", start, done, notify)
                done += 1
                notify(_round_line(run.name, recorded_rounds(layout)[-1], plan.rounds))
            for policy in plan.references:
                if log is None or stopping.is_set():
                    break
                step = f"{policy} eval"
                exit_ = execute(plan.child(run, "eval", 1, policy), log)
                if exit_.returncode != 0 and not stopping.is_set():
                    return _failed(run, step, exit_.last_line, start, done, notify)
        if stopping.is_set():
            done = _rounds_done(layout)  # a round may have ended as the stop came
    except (OSError, ValueError, UserError) as exc:  # an unreadable rounds.jsonl, a full disk: this run only
        return _failed(run, step, str(exc), start, done, notify)
    return RunOutcome(run.name, "interrupted" if stopping.is_set() else "done", done, done - start)


def _rounds_done(layout: RunLayout) -> int:
    return next_round(layout) - 1


def _failed(run: SweepRun, step: str, line: str, start: int, done: int, notify: Callable[[str], None]) -> RunOutcome:
    error = f"{step} failed: {line}"
    notify(f"{run.name} {error} (its output: {run.layout.root / LOG_FILE})")
    return RunOutcome(run.name, "failed", done, done - start, error)


def _round_line(name: str, entry: dict, rounds: int) -> str:
    success = entry.get("student_success")
    shown = "n/a" if success is None else f"{success:.1%}"
    seconds = sum(entry.get("seconds", {}).values())
    return f"{name} round {entry['round']}/{rounds}: student success {shown} ({seconds:.0f}s)"


@contextlib.contextmanager
def _run_lock(root: Path, stopping: threading.Event, on_wait: Callable[[], None]) -> Iterator[TextIO | None]:
    """The run's log, opened for appending and locked; None when the sweep stopped while waiting for it."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / LOG_FILE).open("a", encoding="utf-8") as log:
        waited = False
        while not try_flock(log):
            if not waited:
                on_wait()
                waited = True
            if stopping.wait(LOCK_POLL_SECONDS):
                yield None
                return
        yield log


def write_sweep_report(plan: SweepPlan, out: Path | None = None) -> Report | None:
    """The report over every run of the plan that has a round on disk (None when none has)."""
    names = [run.name for run in plan.runs if run.layout.rounds() or recorded_rounds(run.layout)]
    if not names:
        return None
    from pipeline.report import write_report  # matplotlib and pandas: only once there is something to report

    annotations = plan.runs[0].config.train.annotations
    return write_report(plan.runs_dir, names, out or plan.report_dir(), plan.baseline, annotations)
