"""Environment worker processes: ALFWorld games are reset and stepped as a batch, in parallel.

A reset costs 1–3 s of CPU (PDDL translation) and a step ~50 ms, so games live in worker processes:
the rollout submits resets and steps for many episodes, keeps generating with the model meanwhile,
then collects. Each episode slot's game lives in one worker, chosen at its reset: the slot's lane, whose
process is replaced by a fresh one every `games_per_worker` games (see `EnvPool`). A game that raises,
or a worker that dies, turns into an `EnvFailure` for the episodes concerned; the rest of the batch
goes on and a dead worker is replaced.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

from pipeline.config import GAMES_PER_WORKER
from pipeline.envs.alfworld_env import AlfWorldGame, EnvFailure, EnvStep

EnvResult = EnvStep | EnvFailure
# Requests in flight per worker before a submit first takes in an answer: a pipe holds ~200 KB each way, and a
# worker blocked sending answers nobody reads stops reading requests, while we block sending it more.
MAX_IN_FLIGHT = 32


def _start_ignoring_sigint(process: mp.process.BaseProcess) -> None:
    """Start `process` with SIGINT ignored from its first instruction (an ignored signal stays ignored
    across exec, and Python then installs no handler of its own), so not even its imports see Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():  # signal dispositions: main thread only
        process.start()
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        process.start()
    finally:
        signal.signal(signal.SIGINT, previous)


def _worker_main(conn: Connection, alfworld_data: str, expert: str | None, memory: bool) -> None:
    """Serve (op, slot, arg) requests until told to stop: op is `reset` (arg = game file) or `step`."""
    os.environ["ALFWORLD_DATA"] = alfworld_data
    games: dict[int, AlfWorldGame] = {}
    while True:
        try:
            op, slot, arg = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if op == "stop":
            return
        try:
            if op == "reset":
                if slot in games:
                    games.pop(slot).close()
                games[slot] = AlfWorldGame(arg, expert, memory)
                result: EnvResult = games[slot].reset()
            else:
                result = games[slot].step(arg)
        except Exception as exc:  # a broken game ends its episode, never the run
            games.pop(slot, None)
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            result = EnvFailure(f"{op} failed: {last}")
        conn.send((slot, result))


@dataclass(eq=False)
class _Worker:
    """One worker process, and how many games it has started."""

    process: mp.process.BaseProcess
    conn: Connection
    games_started: int = 0


class EnvPool:
    """`num_workers` lanes of processes hosting the games of many episode slots.

    Usage: `submit_reset` / `submit_step` for any slots, then `collect()` waits for every submitted
    request and returns {slot: EnvStep | EnvFailure}. Time spent waiting is added to `wait_seconds`.
    With `expert` set every EnvStep carries that expert's next command (see `AlfWorldGame`); `memory` makes a
    searching expert read the episode's memory line, as prompts show it when `env.memory` is on.

    Why lanes, not fixed processes: every game the engine loads maps its own copy of fast_downward's
    `libdownward.so` (34 MB, copied to a folder deleted at once), and nothing unloads it, so a process holds
    34 MB of deleted file on disk per game it ever started, until it exits (one that played ~2,300 games filled
    the disk). After `games_per_worker` resets a lane starts a fresh process for its next games; the old one
    finishes the episodes it hosts and exits when the last of them is reset elsewhere. A game's results do not
    depend on the process it runs in, so recycling changes no result. (Unloading the copy instead is unsafe:
    the copies share one plugin registry whose destructor then jumps into unmapped code at exit.)
    """

    def __init__(
        self,
        num_workers: int,
        alfworld_data: str,
        expert: str | None = None,
        memory: bool = False,
        games_per_worker: int = GAMES_PER_WORKER,
    ) -> None:
        self._ctx = mp.get_context("spawn")
        self._alfworld_data = alfworld_data
        self._expert = expert
        self._memory = memory
        self._games_per_worker = games_per_worker
        self._lanes: list[_Worker] = [self._start_worker() for _ in range(num_workers)]
        self._retired: list[_Worker] = []  # recycled lanes' old processes, still hosting live games
        self._home: dict[int, _Worker] = {}  # slot -> the worker its game lives in
        self._pending: dict[int, _Worker] = {}  # slot -> the worker its request went to
        self._settled: dict[int, EnvResult] = {}  # answered before collect(): failed submits, drained answers
        self.wait_seconds = 0.0

    def worker_pids(self) -> list[int]:
        """The live worker processes (lanes and retired ones), e.g. to read what they map."""
        return [worker.process.pid for worker in (*self._lanes, *self._retired) if worker.process.is_alive()]

    def _start_worker(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_worker_main, args=(child, self._alfworld_data, self._expert, self._memory), daemon=True
        )
        _start_ignoring_sigint(process)
        child.close()
        return _Worker(process, parent)

    def _worker_for_reset(self, slot: int) -> _Worker:
        """The lane's worker for a new game, recycled first when it has started its share of games."""
        lane = slot % len(self._lanes)
        worker = self._lanes[lane]
        if self._games_per_worker and worker.games_started >= self._games_per_worker:
            self._retired.append(worker)
            worker = self._lanes[lane] = self._start_worker()
        worker.games_started += 1
        self._home[slot] = worker
        return worker

    def _submit(self, op: str, slot: int, arg: str) -> None:
        if slot in self._pending or slot in self._settled:
            raise RuntimeError(f"slot {slot} already has a request in flight")
        if op == "reset":
            worker = self._worker_for_reset(slot)
            self._stop_idle_retired()
        else:
            worker = self._home.get(slot, self._lanes[slot % len(self._lanes)])
        while sum(pending is worker for pending in self._pending.values()) >= MAX_IN_FLIGHT:
            self._receive(worker, self._settled)
        try:
            worker.conn.send((op, slot, arg))
        except (BrokenPipeError, OSError):  # the worker died since its last answer
            self._settled.update(self._fail_worker(worker))
            self._settled[slot] = EnvFailure("environment worker died; its games were lost")
            return
        self._pending[slot] = worker

    def submit_reset(self, slot: int, gamefile: str) -> None:
        self._submit("reset", slot, gamefile)

    def submit_step(self, slot: int, action: str) -> None:
        self._submit("step", slot, action)

    def collect(self) -> dict[int, EnvResult]:
        """Wait for every request in flight."""
        start = time.perf_counter()
        results, self._settled = self._settled, {}
        while self._pending:
            busy = {worker.conn: worker for worker in set(self._pending.values())}
            for conn in wait(list(busy)):
                self._receive(busy[conn], results)
        self.wait_seconds += time.perf_counter() - start
        return results

    def _receive(self, worker: _Worker, into: dict[int, EnvResult]) -> None:
        """One answer of `worker` into `into` (or the failure of all its slots, if it died)."""
        try:
            slot, result = worker.conn.recv()
        except (EOFError, OSError):
            into.update(self._fail_worker(worker))
            return
        into[slot] = result
        del self._pending[slot]

    def _fail_worker(self, worker: _Worker) -> dict[int, EnvResult]:
        """A worker died: its in-flight episodes fail, and a lane's worker is replaced by a fresh one."""
        worker.process.join(timeout=1)
        worker.conn.close()
        failures = {
            slot: EnvFailure(f"environment worker died (exit code {worker.process.exitcode})")
            for slot, pending in list(self._pending.items())
            if pending is worker
        }
        for slot in failures:
            del self._pending[slot]
        for slot in [slot for slot, home in self._home.items() if home is worker]:
            del self._home[slot]
        if worker in self._retired:
            self._retired.remove(worker)
        else:
            self._lanes[self._lanes.index(worker)] = self._start_worker()
        return failures

    def _stop_idle_retired(self) -> None:
        """Stop the retired workers whose every game has moved on (and that owe no answer)."""
        busy = {*self._home.values(), *self._pending.values()}
        idle = [worker for worker in self._retired if worker not in busy]
        for worker in idle:
            self._retired.remove(worker)
        _stop(idle)

    def close(self) -> None:
        _stop([*self._lanes, *self._retired])

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _stop(workers: list[_Worker]) -> None:
    for worker in workers:
        try:
            worker.conn.send(("stop", -1, ""))
        except (BrokenPipeError, OSError):
            pass
    for worker in workers:
        worker.process.join(timeout=5)
        if worker.process.is_alive():
            worker.process.kill()
        worker.conn.close()
