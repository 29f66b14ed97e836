"""DiP-GO (Zhu et al., NeurIPS 2024): learn which blocks may reuse their output from the previous sampling step.

As the official code (haoweiz23/dip-go, ``train_sd15.py`` with ``UNetHelper``) trains it: one gate per
(sampling step, block), each from a learnable 512-dim query through its own MLP 512 -> 128 -> 128 -> 2
whose last layer starts at zero with bias (reuse 0, keep 1), so every gate starts kept with probability
sigmoid(1) = 0.731; hard straight-through gates. With the backbone frozen, SGD (lr 0.1 x 2 for the gradient
accumulation of 2, weight decay 1e-4, cosine with 10 warm-up steps, clip 1.0) minimises 1 - SSIM between the
images of the full and the gated sampling trajectory (gradients through the whole gated trajectory) plus the
kept MACs share of the blocks, the latter dropped while that share is below 0.2: no target during training.
The requested MACs ratio is imposed afterwards by the official block-major threshold walk
(:func:`block_major_walk`), which keeps strictly more than the target.

Where this differs from the release: gates cascade by :func:`benchmark.skipping.cascade` (a block runs only
where its output is used), the rule the release intends (its ``topology.pkl`` names sub-blocks its cost table
lacks, so its cascade raises KeyError whenever an up block is reused); the release's encoder layer returns its
input unchanged, so it is left out; unconditional backbones have no prompts, so each micro-step draws new
noise where the release draws a new prompt with fixed noise; the pruner trains in fp32.
"""
from __future__ import annotations

import dataclasses
import math
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from diffusers.optimization import get_cosine_schedule_with_warmup
from torch import nn
from tqdm.auto import tqdm

from benchmark import hookimpl
from benchmark.api import Method, MethodContext, Pruned
from benchmark.skipping import BlockGates, block_costs, cascade, kept_macs_ratio
from benchmark.sparsity import tensors_digest

QUERY_DIM = 512
HIDDEN = QUERY_DIM // 4
BASE_LR = 0.1
GRAD_ACCUMULATION = 2
LR = BASE_LR * GRAD_ACCUMULATION  # the release scales its base lr by accumulation x batch (1)
WEIGHT_DECAY = 1e-4
WARMUP_STEPS = 10
GRAD_CLIP = 1.0
STOP_SPARSITY_BELOW = 0.2  # the sparsity term is dropped while the kept block share is below this
FIRST_THRESHOLD, THRESHOLD_STEP = 0.95, 0.05


class PrunerNet(nn.Module):
    """A learnable query and a 3-layer MLP per (step, block); :meth:`forward` gives ``[steps, n_blocks, 2]``
    logits over (reuse, keep). The MLPs are batched: layer ``k`` of every head is one ``[Q, in, out]`` tensor."""

    def __init__(self, steps: int, n_blocks: int):
        super().__init__()
        self.shape = (steps, n_blocks)
        queries = steps * n_blocks
        self.queries = nn.Parameter(torch.randn(queries, QUERY_DIM))
        self.w1, self.b1 = _linear(queries, QUERY_DIM, HIDDEN)
        self.w2, self.b2 = _linear(queries, HIDDEN, HIDDEN)
        self.w3 = nn.Parameter(torch.zeros(queries, HIDDEN, 2))
        self.b3 = nn.Parameter(torch.tensor([0.0, 1.0]).repeat(queries, 1))

    def forward(self) -> torch.Tensor:
        h = F.relu(torch.einsum("qi,qio->qo", self.queries, self.w1) + self.b1)
        h = F.relu(torch.einsum("qi,qio->qo", h, self.w2) + self.b2)
        return (torch.einsum("qi,qio->qo", h, self.w3) + self.b3).view(*self.shape, 2)


def _linear(heads: int, fan_in: int, fan_out: int) -> tuple[nn.Parameter, nn.Parameter]:
    """``heads`` weight and bias pairs initialised as ``nn.Linear`` initialises one: U(+-1/sqrt(fan_in))."""
    bound = 1 / math.sqrt(fan_in)
    weight = torch.empty(heads, fan_in, fan_out).uniform_(-bound, bound)
    bias = torch.empty(heads, fan_out).uniform_(-bound, bound)
    return nn.Parameter(weight), nn.Parameter(bias)


def keep_gates(logits: torch.Tensor) -> torch.Tensor:
    """Straight-through keep gates: the argmax's one-hot forward, the softmax's gradient backward."""
    soft = logits.softmax(-1)
    hard = F.one_hot(soft.argmax(-1), 2).to(soft.dtype)
    return (hard - soft.detach() + soft)[..., 1]


def reuse_probability(logits: torch.Tensor) -> torch.Tensor:
    return logits.softmax(-1)[..., 0]


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean SSIM as the release computes it: 11x11 Gaussian window (sigma 1.5) per channel with zero padding,
    C1 = 0.01^2 and C2 = 0.03^2 on the images' own range. (Library SSIMs pad otherwise, which on 16x16
    images changes most of the map.)"""
    size, sigma = 11, 1.5
    coords = torch.arange(size, dtype=x.dtype, device=x.device) - size // 2
    g = torch.exp(-coords**2 / (2 * sigma**2))
    g = g / g.sum()
    channels = x.shape[1]
    window = (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, window, padding=size // 2, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y, cov = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2, blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    return (((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))).mean()


def kept_block_share(keep: torch.Tensor, block_macs: torch.Tensor, total: float) -> torch.Tensor:
    """The blocks' kept MACs as a share of the whole model's, averaged over the steps (the release's sparsity
    loss, and with hard gates its ``evaluate_sparsity``)."""
    return (keep * block_macs.to(keep)).sum(-1).mean() / total


def pruner_loss(consistency: torch.Tensor, kept_share: torch.Tensor) -> torch.Tensor:
    """Consistency plus the kept block share, the latter only while that share is at least 0.2 (no target)."""
    return consistency + kept_share if kept_share.item() >= STOP_SPARSITY_BELOW else consistency


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
    ctx: MethodContext, model: nn.Module, blocks: list[tuple[str, nn.Module]], block_macs: torch.Tensor,
    total: float, steps: int, both_sides: bool = False, u_shaped: bool = True,
    after_step: Callable[[int, PrunerNet], None] | None = None,
) -> tuple[PrunerNet, dict[str, list[float]]]:
    """Optimise a :class:`PrunerNet` for ``model`` over ``steps`` optimizer steps; returns it with its history.

    ``both_sides`` and ``u_shaped`` are :func:`cascade`'s; ``after_step(step, pruner)`` runs after each
    optimizer step.
    """
    sample_steps = ctx.diffusion.sample_steps
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        pruner = PrunerNet(sample_steps, len(blocks)).to(ctx.device)
    optimizer = torch.optim.SGD(pruner.parameters(), lr=LR, momentum=0.0, weight_decay=WEIGHT_DECAY)
    schedule = get_cosine_schedule_with_warmup(optimizer, WARMUP_STEPS, steps)
    noise = torch.Generator().manual_seed(ctx.seed)
    history: dict[str, list[float]] = {"consistency": [], "kept_block_share": [], "lr": []}
    with frozen(model), BlockGates(blocks) as gates:
        for step in tqdm(range(steps), desc="dipgo", disable=not ctx.progress):
            # the accumulated micro-batches of one image each run as one batch: the same gradient, less overhead
            x_T = torch.randn((GRAD_ACCUMULATION, *ctx.diffusion.image_shape), generator=noise).to(ctx.device)
            with torch.no_grad():
                reference = ctx.diffusion.denoise(model, x_T)
            keep = keep_gates(pruner())
            rows = cascade(keep, both_sides, u_shaped)
            gated = ctx.diffusion.denoise(model, x_T, lambda i: gates.set_step(i, list(rows[i].unbind())))
            consistency = 1 - ssim(gated, reference)
            share = kept_block_share(rows, block_macs, total)
            optimizer.zero_grad(set_to_none=True)
            pruner_loss(consistency, share).backward()
            torch.nn.utils.clip_grad_norm_(pruner.parameters(), GRAD_CLIP)
            history["consistency"].append(consistency.item())
            history["kept_block_share"].append(share.item())
            history["lr"].append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
            if after_step is not None:
                after_step(step, pruner)
    return pruner, history


def block_major_walk(
    reuse_prob: torch.Tensor, block_macs: torch.Tensor, total: float, target: float, both_sides: bool = False,
    u_shaped: bool = True,
) -> tuple[torch.Tensor, float]:
    """The release's ``UNetHelper.prune``: impose the kept MACs ratio ``target`` on learned reuse probabilities.

    Passes at thresholds 0.95, 0.90, ..., 0.05; each visits the blocks last to first and, in each, the steps
    after step 0 whose reuse probability exceeds the threshold, most probable first, reusing each with its
    cascade until the next would take the kept ratio to the target or below (that block's pass ends there).
    Returns the bool schedule ``[steps, n_blocks]`` (kept ratio strictly above ``target``) and the last
    threshold that reused anything (1.0 when nothing was).
    """
    steps, n_blocks = reuse_prob.shape
    keep = torch.ones(steps, n_blocks, dtype=torch.bool)
    schedule = cascade(keep, both_sides, u_shaped)
    used = 1.0
    passes = [FIRST_THRESHOLD - THRESHOLD_STEP * k for k in range(round(FIRST_THRESHOLD / THRESHOLD_STEP))]
    for threshold in passes:
        for block in reversed(range(n_blocks)):
            column = reuse_prob[:, block].tolist()
            order = sorted(range(1, steps), key=lambda step: -column[step])
            for step in (s for s in order if column[s] > threshold):
                if not bool(schedule[step, block]):  # reused already, itself or by a cascade
                    continue
                trial = keep.clone()
                trial[step, block] = False
                trial_schedule = cascade(trial, both_sides, u_shaped)
                if float(kept_macs_ratio(trial_schedule, block_macs, total)) <= target:
                    break
                keep, schedule, used = trial, trial_schedule, threshold
    return schedule, used


_PRUNERS: dict[str, tuple[PrunerNet, dict[str, Any]]] = {}
"""Pruners trained in this process, by :func:`pruner_key`: training has no target, so the operating points
of one model share one pruner (the cell records that it was reused)."""


def pruner_key(model: nn.Module, ctx: MethodContext, steps: int) -> str:
    return f"{tensors_digest(model.state_dict())}:{(ctx.seed, steps, ctx.diffusion.sample_steps, str(ctx.device))}"


class DiPGO(Method):
    name = "dipgo"
    version = "4"
    description = "DiP-GO: learned per-step block reuse (the official pruner and recipe), then the threshold walk"
    trains_weights = False
    points_share_work = True  # the pruner trains without a target: one per model and seed serves every point
    knob = "dipgo_target"

    def apply(self, ctx: MethodContext, state: Pruned) -> Pruned:
        blocks = ctx.backbone.blocks(state.model)
        block_macs, total = block_costs(ctx, state.model, [name for name, _ in blocks])
        both_sides, u_shaped = not ctx.backbone.time_enters_every_block, ctx.backbone.u_shaped
        steps = ctx.preset.dipgo_pruner_steps
        key = pruner_key(state.model, ctx, steps)
        reused = key in _PRUNERS
        if not reused:
            started = time.perf_counter()
            pruner, history = train_pruner(ctx, state.model, blocks, block_macs, total, steps, both_sides, u_shaped)
            _PRUNERS[key] = (pruner, {"history": history, "seconds": time.perf_counter() - started})
        pruner, trained = _PRUNERS[key]
        with torch.no_grad():
            reuse_prob = reuse_probability(pruner()).cpu()
        schedule, threshold = block_major_walk(
            reuse_prob, block_macs, total, ctx.options.dipgo_target, both_sides, u_shaped
        )
        info = {
            "pruner_steps": steps,
            "grad_accumulation": GRAD_ACCUMULATION,
            "pruner_lr": LR,
            "pruner_seconds": trained["seconds"],
            "pruner_reused": reused,
            "target": ctx.options.dipgo_target,
            "threshold": threshold,
            "kept_macs_ratio": float(kept_macs_ratio(schedule, block_macs, total)),
            "blocks": [name for name, _ in blocks],
            "schedule": schedule.tolist(),
            "reuse_prob": [[round(p, 4) for p in row] for row in reuse_prob.tolist()],
            "loss_history": trained["history"],
        }
        return dataclasses.replace(state, schedule=schedule, info={**state.info, **info})


@hookimpl
def register_methods(register):
    register(DiPGO())
