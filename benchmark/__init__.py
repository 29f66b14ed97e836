"""diffprune-bench: compare pruning methods for diffusion models on equal terms."""
import pluggy

__version__ = "0.1.0"

PROJECT = "diffprune_bench"
hookimpl = pluggy.HookimplMarker(PROJECT)
"""Decorator for plugin hook implementations: ``@hookimpl def register_methods(register): ...``."""

__all__ = ["PROJECT", "__version__", "hookimpl"]
