"""Environment worker processes: ALFWorld games are reset and stepped as a batch, in parallel.

A reset costs 1–3 s of CPU (PDDL translation) and a step ~50 ms, so games live in worker processes:
the rollout submits resets and steps for many episodes, keeps generating with the model meanwhile,
then collects. Each episode slot is pinned to one worker (its game object lives there). A game that
raises, or a worker that dies, turns into an `EnvFailure` for the episodes concerned; the rest of
the batch goes on and a dead worker is replaced.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
from multiprocessing.connection import Connection, wait

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


class EnvPool:
    """`num_workers` processes hosting the games of many episode slots.

    Usage: `submit_reset` / `submit_step` for any slots, then `collect()` waits for every submitted
    request and returns {slot: EnvStep | EnvFailure}. Time spent waiting is added to `wait_seconds`.
    With `expert` set every EnvStep carries that expert's next command (see `AlfWorldGame`); `memory` makes a
    searching expert read the episode's memory line, as prompts show it when `env.memory` is on.
    """

    def __init__(self, num_workers: int, alfworld_data: str, expert: str | None = None, memory: bool = False) -> None:
        self._ctx = mp.get_context("spawn")
        self._alfworld_data = alfworld_data
        self._expert = expert
        self._memory = memory
        self._workers: list[tuple[mp.process.BaseProcess, Connection]] = [
            self._start_worker() for _ in range(num_workers)
        ]
        self._pending: dict[int, int] = {}  # slot -> worker index
        self._settled: dict[int, EnvResult] = {}  # answered before collect(): failed submits, drained answers
        self.wait_seconds = 0.0

    def _start_worker(self) -> tuple[mp.process.BaseProcess, Connection]:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_worker_main, args=(child, self._alfworld_data, self._expert, self._memory), daemon=True
        )
        _start_ignoring_sigint(process)
        child.close()
        return process, parent

    def _submit(self, op: str, slot: int, arg: str) -> None:
        if slot in self._pending or slot in self._settled:
            raise RuntimeError(f"slot {slot} already has a request in flight")
        index = slot % len(self._workers)
        while sum(worker == index for worker in self._pending.values()) >= MAX_IN_FLIGHT:
            self._receive(index, self._settled)
        try:
            self._workers[index][1].send((op, slot, arg))
        except (BrokenPipeError, OSError):  # the worker died since its last answer
            self._settled.update(self._fail_worker(index))
            self._settled[slot] = EnvFailure("environment worker died; its games were lost")
            return
        self._pending[slot] = index

    def submit_reset(self, slot: int, gamefile: str) -> None:
        self._submit("reset", slot, gamefile)

    def submit_step(self, slot: int, action: str) -> None:
        self._submit("step", slot, action)

    def collect(self) -> dict[int, EnvResult]:
        """Wait for every request in flight."""
        start = time.perf_counter()
        results, self._settled = self._settled, {}
        while self._pending:
            busy = {self._workers[i][1]: i for i in set(self._pending.values())}
            for conn in wait(list(busy)):
                self._receive(busy[conn], results)
        self.wait_seconds += time.perf_counter() - start
        return results

    def _receive(self, index: int, into: dict[int, EnvResult]) -> None:
        """One answer of worker `index` into `into` (or the failure of all its slots, if it died)."""
        try:
            slot, result = self._workers[index][1].recv()
        except (EOFError, OSError):
            into.update(self._fail_worker(index))
            return
        into[slot] = result
        del self._pending[slot]

    def _fail_worker(self, index: int) -> dict[int, EnvResult]:
        """A worker died: its in-flight episodes fail, and a fresh worker takes its place."""
        process, conn = self._workers[index]
        process.join(timeout=1)
        conn.close()
        failures = {
            slot: EnvFailure(f"environment worker died (exit code {process.exitcode})")
            for slot, worker in list(self._pending.items())
            if worker == index
        }
        for slot in failures:
            del self._pending[slot]
        self._workers[index] = self._start_worker()
        return failures

    def close(self) -> None:
        for _process, conn in self._workers:
            try:
                conn.send(("stop", -1, ""))
            except (BrokenPipeError, OSError):
                pass
        for process, conn in self._workers:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
            conn.close()

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
