"""Execution: an executor computes the planned cells and hands back each result as it is done.

``local`` computes them in this process (``--jobs 1``) or in ``--jobs N`` spawned worker processes
(:mod:`benchmark.grid.workers`); ``ray`` in one long-lived Ray actor per worker slot, on a local cluster
sized to the machine or on an existing one. Every executor asks the driver to ``start`` a cell just
before computing it (the driver claims it then, so invocations sharing a run directory split the grid)
and the driver stores every result the moment it comes back, so an interrupted run keeps every
finished cell.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np

from benchmark.errors import BenchmarkError
from benchmark.grid import quiet
from benchmark.grid.cell import CellResult, Shared, compute_cell
from benchmark.grid.plan import CellSpec
from benchmark.grid.store import REFERENCE_METHOD


@dataclasses.dataclass(frozen=True)
class Ticket:
    """A cell the driver has claimed for an executor to compute, with the FID features of its seed's dense
    samples where they are known already."""

    spec: CellSpec
    dense_features: np.ndarray | None = None


Start = Callable[[CellSpec], "Ticket | None"]  # None: not to be computed here (complete, or claimed elsewhere)


class Executor(Protocol):
    def run(self, cells: Sequence[CellSpec], shared: Shared, start: Start) -> Iterator[CellResult]:
        """Compute the cells that ``start`` hands out, yielding each result as it finishes (in any order)."""
        ...


class CellQueue:
    """The cells still to start, in plan order. A cell waits while its seed's dense cell is still to compute
    or computing here, so that it gets that cell's sample features instead of drawing the samples again, and
    while a cell of its work group computes, so that the worker which keeps that group's work runs it next
    (:func:`choose_slot`). A group that has begun goes on before any other cell, while a worker still keeps
    its work."""

    def __init__(self, cells: Sequence[CellSpec], start: Start):
        self._todo, self._start = list(cells), start
        self._dense_open = {(s.backbone, s.seed) for s in cells if s.method == REFERENCE_METHOD}
        self._groups_running: set[tuple[Any, ...]] = set()
        self._groups_begun: set[tuple[Any, ...]] = set()

    def __bool__(self) -> bool:
        return bool(self._todo)

    def next(self) -> Ticket | None:
        """The next cell that may start now, started; None when no cell can start before a running one ends."""
        begun = [spec for spec in self._todo if spec.work_group in self._groups_begun]
        for spec in begun + [spec for spec in self._todo if spec.work_group not in self._groups_begun]:
            if spec.method != REFERENCE_METHOD and (spec.backbone, spec.seed) in self._dense_open:
                continue
            if spec.work_group is not None and spec.work_group in self._groups_running:
                continue
            self._todo.remove(spec)
            ticket = self._start(spec)
            if ticket is not None:
                if spec.work_group is not None:
                    self._groups_running.add(spec.work_group)
                    self._groups_begun.add(spec.work_group)
                return ticket
            self.done(spec)
        return None

    def done(self, spec: CellSpec) -> None:
        if spec.method == REFERENCE_METHOD:
            self._dense_open.discard((spec.backbone, spec.seed))
        self._groups_running.discard(spec.work_group)


def choose_slot(free: Sequence[int], last_groups: Sequence[Any], group: Any) -> int:
    """Of the ``free`` slot indices, the one whose last cell had work group ``group`` (it keeps that group's
    search), else the first free one."""
    if group is not None:
        for i in free:
            if last_groups[i] == group:
                return i
    return free[0]


class Pool(Protocol):
    """Worker slots that compute one cell at a time each."""

    def idle(self) -> int:
        """How many slots can take a cell now."""
        ...

    def submit(self, ticket: Ticket) -> None: ...

    def busy(self) -> bool: ...

    def wait(self) -> list[tuple[CellSpec, CellResult]]:
        """Block until at least one slot finishes; the cells that finished (a dead worker's as failed)."""
        ...

    def close(self) -> None: ...


def drain(queue: CellQueue, pool: Pool) -> Iterator[CellResult]:
    """Keep every slot of ``pool`` busy with the queue's next cell; yield results as they arrive."""
    try:
        while True:
            for _ in range(pool.idle()):
                ticket = queue.next()
                if ticket is None:
                    break
                pool.submit(ticket)
            if not pool.busy():  # the queue is empty: a cell only waits for a dense cell that is running
                return
            for spec, result in pool.wait():
                queue.done(spec)
                yield result
    finally:
        pool.close()


class LocalExecutor:
    """Every cell in this process, in plan order (``--jobs 1``); a seed's dense cell finishes before the seed's
    other cells, which get its samples' features."""

    def run(self, cells: Sequence[CellSpec], shared: Shared, start: Start) -> Iterator[CellResult]:
        queue = CellQueue(cells, start)
        with quiet.worker():
            while (ticket := queue.next()) is not None:
                result = compute_cell(ticket.spec, shared, ticket.dense_features)
                queue.done(ticket.spec)
                yield result


class RayExecutor:
    """One long-lived Ray actor per worker slot (``jobs``, default: the cluster's CPUs, or GPUs on CUDA), each
    holding the shared inputs (settings, dense models, FID network, reference features), which go to the
    object store once; threads are set inside each actor.

    Actors are not restarted and their calls not retried: a worker that dies (killed, out of memory, a
    CUDA error) fails its own cell with the reason, and a new actor takes its slot; a rerun recomputes
    the cell. A method's exception is already a failed cell inside the actor.
    """

    def __init__(self, address: str | None = None, jobs: int | None = None):
        self.address, self.jobs = address, jobs

    def run(self, cells: Sequence[CellSpec], shared: Shared, start: Start) -> Iterator[CellResult]:
        from benchmark.grid.workers import RayPool

        ray = _import_ray()
        if not ray.is_initialized():
            if self.address is not None or "RAY_ADDRESS" in os.environ:
                ray.init(address=self.address, log_to_driver=False)
            else:
                start_local_ray(ray)
        kind = "GPU" if shared.device.type == "cuda" else "CPU"
        jobs = self.jobs or max(1, int(ray.cluster_resources().get(kind, 1)))
        yield from drain(CellQueue(cells, start), RayPool(ray, jobs, shared))


RAY_WORKER_NICENESS = "RAY_worker_niceness"


def start_local_ray(ray, **kwargs: Any) -> None:
    """Start a local Ray cluster for this run: without the dashboard (a process small machines lack room for)
    and with its workers at this process's priority. Ray starts workers at niceness 15 unless
    ``RAY_worker_niceness`` says otherwise; beside any other busy process they then get a few percent of a
    core (``results/speed/executors_loaded.out``: over 17 minutes for a 37-second grid)."""
    given = os.environ.get(RAY_WORKER_NICENESS)
    os.environ[RAY_WORKER_NICENESS] = given if given is not None else str(os.nice(0))
    try:
        ray.init(include_dashboard=False, log_to_driver=False, **kwargs)
    finally:
        if given is None:
            del os.environ[RAY_WORKER_NICENESS]


def _import_ray():
    try:
        import ray
    except ImportError:
        raise BenchmarkError('--executor ray needs Ray: pip install -e ".[ray]"') from None
    return ray


EXECUTORS = ("local", "ray")


def default_jobs(device: str) -> int:
    """Worker processes ``--jobs`` defaults to: one per usable core on CPU (one thread each: on the 2-core
    machine of ``results/speed`` the fastest setting), one on CUDA (one GPU)."""
    if device == "cuda":
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def make_executor(name: str, address: str | None = None, jobs: int | None = None, device: str = "cpu") -> Executor:
    """The executor ``--executor`` and ``--jobs`` name; Ray is checked for here, before any work."""
    if jobs is not None and jobs < 1:
        raise BenchmarkError(f"--jobs {jobs} is not possible: use 1 or more worker processes")
    if name == "local":
        from benchmark.grid.workers import ProcessExecutor

        if address is not None:
            raise BenchmarkError("--ray-address needs --executor ray")
        jobs = jobs or default_jobs(device)
        return LocalExecutor() if jobs == 1 else ProcessExecutor(jobs)
    if name == "ray":
        _import_ray()
        return RayExecutor(address, jobs)
    raise BenchmarkError(f"unknown executor {name!r}; available: {', '.join(EXECUTORS)}")
