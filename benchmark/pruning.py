"""Applying a method chain to a dense model: the part of a cell before any measurement, shared by the grid
and ``benchmark prune``."""
from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from benchmark.api import Backbone, MethodContext, PluginContractError, Pruned, RunOptions

if TYPE_CHECKING:
    from benchmark.plugins import Registries
    from benchmark.presets import Preset


def method_context(
    backbone: Backbone, preset: Preset, options: RunOptions, dense: nn.Module, images: torch.Tensor, seed: int,
    device: torch.device, train_steps: int, progress: bool = True, continuation: str | None = None,
    continuation_dir: str | None = None,
) -> MethodContext:
    """What every method of a cell sees: ``dense`` frozen as the teacher, ``images`` (the data set) as the seed's
    batch stream in the space the backbone denoises, with their prompts where it has them."""
    from benchmark.data import batch_stream
    from benchmark.diffusion import Diffusion
    from benchmark.generation import training_set
    from benchmark.training import probe_batch

    diffusion = Diffusion.for_backbone(backbone, preset)
    data = training_set(backbone, preset, images)
    labels = data.labels
    return MethodContext(
        backbone=backbone,
        preset=preset,
        options=options,
        diffusion=diffusion,
        teacher=copy.deepcopy(dense).eval().requires_grad_(False),
        batches=lambda start=0: batch_stream(data.x0, preset.batch_size, seed, start),
        train_steps=train_steps,
        seed=seed,
        device=device,
        progress=progress,
        probe=probe_batch(data.x0, diffusion),
        labels=None if labels is None else lambda start=0: batch_stream(labels, preset.batch_size, seed, start),
        continuation=continuation,
        continuation_dir=continuation_dir,
    )


def apply_chain(registries: Registries, chain: tuple[str, ...], ctx: MethodContext, dense: nn.Module,
                info: dict[str, Any] | None = None) -> tuple[Pruned, dict[str, Any]]:
    """Run each part of ``chain`` (``name`` or ``name@value``) on a copy of ``dense``; returns the final state
    and each part's info by part, also filled into ``info`` as each part ends (so a failure keeps it)."""
    from benchmark.grid.plan import part_options, split_operating_point

    state = Pruned(model=copy.deepcopy(dense).requires_grad_(True))
    methods = registries.methods
    info = {} if info is None else info
    for part in chain:
        method = methods.get(split_operating_point(part)[0])
        state = method.apply(dataclasses.replace(ctx, options=part_options(methods, part, ctx.options)), state)
        if not isinstance(state, Pruned):
            raise PluginContractError(f"method {part!r} returned {type(state).__name__}, not a Pruned")
        info[part] = state.info
    return state, info


def describe(backbone: Backbone, dense: nn.Module, state: Pruned, inputs: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    """What a chain did to ``dense``: params and MACs before and after, and the per-layer (or per-step) result.

    ``macs`` is torch-pruning's counter, the one the papers report; ``macs_with_attention`` is this suite's
    (which adds the attention matmuls, as the leaderboard's ``macs_g``); ``effective_macs`` counts masked
    layers at N/M and skipped blocks as removed along the sampling trajectory.
    """
    import torch_pruning as tp

    from benchmark.grid.measure import macs as suite_macs
    from benchmark.structural import architecture_changed, kept_fractions

    before, after = Pruned(model=dense), state
    counted = [tp.utils.count_ops_and_params(m.eval(), inputs) for m in (dense, state.model)]
    suite = [suite_macs(backbone, s, inputs) for s in (before, after)]
    result: dict[str, Any] = {
        "params": {"before": counted[0][1], "after": counted[1][1]},
        "nonzero_params": {"before": _nonzero(dense), "after": _nonzero(state.model)},
        "macs": {"before": counted[0][0], "after": counted[1][0]},
        "macs_with_attention": {k: s["macs_g"] * 1e9 for k, s in zip(("before", "after"), suite)},
        "effective_macs": {k: s["sparse_macs_g"] * 1e9 for k, s in zip(("before", "after"), suite)},
    }
    if architecture_changed(dense, state.model):
        result["kept_fraction"] = kept_fractions(dense, state.model)
    if state.masks:
        result["nm_layers"] = {
            name: {"pattern": str(state.pattern), "masked_share": round(1 - mask.float().mean().item(), 4)}
            for name, mask in state.masks.items()
        }
        result["dense_layers"] = dict(state.skipped_layers)
    if state.schedule is not None:
        result["blocks"] = [name for name, _ in backbone.blocks(state.model)]
        result["schedule"] = ["".join("1" if run else "." for run in row) for row in state.schedule.tolist()]
    return result


def _nonzero(model: nn.Module) -> int:
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())
