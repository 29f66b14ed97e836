"""The text condition of a text-to-image backbone, passed beside ``model(x, t)`` rather than through it.

The shared training loop and sampler encode a batch's prompts once and make them current with
:func:`given`; a conditional network reads :func:`current` in its forward (None: its empty prompt).
Every call inside the block sees the same condition, a method's teacher included, so no method has to
know about text; unconditional backbones never read it.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import torch

_CONTEXT: ContextVar[torch.Tensor | None] = ContextVar("diffprune_bench_context", default=None)

EMPTY_PROMPT = -1
"""The label of the empty prompt: the unconditional branch of guidance and the dropped condition in training."""


@contextmanager
def given(context: torch.Tensor | None) -> Iterator[None]:
    """Make ``context`` (``[B, tokens, dims]``, one row per image of the batch) current inside the block."""
    token = _CONTEXT.set(context)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def current() -> torch.Tensor | None:
    """The context made current by the innermost :func:`given`, or None."""
    return _CONTEXT.get()


def drop_labels(labels: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """``labels`` with a ``rate`` share (drawn from the CPU ``generator``) replaced by :data:`EMPTY_PROMPT`:
    the condition dropout that trains the unconditional branch of classifier-free guidance."""
    if rate <= 0:
        return labels
    dropped = torch.rand(labels.shape, generator=generator) < rate
    return torch.where(dropped.to(labels.device), torch.full_like(labels, EMPTY_PROMPT), labels)


def sample_labels(start: int, count: int, classes: int) -> torch.Tensor:
    """The prompts of samples ``start .. start + count - 1``: sample ``i`` gets prompt ``i % classes``, so
    every prompt is drawn equally often and every cell of a seed is told the same."""
    return torch.arange(start, start + count) % classes
