"""DiP-GO (Zhu et al., NeurIPS 2024): learn which blocks may reuse their output from the previous step.

A small pruner network gives every (sampling step, block) pair a keep-probability. It is trained for a
few steps with the backbone frozen: the gated sampler (straight-through hard gates) should match the
full sampler while its trajectory MACs stay at ``options.dipgo_target`` (an absolute-deviation penalty
whose weight grows while over budget and shrinks while under). The probabilities are then thresholded
into a static skip schedule that meets the MACs target. Adapted from the SD-1.5 code
(haoweiz23/dip-go) to this benchmark's blocks; step 0 always runs. As there, gates cascade: an
output-side block that reuses its cache takes every deeper block with it (:func:`cascade`), so the
search space holds DeepCache-style schedules, ``uniform-skip`` among them. On a backbone whose
time step enters only through the first block (U-ViT), input-side blocks cascade too.
"""
from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from benchmark import hookimpl
from benchmark.api import Method, MethodContext, Pruned
from benchmark.skipping import BlockGates, block_costs, cascade, kept_macs_ratio

PRUNER_STEPS = 60
PRUNER_BATCH = 4  # starting noises per pruner step
NOISE_SETS = 4  # fixed noise batches, cycled; their full-sampler outputs are computed once
PRUNER_LR = 1e-3
SPARSITY_WEIGHT = 0.05  # initial weight; grows while the trajectory is over budget and shrinks while under
WEIGHT_FACTOR = 1.05  # a slow ramp: faster ones flip many gates at once and learn a worse order
HIDDEN = 64
HEADS = 4
KEEP_LOGIT = 0.5  # initial logit margin of "keep" over "reuse": every block starts kept (p = 0.62)
OVERSHOOT = 0.02  # the static schedule may exceed the target MACs ratio by this fraction of it


class PrunerNet(nn.Module):
    """Learnable queries, one self-attention encoder layer, then a 2-way (reuse, keep) head per query."""

    def __init__(self, steps: int, n_blocks: int, hidden: int = HIDDEN):
        super().__init__()
        self.shape = (steps - 1, n_blocks)
        n_queries = (steps - 1) * n_blocks
        self.queries = nn.Parameter(torch.randn(n_queries, hidden))
        self.encoder = nn.TransformerEncoderLayer(
            hidden, HEADS, dim_feedforward=2 * hidden, dropout=0.0, batch_first=True, norm_first=True
        )
        self.norm = nn.LayerNorm(hidden)
        self.head_weight = nn.Parameter(torch.randn(n_queries, hidden, 2) * 0.02)
        self.head_bias = nn.Parameter(torch.tensor([0.0, KEEP_LOGIT]).repeat(n_queries, 1))

    def forward(self) -> torch.Tensor:
        """Keep-probabilities ``[steps - 1, n_blocks]`` for sampling steps 1 onwards."""
        hidden = self.norm(self.encoder(self.queries.unsqueeze(0)).squeeze(0))
        logits = torch.einsum("qh,qhc->qc", hidden, self.head_weight) + self.head_bias
        return logits.softmax(dim=-1)[:, 1].view(self.shape)


def straight_through(keep_prob: torch.Tensor) -> torch.Tensor:
    """Hard 0/1 gates in the forward pass, the probabilities' gradient in the backward pass."""
    hard = (keep_prob > 0.5).to(keep_prob.dtype)
    return hard + keep_prob - keep_prob.detach()


def with_first_step(keep: torch.Tensor) -> torch.Tensor:
    """Prepend the always-kept step 0 to a ``[steps - 1, n_blocks]`` keep tensor."""
    return torch.cat([torch.ones_like(keep[:1]), keep])


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients inside; the previous state is restored on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    model.eval().requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        model.train(was_training)


def train_pruner(
    ctx: MethodContext,
    model: nn.Module,
    blocks: list[tuple[str, nn.Module]],
    block_macs: torch.Tensor,
    total: float,
    both_sides: bool = False,
    u_shaped: bool = True,
) -> tuple[PrunerNet, dict[str, list[float]]]:
    """Optimise a :class:`PrunerNet` for ``model``; returns it with its loss history.

    ``both_sides`` and ``u_shaped`` are :func:`cascade`'s.
    """
    steps, target = ctx.diffusion.sample_steps, ctx.options.dipgo_target
    generator = torch.Generator().manual_seed(ctx.seed)
    noises = [
        torch.randn((PRUNER_BATCH, *ctx.diffusion.image_shape), generator=generator).to(ctx.device)
        for _ in range(NOISE_SETS)
    ]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        pruner = PrunerNet(steps, len(blocks)).to(ctx.device)
    optimizer = torch.optim.Adam(pruner.parameters(), lr=PRUNER_LR)
    weight = SPARSITY_WEIGHT
    history: dict[str, list[float]] = {"consistency": [], "sparsity": [], "sparsity_weight": [], "kept_macs_ratio": []}
    with frozen(model):
        with torch.no_grad():
            references = [ctx.diffusion.denoise(model, x_T) for x_T in noises]
        with BlockGates(blocks) as gates:
            for step in tqdm(range(PRUNER_STEPS), desc="dipgo", disable=not ctx.progress):
                rows = cascade(with_first_step(straight_through(pruner())), both_sides, u_shaped)
                out = ctx.diffusion.denoise(
                    model, noises[step % NOISE_SETS], lambda i: gates.set_step(i, list(rows[i].unbind()))
                )
                consistency = F.mse_loss(out, references[step % NOISE_SETS])
                ratio = kept_macs_ratio(rows, block_macs, total)
                sparsity = (ratio - target).abs()
                optimizer.zero_grad()
                (consistency + weight * sparsity).backward()
                optimizer.step()
                history["consistency"].append(consistency.item())
                history["sparsity"].append(sparsity.item())
                history["sparsity_weight"].append(weight)
                history["kept_macs_ratio"].append(ratio.item())
                weight *= WEIGHT_FACTOR if ratio.item() > target else 1 / WEIGHT_FACTOR
    return pruner, history


def threshold_schedule(
    keep_prob: torch.Tensor, block_macs: torch.Tensor, total: float, target: float, both_sides: bool = False,
    u_shaped: bool = True,
) -> tuple[torch.Tensor, float]:
    """Reuse (step, block) pairs, least needed first and cascaded, until the MACs ratio meets ``target``.

    A pair is passed over when reusing it (with its cascade) would take the trajectory MACs ratio
    below the target by more than ``OVERSHOOT`` of it; the walk stops once the ratio is within
    ``OVERSHOOT`` above; ``both_sides`` is :func:`cascade`'s. Returns the bool schedule
    ``[steps, n_blocks]`` and ``tau``, the largest keep-probability reused (0 when nothing is).
    """
    flat = keep_prob.detach().flatten().cpu()

    def schedule_of(keep: torch.Tensor) -> tuple[torch.Tensor, float]:
        schedule = cascade(with_first_step(keep.view(keep_prob.shape)), both_sides, u_shaped)
        return schedule, float(kept_macs_ratio(schedule, block_macs, total))

    keep = torch.ones(len(flat), dtype=torch.bool)
    schedule, ratio = schedule_of(keep)
    tau = 0.0
    for index in torch.argsort(flat, stable=True).tolist():
        if ratio <= target * (1 + OVERSHOOT):
            break
        trial = keep.clone()
        trial[index] = False
        trial_schedule, trial_ratio = schedule_of(trial)
        if trial_ratio >= target * (1 - OVERSHOOT):
            keep, schedule, ratio, tau = trial, trial_schedule, trial_ratio, float(flat[index])
    return schedule, tau


class DiPGO(Method):
    name = "dipgo"
    version = "3"
    description = "DiP-GO: a learned per-step block-reuse schedule (few-step gradient search), MACs target"
    knob = "dipgo_target"

    def apply(self, ctx: MethodContext, state: Pruned) -> Pruned:
        blocks = ctx.backbone.blocks(state.model)
        block_macs, total = block_costs(ctx, state.model, [name for name, _ in blocks])
        started = time.perf_counter()
        both_sides = not ctx.backbone.time_enters_every_block
        u_shaped = ctx.backbone.u_shaped
        pruner, history = train_pruner(ctx, state.model, blocks, block_macs, total, both_sides, u_shaped)
        with torch.no_grad():
            keep_prob = pruner().cpu()
        schedule, tau = threshold_schedule(
            keep_prob, block_macs, total, ctx.options.dipgo_target, both_sides, u_shaped
        )
        info = {
            "pruner_steps": PRUNER_STEPS,
            "pruner_batch": PRUNER_BATCH,
            "pruner_lr": PRUNER_LR,
            "pruner_seconds": time.perf_counter() - started,
            "target": ctx.options.dipgo_target,
            "tau": tau,
            "kept_macs_ratio": float(kept_macs_ratio(schedule, block_macs, total)),
            "blocks": [name for name, _ in blocks],
            "schedule": schedule.tolist(),
            "keep_prob": [[round(p, 4) for p in row] for row in keep_prob.tolist()],
            "loss_history": history,
        }
        return dataclasses.replace(state, schedule=schedule, info={**state.info, **info})


@hookimpl
def register_methods(register):
    register(DiPGO())
