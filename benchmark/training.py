"""The one training loop every weight-training method uses, so all of them see the same data and noise."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from benchmark.api import BenchmarkError, MethodContext

GRAD_CLIP_NORM = 1.0

ExtraLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainingStream:
    """The batches and the timestep/noise generator of one training budget.

    Successive ``train`` calls that share a stream (a method trained in stages) see exactly the inputs
    one uninterrupted call would, so every method sees the same data at its step k.
    """

    batches: Iterator[torch.Tensor]
    generator: torch.Generator

    @classmethod
    def start(cls, ctx: MethodContext) -> "TrainingStream":
        return cls(ctx.batches(), torch.Generator().manual_seed(ctx.seed))


def train(
    model: nn.Module,
    ctx: MethodContext,
    steps: int,
    *,
    extra_loss: ExtraLoss | None = None,
    before_step: Callable[[int], None] | None = None,
    after_step: Callable[[int], None] | None = None,
    desc: str = "train",
    stream: TrainingStream | None = None,
) -> list[float]:
    """Train ``model``'s trainable parameters for ``steps`` AdamW steps on the noise-prediction loss.

    Batches come from ``ctx.batches()`` and timesteps/noise from a generator seeded with ``ctx.seed``,
    so two calls with the same context see identical inputs; pass one ``stream`` to several calls to
    continue where the previous call stopped. ``extra_loss(model, x_t, t, noise, pred)``
    is added to the MSE; ``before_step(step)`` runs before the forward pass and ``after_step(step)``
    after ``optimizer.step()`` (``step`` counts from 0). Returns the total loss of every step. The
    model's train/eval mode is restored afterwards.
    """
    if steps <= 0:
        raise BenchmarkError(f"training needs a positive number of steps, got {steps}")
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=ctx.preset.lr, weight_decay=0.0)
    stream = stream or TrainingStream.start(ctx)
    losses: list[float] = []
    was_training = model.training
    model.train()
    try:
        with tqdm(range(steps), desc=desc, disable=not ctx.progress) as bar:
            for step in bar:
                if before_step is not None:
                    before_step(step)
                x0 = next(stream.batches).to(ctx.device)
                x_t, t, noise = ctx.diffusion.training_inputs(x0, stream.generator)
                pred = model(x_t, t)
                loss = F.mse_loss(pred, noise)
                if extra_loss is not None:
                    loss = loss + extra_loss(model, x_t, t, noise, pred)
                value = loss.item()
                if not math.isfinite(value):
                    raise NonFiniteLossError(f"{desc}: loss became {value} at step {step + 1} of {steps}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(parameters, GRAD_CLIP_NORM)
                optimizer.step()
                if after_step is not None:
                    after_step(step)
                losses.append(value)
                bar.set_postfix(loss=f"{value:.4f}", refresh=False)
    finally:
        model.train(was_training)
    return losses
