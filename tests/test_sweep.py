"""`sweep`: the grid and its names, every bad input (one line, exit 2), scheduling and resume.

The scheduler is checked exactly with a stand-in for the child processes that records what it was
asked to run and writes the rounds.jsonl line a real `round` would; one test drives real `round`
children, stops the sweep in the middle of a round and starts it again.
"""

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline import sweep as sweep_module
from pipeline.errors import UserError
from pipeline.rounds import ROUNDS_FILE, append_round, recorded_rounds
from pipeline.runs import RunLayout
from pipeline.sweep import LOG_FILE, ChildExit, parse_seeds, plan_sweep, run_sweep, threads_per_job
from stages.cli import app

REPO = Path(__file__).resolve().parents[1]
OPD = REPO / "configs" / "ablations" / "opd.yaml"
SAGE = REPO / "configs" / "ablations" / "sage.yaml"
NAMES = ["opd-s0", "sage-s0", "opd-s1", "sage-s1"]  # seed by seed


@pytest.mark.parametrize(
    ("text", "seeds"),
    [("0,1,2", (0, 1, 2)), ("0-2", (0, 1, 2)), ("3", (3,)), ("0-1, 5,7-8", (0, 1, 5, 7, 8)), ("4-4", (4,))],
)
def test_seeds_parse_as_lists_and_ranges(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "a", "1-", "-1", "0,,1", "1.5", "0-2-4", "1 2"])
def test_seeds_that_do_not_parse_are_refused(text):
    with pytest.raises(UserError, match=r"^--seeds expects seeds and ranges separated by commas"):
        parse_seeds(text)


def test_a_backwards_range_says_how_to_write_it():
    with pytest.raises(UserError, match=r"^--seeds range 2-1 runs backwards: write 1-2$"):
        parse_seeds("0,2-1")


@pytest.mark.parametrize(
    ("cores", "jobs", "runs", "threads"),
    [(2, 1, 4, 2), (2, 2, 4, 1), (2, 3, 4, 1), (8, 4, 2, 4), (16, 3, 6, 5), (1, 1, 1, 1)],
)
def test_threads_share_the_cores_among_the_jobs_that_can_run_at_once(cores, jobs, runs, threads):
    assert threads_per_job(cores, jobs, runs) == threads


def test_the_grid_is_configs_times_seeds_each_a_run_of_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_module, "available_cores", lambda: 4)
    plan = plan_sweep([OPD, SAGE], "0-1", rounds=3, jobs=2, overrides=[f"runs_dir={tmp_path}", "env.max_steps=3"])
    assert plan.names == NAMES
    assert [(run.config.run, run.config.seed, run.config.env.max_steps) for run in plan.runs] == [
        ("opd-s0", 0, 3),
        ("sage-s0", 0, 3),
        ("opd-s1", 1, 3),
        ("sage-s1", 1, 3),
    ]
    assert plan.runs[0].config.train.turn_selection is False and plan.runs[1].config.train.turn_selection is True
    assert plan.runs_dir == tmp_path and plan.report_dir() == tmp_path.parent / "reports" / "sweep-opd-sage"
    child = plan.child(plan.runs[2], "round", 2)
    assert child.argv[1:] == (
        "-m",
        "stages",
        "round",
        "--config",
        str(OPD),
        "--run",
        "opd-s1",
        f"--set=runs_dir={tmp_path}",
        "--set=env.max_steps=3",
        "--set=seed=1",
        "--set=runtime.threads=2",
    )
    assert child.env()["OMP_NUM_THREADS"] == child.env()["MKL_NUM_THREADS"] == "2"
    assert plan.child(plan.runs[1], "eval", 1).argv[-4:] == ("--policy", "teacher", "--round", "1")
    assert plan_sweep([OPD], "0", 1, 2, [f"runs_dir={tmp_path}"], threads=3).child_threads == 3


def test_a_base_lays_every_config_over_another_setting_and_names_the_runs_after_both(tmp_path):
    bench = REPO / "configs" / "bench.yaml"
    plan = plan_sweep([OPD, SAGE], "0", 1, 1, [f"runs_dir={tmp_path}"], threads=1, baseline="bench-opd", base=bench)
    assert plan.names == ["bench-opd-s0", "bench-sage-s0"]
    assert [(run.config.data.source, run.config.train.turn_selection) for run in plan.runs] == [
        ("bench", False),
        ("bench", True),
    ]
    assert plan.child(plan.runs[0], "round", 1).argv[4:10] == (
        "--config",
        str(OPD),
        "--run",
        "bench-opd-s0",
        "--base",
        str(bench),
    )
    assert plan.report_dir().name == "sweep-bench-opd-bench-sage"
    with pytest.raises(UserError, match="--baseline opd is neither a config of the sweep"):
        plan_sweep([OPD, SAGE], "0", 1, 1, [f"runs_dir={tmp_path}"], baseline="opd", base=bench)


# --------------------------------------------------------------------------------------- bad input


@pytest.fixture
def same_stem(tmp_path) -> list[str]:
    """Two configs in different folders with the same file name: both would make run `opd-s0`."""
    paths = []
    for folder in ("a", "b"):
        path = tmp_path / folder / "opd.yaml"
        path.parent.mkdir()
        path.write_text(f"base: {OPD}\n")
        paths += ["--config", str(path)]
    return paths


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "nowhere.yaml"], "error: config file not found: nowhere.yaml"),
        ("same-stem", "error: run name opd-s0 comes twice ("),
        (["--config", str(OPD), "--seeds", "0,1,0"], "error: run name opd-s0 comes twice ("),
        (["--config", str(OPD), "--jobs", "0"], "error: --jobs must be 1 or more, got 0"),
        (["--config", str(OPD), "--seeds", "0,x"], "error: --seeds expects seeds and ranges separated by commas"),
        (["--config", str(OPD), "--seeds", "3-1"], "error: --seeds range 3-1 runs backwards: write 1-3"),
        (["--config", str(OPD), "--rounds", "0"], "error: --rounds must be 1 or more, got 0"),
        (["--config", str(OPD), "--threads", "-1"], "error: --threads must be 0 (the cores shared by the jobs)"),
        (["--config", str(OPD), "--set", "seed=4"], "error: --set seed=… is the sweep's to set: use --seeds"),
        (["--config", str(OPD), "--set", "rollout.bogus=1"], "error: unknown config key 'rollout.bogus'"),
        (["--config", str(OPD), "--baseline", "sft"], "error: --baseline sft is neither a config of the sweep (opd)"),
        (["--seeds", "0"], "error: name at least one --config"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, same_stem, args, message):
    runs = tmp_path / "runs"
    args = same_stem if args == "same-stem" else args
    result = CliRunner().invoke(app, ["sweep", f"--set=runs_dir={runs}", *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1
    assert result.stdout == ""
    assert not runs.exists() and not (tmp_path / "reports").exists()


# --------------------------------------------------------------------------- scheduling, with stand-ins


class FakeChildren:
    """Stands in for the child processes: records each call, writes the line a real `round` would.

    `fail` maps (run, round) to the last line of a child that exits 1; `on_call` runs inside a child.
    """

    def __init__(self, runs_dir: Path, fail=None, on_call=None) -> None:
        self.runs_dir = runs_dir
        self.fail = fail or {}
        self.on_call = on_call
        self.calls: list[tuple[str, str, int]] = []
        self.threads: set[str] = set()
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def __call__(self, child, log) -> ChildExit:
        with self._lock:
            self.calls.append((child.run, child.command, child.round))
            self.threads.add(child.env()["OMP_NUM_THREADS"])
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            time.sleep(0.02)  # long enough for the pool's other workers to overlap
            if self.on_call is not None and (exit_ := self.on_call(child)) is not None:
                return exit_
            if (child.run, child.round) in self.fail and child.command == "round":
                return ChildExit(1, self.fail[child.run, child.round])
            if child.command == "round":
                entry = {"round": child.round, "student_success": 0.25 * child.round, "seconds": {"rollout": 2.0}}
                append_round(RunLayout(self.runs_dir / child.run), entry)
            return ChildExit(0, "ok")
        finally:
            with self._lock:
                self.running -= 1


def rounds_of(runs_dir: Path, name: str) -> list[int]:
    return [entry["round"] for entry in recorded_rounds(RunLayout(runs_dir / name))]


@pytest.fixture
def grid(tmp_path):
    """opd and sage × seeds 0, 1 for 3 rounds, 2 at a time; opd-s0 has 1 round, opd-s1 all 3."""
    runs_dir = tmp_path / "runs"
    for name, done in (("opd-s0", 1), ("opd-s1", 3)):
        for number in range(1, done + 1):
            append_round(RunLayout(runs_dir / name), {"round": number, "student_success": 0.0, "seconds": {}})
    return plan_sweep([OPD, SAGE], "0-1", rounds=3, jobs=2, overrides=[f"runs_dir={runs_dir}"], threads=1)


def test_a_sweep_runs_only_the_missing_rounds_then_the_teacher_once_per_run(grid):
    runs_dir = grid.runs_dir
    children = FakeChildren(runs_dir)
    lines: list[str] = []
    result = run_sweep(grid, children, lines.append)
    assert not result.interrupted and not result.failed
    assert [(o.name, o.state, o.rounds, o.rounds_run) for o in result.outcomes] == [
        ("opd-s0", "done", 3, 2),
        ("sage-s0", "done", 3, 3),
        ("opd-s1", "done", 3, 0),
        ("sage-s1", "done", 3, 3),
    ]
    by_run = {name: [(command, number) for run, command, number in children.calls if run == name] for name in NAMES}
    assert by_run == {
        "opd-s0": [("round", 2), ("round", 3), ("eval", 1)],
        "opd-s1": [("eval", 1)],
        "sage-s0": [("round", 1), ("round", 2), ("round", 3), ("eval", 1)],
        "sage-s1": [("round", 1), ("round", 2), ("round", 3), ("eval", 1)],
    }
    assert children.most_at_once == 2 and children.threads == {"1"}
    assert all(rounds_of(runs_dir, name) == [1, 2, 3] for name in NAMES)
    assert "opd-s0 round 2/3: student success 50.0% (2s)" in lines
    assert sorted(line for line in lines if line.startswith("sage-s1")) == [
        f"sage-s1 round {n}/3: student success {25 * n:.1f}% (2s)" for n in (1, 2, 3)
    ]
    assert all((runs_dir / name / LOG_FILE).is_file() for name in NAMES)

    again = FakeChildren(runs_dir)
    rerun = run_sweep(grid, again)
    assert sorted(again.calls) == sorted((name, "eval", 1) for name in NAMES)  # finished rounds are not redone
    assert [o.rounds_run for o in rerun.outcomes] == [0, 0, 0, 0]
    assert all(rounds_of(runs_dir, name) == [1, 2, 3] for name in NAMES)


def test_floors_are_evaluated_once_per_run_after_the_teacher(tmp_path):
    """`--floors`: each run evaluates the four floors of its seed once, after its rounds and the teacher."""
    runs_dir = tmp_path / "runs"
    plan = plan_sweep([OPD], "0", rounds=1, jobs=1, overrides=[f"runs_dir={runs_dir}"], threads=1, floors=True)
    assert plan.references == ("teacher", "floor:random", "floor:first", "floor:last", "floor:rule")
    evaluated = []
    children = FakeChildren(
        runs_dir, on_call=lambda child: evaluated.append(child.argv[-3]) if child.command == "eval" else None
    )
    run_sweep(plan, children)
    assert children.calls == [("opd-s0", "round", 1)] + [("opd-s0", "eval", 1)] * 5
    assert evaluated == list(plan.references)


def test_a_failing_run_is_reported_and_the_others_go_on(grid):
    children = FakeChildren(grid.runs_dir, fail={("sage-s0", 2): "error: the disk is full"})
    lines: list[str] = []
    result = run_sweep(grid, children, lines.append)
    (failed,) = result.failed
    assert (failed.name, failed.rounds, failed.rounds_run) == ("sage-s0", 1, 1)
    assert failed.error == "round 2 failed: error: the disk is full"
    assert f"sage-s0 round 2 failed: error: the disk is full (its output: {grid.runs_dir}/sage-s0/{LOG_FILE})" in lines
    assert not any(run == "sage-s0" and command == "eval" for run, command, _ in children.calls)
    assert [o.state for o in result.outcomes] == ["done", "failed", "done", "done"]
    assert rounds_of(grid.runs_dir, "sage-s1") == [1, 2, 3] and rounds_of(grid.runs_dir, "sage-s0") == [1]


def test_the_command_names_a_failed_run_and_exits_1(tmp_path, monkeypatch):
    runs_dir = tmp_path / "runs"
    children = FakeChildren(runs_dir, fail={("sage-s0", 1): "error: the disk is full"})
    monkeypatch.setattr(sweep_module.ChildProcesses, "run", lambda self, child, log: children(child, log))
    monkeypatch.setattr(sweep_module, "available_cores", lambda: 2)
    reported = []
    monkeypatch.setattr(sweep_module, "write_sweep_report", lambda plan, out: reported.append(plan.names))
    args = ["sweep", "-c", str(OPD), "-c", str(SAGE), "--jobs", "2", "--no-teacher", f"--set=runs_dir={runs_dir}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    (line,) = result.stdout.splitlines()
    assert line.startswith("sweep: 2 runs × 1 rounds, 2 at a time, 1 threads each: 1 rounds run, 0 already there, ")
    assert "1 runs failed; sage-s0 round 1 failed: error: the disk is full in " in line
    assert line.endswith("; no report: no run has a round")
    assert (
        f"sage-s0 round 1 failed: error: the disk is full (its output: {runs_dir}/sage-s0/{LOG_FILE})\n"
        in result.stderr
    )
    assert "opd-s0 round 1/1: student success 25.0% (2s)\n" in result.stderr
    assert reported == [["opd-s0", "sage-s0"]] and sorted(children.calls) == [
        ("opd-s0", "round", 1),
        ("sage-s0", "round", 1),
    ]


def test_a_round_that_exits_0_without_its_line_fails_instead_of_looping(grid):
    children = FakeChildren(grid.runs_dir, on_call=lambda child: ChildExit(0, "ok"))
    result = run_sweep(grid, children)
    assert {o.name: o.error for o in result.failed} == {
        "opd-s0": "round 2 failed: it ended without its line in rounds.jsonl",
        "sage-s0": "round 1 failed: it ended without its line in rounds.jsonl",
        "sage-s1": "round 1 failed: it ended without its line in rounds.jsonl",
    }


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_sweep_keeps_its_rounds_and_a_rerun_finishes_without_duplicates(grid, signum):
    """The signal reaches the sweep while sage-s0's round 2 runs; that child dies of it (exit 1, as a
    stopped `round` does), which is an interruption, not a failure. A rerun does the rest."""

    def stop_in(child):
        if (child.run, child.command, child.round) == ("sage-s0", "round", 2):
            os.kill(os.getpid(), signum)
            time.sleep(0.5)  # the sweep sees the signal before this child ends
            return ChildExit(1, "Aborted!")
        return None

    children = FakeChildren(grid.runs_dir, on_call=stop_in)
    stopped = run_sweep(grid, children)
    assert stopped.interrupted and not stopped.failed
    assert {o.state for o in stopped.outcomes} <= {"interrupted", "done"}
    assert rounds_of(grid.runs_dir, "sage-s0") == [1]
    assert ("sage-s1", "round", 3) not in children.calls  # nothing new starts after a stop

    again = FakeChildren(grid.runs_dir)
    finished = run_sweep(grid, again)
    assert not finished.interrupted and not finished.failed
    assert ("sage-s0", "round", 2) in again.calls and ("sage-s0", "round", 1) not in again.calls
    assert all(rounds_of(grid.runs_dir, name) == [1, 2, 3] for name in NAMES)


def test_a_run_held_by_another_process_is_waited_for(tmp_path):
    """A child that outlived a killed sweep still holds its run's log: the next sweep waits for it."""
    runs_dir = tmp_path / "runs"
    plan = plan_sweep([OPD], "0", rounds=1, jobs=1, overrides=[f"runs_dir={runs_dir}"], teacher=False)
    log = runs_dir / "opd-s0" / LOG_FILE
    log.parent.mkdir(parents=True)
    lines: list[str] = []
    with log.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        threading.Timer(1.5, fcntl.flock, (held, fcntl.LOCK_UN)).start()
        tick = time.perf_counter()
        children = FakeChildren(runs_dir)
        result = run_sweep(plan, children, lines.append)
    assert time.perf_counter() - tick >= 1.5
    assert lines[0] == "opd-s0: waiting for another process on this run"
    assert children.calls == [("opd-s0", "round", 1)] and result.outcomes[0].state == "done"


# ------------------------------------------------------------------------------------- real children

# Real `round` children on the smallest settings: 2 games of 2 steps, one eval game.
TINY = (
    "env.max_steps=2",
    "env.num_workers=1",
    "sampling.max_new_tokens=12",
    "rollout.num_games=2",
    "rollout.samples_per_game=1",
    "eval.splits=[valid_unseen]",
    "eval.num_games=1",
    "eval.samples_per_game=1",
)


@pytest.mark.slow
def test_a_sweep_stopped_mid_round_finishes_with_the_same_runs_and_no_duplicated_rounds(tmp_path, tiny_models):
    runs_dir = tmp_path / "runs"
    settings = [f"runs_dir={runs_dir}", *(f"models.{k}={v}" for k, v in tiny_models.items()), *TINY]
    args = ["sweep", "--config", str(OPD), "--seeds", "0", "--rounds", "1", "--no-teacher"]
    args += [f"--set={item}" for item in settings]
    sweep = subprocess.Popen(
        [sys.executable, "-m", "stages", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the signal goes to the sweep alone: it must stop its children itself
    )
    turns = runs_dir / "opd-s0" / "round-001" / "turns"
    deadline = time.monotonic() + 120
    while not turns.is_dir() and sweep.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    sweep.send_signal(signal.SIGINT)
    out, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, err
    assert err.strip().splitlines()[-1] == (
        "sweep stopped: kept opd-s0 0/1 rounds (finished stages of a round under way too); run it again to carry on"
    )
    assert out == ""
    deadline = time.monotonic() + 20
    while _group_alive(sweep.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _group_alive(sweep.pid), "a child of the stopped sweep is still running"

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert rounds_of(runs_dir, "opd-s0") == [1]
    (line,) = result.stdout.splitlines()
    report = runs_dir.parent / "reports" / "sweep-opd" / "report.md"
    assert line.startswith("sweep: 1 runs × 1 rounds, 1 at a time, ") and line.endswith(f"report -> {report}")
    assert ": 1 rounds run, 0 already there, 0 runs failed in " in line
    assert report.is_file() and (runs_dir / "opd-s0" / ROUNDS_FILE).read_text().count("\n") == 1


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True
