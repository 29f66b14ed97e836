"""Execution: an executor takes the planned cells and hands back each result as it is done.

``local`` computes them one after another in this process (the default). The driver stores every
result the moment it comes back, so an interrupted run keeps every finished cell.
"""
from __future__ import annotations

from typing import Callable, Iterator, Protocol, Sequence

from benchmark.grid.cell import CellResult
from benchmark.grid.plan import CellSpec


class Executor(Protocol):
    def run(self, cells: Sequence[CellSpec], compute: Callable[[CellSpec], CellResult]) -> Iterator[CellResult]:
        """Compute every cell with ``compute``, yielding each result as it finishes (in any order)."""
        ...


class LocalExecutor:
    """Every cell in this process, in plan order: a seed's dense cell finishes before the seed's other cells."""

    def run(self, cells: Sequence[CellSpec], compute: Callable[[CellSpec], CellResult]) -> Iterator[CellResult]:
        for spec in cells:
            yield compute(spec)


EXECUTORS: dict[str, Callable[[], Executor]] = {"local": LocalExecutor}
