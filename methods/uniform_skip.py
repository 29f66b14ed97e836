"""A DeepCache-like baseline: on every odd sampling step the deepest blocks reuse their cached output.

Blocks are taken from the middle of the U outward (the mid block, then the innermost in/out pair, ...)
as long as that brings the trajectory MACs ratio closer to ``options.dipgo_target``, so it has the
same MACs budget as DiP-GO where every-other-step skipping can reach it. On a flat block list (DiT)
a reusing block makes every earlier one unused, so blocks are taken from the first onward: odd steps
recompute only the last blocks from the cached hidden state.
"""
from __future__ import annotations

import dataclasses
import torch

from benchmark import hookimpl
from benchmark.api import Method, MethodContext, Pruned
from benchmark.skipping import block_costs, depths, kept_macs_ratio


def rings_from_centre(n_blocks: int) -> list[list[int]]:
    """Block indices grouped by distance from the centre of a U-shaped block list, innermost first."""
    depth = depths(n_blocks)
    rings: dict[float, list[int]] = {}
    for index in sorted(range(n_blocks), key=lambda i: depth[i]):
        rings.setdefault(depth[index], []).append(index)
    return list(rings.values())


def reuse_order(n_blocks: int, u_shaped: bool) -> list[list[int]]:
    """Groups of blocks in the order uniform skipping lets them reuse: rings of the U, or a growing prefix."""
    return rings_from_centre(n_blocks) if u_shaped else [[index] for index in range(n_blocks)]


def odd_step_schedule(steps: int, n_blocks: int, skipped: list[int]) -> torch.Tensor:
    """Run everything on even steps; the ``skipped`` blocks reuse their cache on odd steps."""
    schedule = torch.ones(steps, n_blocks, dtype=torch.bool)
    schedule[1::2, skipped] = False
    return schedule


class UniformSkip(Method):
    name = "uniform-skip"
    version = "1"
    description = "DeepCache-like: the deepest blocks reuse their output on every other step, same MACs target"
    trains_weights = False
    knob = "dipgo_target"

    def apply(self, ctx: MethodContext, state: Pruned) -> Pruned:
        names = [name for name, _ in ctx.backbone.blocks(state.model)]
        block_macs, total = block_costs(ctx, state.model, names)
        steps, target = ctx.diffusion.sample_steps, ctx.options.dipgo_target
        candidates = []
        skipped: list[int] = []
        for ring in [[], *reuse_order(len(names), ctx.backbone.u_shaped)]:
            skipped = skipped + ring
            schedule = odd_step_schedule(steps, len(names), skipped)
            candidates.append((abs(float(kept_macs_ratio(schedule, block_macs, total)) - target), skipped, schedule))
        _, skipped, schedule = min(candidates, key=lambda c: c[0])
        info = {
            "target": target,
            "kept_macs_ratio": float(kept_macs_ratio(schedule, block_macs, total)),
            "skipped_blocks": [names[i] for i in sorted(skipped)],
            "blocks": names,
            "schedule": schedule.tolist(),
        }
        return dataclasses.replace(state, schedule=schedule, info={**state.info, **info})


@hookimpl
def register_methods(register):
    register(UniformSkip())
