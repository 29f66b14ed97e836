"""The errors the suite raises for its users; every module may import them without importing anything else."""
from __future__ import annotations


class BenchmarkError(Exception):
    """An error caused by the user's input; the CLI prints it as one line and exits with 2."""


class PluginContractError(BenchmarkError):
    """A plugin registered an object that does not satisfy the contract in :mod:`benchmark.api`."""


class CheckpointMismatchError(BenchmarkError):
    """A checkpoint does not fit the backbone's architecture (lists missing/unexpected keys)."""
