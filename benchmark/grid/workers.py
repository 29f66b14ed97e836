"""Worker pools: cells in spawned processes (``--jobs N``) or in Ray actors, each worker holding the shared
inputs of the run once and computing many cells.

A worker sets its own thread count before any work, registers for quiet timing
(:mod:`benchmark.grid.quiet`) and computes one cell at a time. A worker that dies fails the cell it was
computing, with the reason, and a fresh worker takes its slot.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import signal
import traceback
from contextlib import suppress
from multiprocessing import connection, get_context
from typing import Any, Iterator, Sequence

import numpy as np

from benchmark.errors import BenchmarkError
from benchmark.grid import quiet
from benchmark.grid.cell import CellResult, Shared, compute_cell, failed_record
from benchmark.grid.execute import CellQueue, Start, Ticket, choose_slot, drain
from benchmark.grid.plan import CellSpec

CLOSE_SECONDS = 10.0  # how long a closing pool waits for a worker to exit before killing it


def worker_shared(shared: Shared) -> Shared:
    """The shared inputs as workers get them: no progress bars, which would only interleave in the driver's log."""
    scorer = copy.copy(shared.scorer)
    scorer.progress = False
    return dataclasses.replace(shared, scorer=scorer, progress=False)


def threads_per_worker(jobs: int) -> int:
    """The cores of this machine split between ``jobs`` workers, at least one thread each."""
    from benchmark.grid.execute import default_jobs

    return max(1, default_jobs("cpu") // jobs)


class CellWorker:
    """The state of one worker: the shared inputs and its thread count, set before any work."""

    def __init__(self, shared: Shared, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.shared = shared
        self._registration = quiet.worker()
        self._registration.__enter__()  # for the worker's lifetime; a dead worker's entry is dropped by pid check

    def compute(self, spec: CellSpec, dense_features: np.ndarray | None) -> CellResult:
        return compute_cell(spec, self.shared, dense_features)


def serve(conn: connection.Connection, payload: bytes, threads: int) -> None:
    """A worker process: receive (spec, dense features) pairs until None, send back each cell's result.
    Ctrl-C is the driver's to handle: it stops the workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker = CellWorker(pickle.loads(payload), threads)
    while (job := conn.recv()) is not None:
        conn.send(worker.compute(*job))


class ProcessExecutor:
    """Cells in ``jobs`` spawned worker processes (not forked: forking after OpenMP threads exist can hang),
    each with ``threads`` threads (default: the machine's cores split between them)."""

    def __init__(self, jobs: int, threads: int | None = None):
        self.jobs, self.threads = jobs, threads

    def run(self, cells: Sequence[CellSpec], shared: Shared, start: Start) -> Iterator[CellResult]:
        pool = ProcessPool(self.jobs, self.threads or threads_per_worker(self.jobs), shared)
        yield from drain(CellQueue(cells, start), pool)


@dataclasses.dataclass
class _Slot:
    process: Any
    conn: connection.Connection
    spec: CellSpec | None = None
    group: Any = None  # the work group of the last cell it computed (its process keeps that group's search)


class ProcessPool:
    def __init__(self, jobs: int, threads: int, shared: Shared):
        self._context, self._threads, self._shared = get_context("spawn"), threads, shared
        try:
            self._payload = pickle.dumps(worker_shared(shared))
        except (pickle.PicklingError, TypeError, AttributeError) as e:
            raise BenchmarkError(f"cannot hand this run's plugins to worker processes ({e}); use --jobs 1") from e
        self._slots = [self._spawn() for _ in range(jobs)]

    def _spawn(self) -> _Slot:
        mine, theirs = self._context.Pipe()
        process = self._context.Process(target=serve, args=(theirs, self._payload, self._threads), daemon=True,
                                        name="diffprune-bench worker")
        process.start()
        theirs.close()
        return _Slot(process, mine)

    def idle(self) -> int:
        return sum(slot.spec is None for slot in self._slots)

    def busy(self) -> bool:
        return any(slot.spec is not None for slot in self._slots)

    def submit(self, ticket: Ticket) -> None:
        free = [i for i, slot in enumerate(self._slots) if slot.spec is None]
        slot = self._slots[choose_slot(free, [s.group for s in self._slots], ticket.spec.work_group)]
        slot.conn.send((ticket.spec, ticket.dense_features))
        slot.spec, slot.group = ticket.spec, ticket.spec.work_group

    def wait(self) -> list[tuple[CellSpec, CellResult]]:
        busy = [slot for slot in self._slots if slot.spec is not None]
        ready = set(connection.wait([s.conn for s in busy] + [s.process.sentinel for s in busy]))
        finished = []
        for i, slot in enumerate(self._slots):
            if slot.spec is None or not {slot.conn, slot.process.sentinel} & ready:
                continue
            try:
                result = slot.conn.recv()
            except (EOFError, OSError):  # it died before sending a result
                result = self._died(slot)
                self._slots[i] = self._spawn()
            finished.append((slot.spec, result))
            slot.spec = None
        return finished

    def _died(self, slot: _Slot) -> CellResult:
        slot.process.join(CLOSE_SECONDS)
        code = slot.process.exitcode
        how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        for other in self._slots:  # it may have died while it held the others paused for a timing
            with suppress(ProcessLookupError, ValueError):
                if other.process.pid is not None:
                    os.kill(other.process.pid, signal.SIGCONT)
        error = f"WorkerDied: the worker process computing this cell ended ({how})"
        return CellResult(failed_record(slot.spec, self._shared, error, error + "\n"), {})

    def close(self) -> None:
        for slot in self._slots:
            with suppress(OSError):
                if slot.spec is None:
                    slot.conn.send(None)
                else:
                    slot.process.terminate()
        for slot in self._slots:
            slot.process.join(CLOSE_SECONDS)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join()
            slot.conn.close()


class RayPool:
    """One actor per slot; the shared inputs are put in the object store once and handed to each actor.

    On CPU each actor reserves, and runs as many threads as, its share of the cluster's CPUs (at most one
    node's); on CUDA one GPU and its node's CPUs split between the slots."""

    def __init__(self, ray: Any, jobs: int, shared: Shared):
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")] or [ray.cluster_resources()]
        largest = max(int(node.get("CPU", 1)) for node in nodes)
        cpus = max(1, min(largest, int(ray.cluster_resources().get("CPU", 1)) // jobs))
        resources = {"num_gpus": 1} if shared.device.type == "cuda" else {"num_cpus": cpus}
        self._ray, self._shared, self._threads = ray, shared, cpus
        self._actor = ray.remote(max_restarts=0, max_task_retries=0, **resources)(CellWorker)
        self._shared_ref = ray.put(worker_shared(shared))
        self._slots: list[list[Any]] = [[self._new_actor(), None] for _ in range(jobs)]  # [actor, running ref]
        self._groups: list[Any] = [None] * jobs  # each slot's last work group (its actor keeps that search)
        self._running: dict[Any, tuple[int, CellSpec]] = {}

    def _new_actor(self) -> Any:
        return self._actor.remote(self._shared_ref, self._threads)

    def idle(self) -> int:
        return sum(ref is None for _, ref in self._slots)

    def busy(self) -> bool:
        return bool(self._running)

    def submit(self, ticket: Ticket) -> None:
        i = choose_slot([i for i, (_, ref) in enumerate(self._slots) if ref is None], self._groups,
                        ticket.spec.work_group)
        ref = self._slots[i][0].compute.remote(ticket.spec, ticket.dense_features)
        self._slots[i][1], self._running[ref] = ref, (i, ticket.spec)
        self._groups[i] = ticket.spec.work_group

    def wait(self) -> list[tuple[CellSpec, CellResult]]:
        ray = self._ray
        done, _ = ray.wait(list(self._running), num_returns=1)
        finished = []
        for ref in done:
            i, spec = self._running.pop(ref)
            self._slots[i][1] = None
            try:
                result = ray.get(ref)
            except (ray.exceptions.RayError, OSError) as error:
                result = CellResult(failed_record(spec, self._shared, f"{type(error).__name__}: {error}",
                                                  "".join(traceback.format_exception(error))), {})
                self._slots[i][0], self._groups[i] = self._new_actor(), None
            finished.append((spec, result))
        return finished

    def close(self) -> None:
        for ref in self._running:
            with suppress(Exception):
                self._ray.cancel(ref, force=True)
        for actor, _ in self._slots:
            with suppress(Exception):
                self._ray.kill(actor)
