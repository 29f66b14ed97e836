"""``python -m benchmark prune``: one method or chain on one backbone's dense model, without the fine-tuning
budget, shown layer by layer (or step by step) and saved."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tabulate import tabulate

from benchmark.api import BenchmarkError, RunOptions
from benchmark.pruning import apply_chain, describe, method_context

if TYPE_CHECKING:
    from benchmark.plugins import Registries
    from benchmark.presets import Preset


def prune(registries: Registries, spec: str, backbone_name: str, preset: Preset, options: RunOptions,
          checkpoint: str | None, seed: int, device_name: str, out: Path | None, as_json: bool = False,
          progress: bool = True) -> int:
    from benchmark import checkpoints, structural
    from benchmark.data import load_dataset
    from benchmark.grid.plan import expand_methods, split_chain
    from benchmark.grid.run import resolve_device
    from benchmark.sparsity import validate_nm

    if "," in spec or spec.strip() == "all":
        raise BenchmarkError(f"prune takes one method or chain, got {spec!r}; e.g. diff-pruning@layer=0.3 or asp+dipgo")
    backbone = registries.backbones.get(backbone_name)
    (method,) = expand_methods(registries.methods, spec)
    device = resolve_device(device_name)
    if checkpoint is not None:
        options = dataclasses.replace(options, checkpoints={backbone.name: checkpoint})
    path = checkpoints.find_dense_checkpoint(backbone, preset, options)
    torch.manual_seed(seed)
    if path is not None:
        dense = checkpoints.load_dense(backbone, preset, path, device)
        weights, images = f"checkpoint {path}", load_dataset(preset.dataset)
    else:  # the layout alone: nothing about the weights or data means anything
        dense = backbone.build(preset).to(device).eval()
        weights = (f"random weights and random images: preset {preset.name!r} has no {backbone.name} checkpoint here "
                   "(give --checkpoint); the layout is the preset's, importance scores are not meaningful")
        shape = (preset.batch_size, preset.channels, preset.image_size, preset.image_size)
        images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    ctx = method_context(backbone, preset, options, dense, images, seed, device, train_steps=0, progress=progress)
    state, info = apply_chain(registries, tuple(split_chain(method)), ctx, dense)
    if state.masks:
        validate_nm(state.model, state)
    inputs = tuple(x.to(device) for x in backbone.example_inputs(preset, 1))
    result = {"backbone": backbone.name, "preset": preset.name, "method": method, "weights": weights,
              **describe(backbone, dense, state, inputs)}
    out = out or Path("runs") / "prune" / f"{backbone.name}-{preset.name}-{method}.pt"
    extra: dict[str, Any] = {"masks": state.masks, "pattern": str(state.pattern) if state.pattern else None,
                             "schedule": state.schedule}
    structural.save_pruned(state.model, out, **extra)
    result["saved"] = str(out)
    result["info"] = info
    print(json.dumps(result, default=str) if as_json else render(result))
    return 0


def render(result: dict[str, Any]) -> str:
    """The text form of :func:`prune`'s result."""
    lines = [f"{result['backbone']} at preset {result['preset']}, {result['method']} without fine-tuning",
             f"weights: {result['weights']}", ""]
    rows = [
        ("params (M)", 1e6, "params"),
        ("nonzero params (M)", 1e6, "nonzero_params"),
        ("MACs (G, torch-pruning's counter)", 1e9, "macs"),
        ("MACs (G, with attention matmuls)", 1e9, "macs_with_attention"),
        ("effective MACs (G, N:M and skipped blocks removed)", 1e9, "effective_macs"),
    ]
    table = [(label, f"{result[key]['before'] / unit:.4g}", f"{result[key]['after'] / unit:.4g}",
              f"{result[key]['after'] / result[key]['before']:.3f}") for label, unit, key in rows]
    lines.append(tabulate(table, headers=("", "before", "after", "ratio"), tablefmt="github"))
    if "kept_fraction" in result:
        lines += ["", tabulate(sorted(result["kept_fraction"].items()), headers=("layer", "kept output channels"),
                               tablefmt="github")]
    if "nm_layers" in result:
        table = [(name, layer["pattern"], layer["masked_share"]) for name, layer in result["nm_layers"].items()]
        table += [(name, "dense", reason) for name, reason in result["dense_layers"].items()]
        lines += ["", tabulate(table, headers=("layer", "pattern", "masked share"), tablefmt="github")]
    if "schedule" in result:
        lines += ["", "schedule (1 = the block runs, . = it reuses its output from the previous step), blocks: "
                  + ", ".join(result["blocks"])]
        lines += [f"step {step:3d}  {row}" for step, row in enumerate(result["schedule"])]
    lines += ["", f"saved: {result['saved']}"]
    return "\n".join(lines)
