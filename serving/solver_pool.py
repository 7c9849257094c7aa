"""Itinerary solving off the event loop, in worker processes, with a bounded queue.

The solver is pure Python and numpy: in a thread it holds the GIL, and sixteen plans being
solved at once starved the recommendation route (its p99 went from 7 ms to 238 ms). So plans
are solved in `WENLV_ITINERARY_WORKERS` spawned processes (one pool per server process, made
on first use), and at most `WENLV_ITINERARY_QUEUE` more may wait; beyond that a request is
answered 503 with Retry-After at once instead of piling up.
"""
from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import os
import threading
from concurrent.futures import ProcessPoolExecutor

from wenlv.itinerary.planner import InfeasibleRequest, PlanRequest, plan
from wenlv.serving.auth import ApiError

_executors: dict[int, ProcessPoolExecutor] = {}
_executors_lock = threading.Lock()


def _solve(req: PlanRequest) -> tuple:
    """In a worker: the plan, or the infeasibility as plain values (the exception does not pickle by itself)."""
    try:
        return "plan", plan(req)
    except InfeasibleRequest as exc:
        return "infeasible", exc.code, exc.reason, exc.detail


SOLVER_NICENESS = 10  # a 7-day plan over ~5k POIs costs ~4 s of CPU: recommendations must win the cores


def _lower_priority() -> str:
    """SCHED_IDLE where Linux offers it: the solver then runs only on CPU time nothing else wants, and a waking
    server thread preempts it at once (a niced task still gets a share and may finish its slice first: with 16
    itineraries in flight recommendation p99 was 2.4x its value alone on 2 cores). Else nice 10."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return "SCHED_IDLE"
    except (AttributeError, OSError):  # not Linux, or not allowed
        os.nice(SOLVER_NICENESS)
        return f"nice {SOLVER_NICENESS}"


def _exit_with_parent() -> None:
    """Worker initializer: run at a lower CPU priority than the server (plans are seconds of CPU; a recommendation
    must not wait behind them), and leave when the server process goes, however it went (a spawned worker holds
    both ends of its call queue, so it would otherwise wait for work forever)."""
    _lower_priority()
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch():
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _warm() -> None:
    """Nothing: submitted once so that the workers have imported the planner before the first request."""


def shared_executor(workers: int) -> ProcessPoolExecutor:
    """The process's pool of `workers` solver processes (spawned: no fork of a threaded server)."""
    with _executors_lock:
        executor = _executors.get(workers)
        if executor is None:
            executor = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                           initializer=_exit_with_parent)
            _executors[workers] = executor
        return executor


def shutdown_executor(workers: int) -> None:
    """Stop the pool of `workers` at server shutdown: plans still queued are cancelled, not solved for nobody."""
    with _executors_lock:
        executor = _executors.pop(workers, None)
    if executor is not None:
        executor.shutdown(wait=False, cancel_futures=True)


class SolverPool:
    """One app's admission to the solver processes: `workers` solving, `queue` waiting, the rest refused."""

    def __init__(self, workers: int, queue: int):
        self.workers, self.queue = workers, queue
        self.in_flight = 0
        self.refused = 0

    def warm(self) -> None:
        """Start the worker processes now (server start-up), not on the first itinerary."""
        executor = shared_executor(self.workers)
        for future in [executor.submit(_warm) for _ in range(self.workers)]:
            future.result()

    def close(self) -> None:
        shutdown_executor(self.workers)

    async def solve(self, req: PlanRequest) -> dict:
        """The plan for `req` (raises InfeasibleRequest), or ApiError 503 when every slot is taken."""
        if self.in_flight >= self.workers + self.queue:
            self.refused += 1
            raise ApiError(503, "busy", f"{self.in_flight} itineraries are being planned or waiting; try again shortly "
                                        "(WENLV_ITINERARY_WORKERS, WENLV_ITINERARY_QUEUE)", {"Retry-After": "1"})
        self.in_flight += 1  # only the event loop thread counts: no lock needed
        try:
            outcome = await asyncio.get_running_loop().run_in_executor(shared_executor(self.workers), _solve, req)
        finally:
            self.in_flight -= 1
        if outcome[0] == "infeasible":
            raise InfeasibleRequest(*outcome[1:])
        return outcome[1]
