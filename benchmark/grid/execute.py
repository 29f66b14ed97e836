"""Execution: an executor computes the planned cells and hands back each result as it is done.

``local`` computes them one after another in this process (the default); ``ray`` makes each cell a
Ray task, on a local cluster sized to the machine or on an existing one. Either way the driver stores
every result the moment it comes back, so an interrupted run keeps every finished cell.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import traceback
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np

from benchmark.errors import BenchmarkError
from benchmark.grid.cell import CellResult, Shared, compute_cell, failed_record
from benchmark.grid.plan import CellSpec
from benchmark.grid.store import REFERENCE_METHOD

Announce = Callable[[CellSpec], None]


class Executor(Protocol):
    def run(self, cells: Sequence[CellSpec], shared: Shared, announce: Announce) -> Iterator[CellResult]:
        """Compute every cell, yielding each result as it finishes (in any order); ``announce`` a cell as it starts
        where the executor knows when that is."""
        ...


class LocalExecutor:
    """Every cell in this process, in plan order: a seed's dense cell finishes before the seed's other cells
    and hands them its samples' features."""

    def run(self, cells: Sequence[CellSpec], shared: Shared, announce: Announce) -> Iterator[CellResult]:
        features: dict[tuple[str, int], np.ndarray] = {}
        for spec in cells:
            announce(spec)
            result = compute_cell(spec, shared, features.get((spec.backbone, spec.seed)))
            if result.dense_features is not None:
                features[spec.backbone, spec.seed] = result.dense_features
            yield result


class RayExecutor:
    """One Ray task per cell, each asking for one GPU on CUDA and one CPU otherwise.

    The shared inputs (settings, dense models, reference features) go to the object store once. A
    seed's other cells wait for its dense cell, if that one is pending, and get its samples' features.
    Tasks run with ``max_retries=0``: a worker that dies (killed, out of memory, a CUDA error) fails
    its own cell with the reason instead of being retried up to Ray's default 3 times, which for a
    deterministic failure repeats the same hours; a rerun recomputes it. ``retry_exceptions`` stays
    False: a method's exception is already a failed cell inside the task.
    """

    def __init__(self, address: str | None = None):
        self.address = address

    def run(self, cells: Sequence[CellSpec], shared: Shared, announce: Announce) -> Iterator[CellResult]:
        ray = _import_ray()
        if not ray.is_initialized():
            joining = self.address is not None or "RAY_ADDRESS" in os.environ
            # a new local cluster starts without the dashboard, a process small machines lack room for
            ray.init(address=self.address, log_to_driver=False, **({} if joining else {"include_dashboard": False}))
        resources = {"num_gpus": 1} if shared.device.type == "cuda" else {"num_cpus": 1}
        task = ray.remote(max_retries=0, **resources)(compute_cell)
        scorer = copy.copy(shared.scorer)
        scorer.progress = False  # workers' progress bars would only interleave in the driver's log
        shared_ref = ray.put(dataclasses.replace(shared, scorer=scorer, progress=False))
        dense_pending = {(spec.backbone, spec.seed) for spec in cells if spec.method == REFERENCE_METHOD}
        later = [s for s in cells if s.method != REFERENCE_METHOD and (s.backbone, s.seed) in dense_pending]
        running = {task.remote(spec, shared_ref): spec for spec in cells if spec not in later}
        try:
            while running:
                [done], _ = ray.wait(list(running), num_returns=1)
                spec = running.pop(done)
                result = _result_of(ray, done, spec, shared)
                if spec.method == REFERENCE_METHOD:  # its seed's cells may start, with its features if it had any
                    for other in [s for s in later if (s.backbone, s.seed) == (spec.backbone, spec.seed)]:
                        later.remove(other)
                        running[task.remote(other, shared_ref, result.dense_features)] = other
                yield result
        finally:
            for ref in running:
                ray.cancel(ref, force=True)


def _result_of(ray, ref, spec: CellSpec, shared: Shared) -> CellResult:
    """The task's result, or a failed cell naming why its worker could not return one."""
    try:
        return ray.get(ref)
    except (ray.exceptions.RayError, OSError) as error:
        return CellResult(failed_record(spec, shared, f"{type(error).__name__}: {error}",
                                        "".join(traceback.format_exception(error))), {})


def _import_ray():
    try:
        import ray
    except ImportError:
        raise BenchmarkError('--executor ray needs Ray: pip install -e ".[ray]"') from None
    return ray


EXECUTORS = ("local", "ray")


def make_executor(name: str, address: str | None = None) -> Executor:
    """The executor ``--executor`` names; Ray is checked for here, before any work."""
    if name == "local":
        if address is not None:
            raise BenchmarkError("--ray-address needs --executor ray")
        return LocalExecutor()
    if name == "ray":
        _import_ray()
        return RayExecutor(address)
    raise BenchmarkError(f"unknown executor {name!r}; available: {', '.join(EXECUTORS)}")
