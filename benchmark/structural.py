"""Structural (channel) pruning with torch-pruning: remove whole channels and heads until the measured MACs meet a target.

torch-pruning's dependency graph finds which layers' channels must go together; its pruner ranks the
groups by an importance (:class:`torch_pruning.importance.TaylorImportance` for Diff-Pruning, L1
magnitude for its baseline) and removes the least important ones across the whole network. The
backbone says which layers keep their output channels and where attention heads are
(:meth:`benchmark.api.Backbone.channel_pruning`), and brings its own attributes up to date afterwards
(:meth:`benchmark.api.Backbone.after_channel_pruning`). A pruned model is saved as torch-pruning's
pruning history (which channels went, replayed on a fresh dense build) plus a plain state dict, so it
reloads with ``weights_only=True``.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, BinaryIO, Sequence

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from benchmark.api import Backbone, BenchmarkError, ChannelPruning, MethodContext, Pruned
from benchmark.diffusion import Diffusion
from benchmark.metrics.macs import count_macs
from benchmark.presets import Preset
from benchmark.training import train

RATIOS = [round(0.02 * i, 2) for i in range(1, 46)]  # global channel ratios tried (0.02 to 0.90)
MAX_LAYER_RATIO = 0.9  # under global ranking no layer loses more than this share of its channels


def diffusion_gradients(model: nn.Module, diffusion: Diffusion, x0: torch.Tensor, noise: torch.Tensor,
                        threshold: float) -> list[float]:
    """Accumulate ``∂L/∂w`` of the noise-prediction loss over timesteps 0, 1, 2, ... (Diff-Pruning).

    One fixed batch and one fixed noise at every timestep. The loop stops after the first timestep
    whose loss falls below ``threshold`` times the largest loss so far (that step included, as in
    the diffusers script of the paper), or after the last timestep. Returns the loss per timestep.
    """
    model.zero_grad(set_to_none=True)
    losses: list[float] = []
    for step in range(diffusion.num_train_timesteps):
        t = torch.full((x0.shape[0],), step, dtype=torch.long, device=x0.device)
        x_t = diffusion.noise_scheduler.add_noise(x0, noise, t)
        loss = F.mse_loss(model(x_t, t), noise)
        loss.backward()
        losses.append(loss.item())
        if loss.item() < threshold * max(losses):
            break
    return losses


def _pruner(model: nn.Module, backbone: Backbone, inputs: Sequence[torch.Tensor], importance: Any,
            ratio: float, per_layer: bool = False,
            layer_ratios: dict[nn.Module, float] | None = None) -> tp.pruner.BasePruner:
    spec = backbone.channel_pruning(model)
    modules = dict(model.named_modules())
    return tp.pruner.BasePruner(
        model,
        tuple(inputs),
        importance=importance,
        pruning_ratio=ratio,
        pruning_ratio_dict=layer_ratios,
        global_pruning=not per_layer,
        max_pruning_ratio=MAX_LAYER_RATIO,
        ignored_layers=[modules[name] for name in spec.kept],
        num_heads={modules[name]: heads for name, heads in spec.heads.items()},
        unwrapped_parameters=_unwrapped(model, spec),
    )


def paper_group_ratios(pruner: tp.pruner.BasePruner, ratio: float) -> dict[nn.Module, float]:
    """Per-group ratios that make the installed torch-pruning remove, at per-layer ``ratio``, the channels that
    torch-pruning <= 1.2.5 (Diff-Pruning's release) removed.

    Both remove ``C - int(C * (1 - ratio))`` of a layer's ``C`` channels where nothing groups them. Where
    GroupNorm (or heads) split them into ``g`` groups that must lose the same offsets, 1.2.x took that count
    floored over the groups (1 of every 4 channels at 0.3 with GroupNorm(32) on 128 channels); torch-pruning
    1.6 applies the ratio to one group's ``C / g`` channels and removes 2 of 4. A group's ratio
    ``(k - 0.5) / (C / g)`` makes 1.6 remove exactly ``k`` per group. Keys are the groups' root layers.
    """
    ratios = {}
    for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                          root_module_types=pruner.root_module_types):
        groups = pruner._get_channel_groups(group)  # torch-pruning's own grouping (GroupNorm, heads)
        if groups > 1:
            root = group[0].dep.target.module
            channels = pruner.DG.get_out_channels(root)
            removed = (channels - int(channels * (1 - ratio))) // groups
            ratios[root] = (removed - 0.5) / (channels // groups) if removed else 0.0
    return ratios


def _unwrapped(model: nn.Module, spec: ChannelPruning) -> list[tuple[nn.Parameter, int]]:
    """torch-pruning's ``unwrapped_parameters`` for the raw parameters the backbone names."""
    return [(model.get_parameter(name), dim) for name, dim in spec.unwrapped.items()]


def prune_channels(model: nn.Module, backbone: Backbone, inputs: Sequence[torch.Tensor], importance: Any,
                   ratio: float, per_layer: bool = False) -> tuple[nn.Module, list]:
    """A copy of ``model`` (gradients included, for Taylor importance) with ``ratio`` of its channels
    removed, by global ranking or (``per_layer``) from every layer as Diff-Pruning's release did, and
    torch-pruning's history of what was removed."""
    pruned = copy.deepcopy(model)
    for source, target in zip(model.parameters(), pruned.parameters()):
        target.grad = None if source.grad is None else source.grad.clone()
    pruner = _pruner(pruned, backbone, inputs, importance, ratio, per_layer)
    if per_layer:
        pruner = _pruner(pruned, backbone, inputs, importance, ratio, per_layer, paper_group_ratios(pruner, ratio))
    pruner.step()
    backbone.after_channel_pruning(pruned)
    for parameter in pruned.parameters():
        parameter.grad = None
    return pruned, pruner.pruning_history()


def kept_fractions(dense: nn.Module, pruned: nn.Module) -> dict[str, float]:
    """Output channels each Linear/Conv2d of ``pruned`` kept, as a fraction of the same layer in ``dense``."""
    widths = {name: _out_width(module) for name, module in dense.named_modules() if _out_width(module)}
    return {
        name: round(_out_width(module) / widths[name], 4)
        for name, module in pruned.named_modules()
        if name in widths and _out_width(module)
    }


def _out_width(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    return 0


def prune_per_layer(model: nn.Module, backbone: Backbone, inputs: Sequence[torch.Tensor], importance: Any,
                    ratio: float) -> tuple[nn.Module, dict[str, Any]]:
    """``model`` with the share ``ratio`` of every layer's channels removed (the paper's setting)."""
    dense_macs = count_macs(model, inputs).total
    pruned, history = prune_channels(model, backbone, inputs, importance, ratio, per_layer=True)
    pruned.pruning_history = history
    return pruned, {"channel_ratio": ratio, "ranking": "per-layer",
                    "macs_ratio": count_macs(pruned, inputs).total / dense_macs}


def prune_to_macs(model: nn.Module, backbone: Backbone, inputs: Sequence[torch.Tensor], importance: Any,
                  target: float) -> tuple[nn.Module, dict[str, Any]]:
    """The pruned copy of ``model`` whose measured MACs ratio is closest to ``target``.

    torch-pruning ranks channel groups globally, so the MACs ratio is a step function of the channel
    ratio, and not always a monotone one (GroupNorm groups remove channels in whole offsets); every
    ratio of :data:`RATIOS` is tried and the closest measured MACs win, the smaller ratio on ties.
    """
    dense_macs = count_macs(model, inputs).total
    best: tuple[float, float, float, nn.Module, list] | None = None
    for ratio in RATIOS:
        pruned, history = prune_channels(model, backbone, inputs, importance, ratio)
        macs_ratio = count_macs(pruned, inputs).total / dense_macs
        if best is None or abs(macs_ratio - target) < best[0]:
            best = (abs(macs_ratio - target), ratio, macs_ratio, pruned, history)
    _, ratio, macs_ratio, pruned, history = best
    pruned.pruning_history = history  # what save_pruned writes
    return pruned, {"target": target, "channel_ratio": ratio, "ranking": "global", "macs_ratio": macs_ratio}


def channel_pruned(ctx: MethodContext, state: Pruned, importance: Any, name: str,
                   info: dict[str, Any] | None = None, reinitialise: bool = False) -> Pruned:
    """What a structural method returns: ``state.model`` pruned by ``importance`` (gradients already in place for
    Taylor) to ``ctx.options.structural_target`` (a MACs ratio, or a per-layer channel ratio), then fine-tuned
    with the shared budget; with ``reinitialise``, trained from a random initialisation instead
    (:func:`reinitialise_as_built`)."""
    if state.masks or state.schedule is not None:
        raise BenchmarkError("structural pruning must come first in a chain (before N:M masks or skip schedules)")
    inputs = tuple(x.to(ctx.device) for x in ctx.backbone.example_inputs(ctx.preset))
    target = ctx.options.structural_target
    if target.per_layer:
        pruned, found = prune_per_layer(state.model, ctx.backbone, inputs, importance, target.value)
        found["target"] = target.to_json()
    else:
        pruned, found = prune_to_macs(state.model, ctx.backbone, inputs, importance, target.value)
    found["kept_fraction"] = kept_fractions(state.model, pruned)
    if reinitialise:
        reinitialise_as_built(pruned, ctx.backbone, ctx.preset, ctx.seed)
    pruned.requires_grad_(True)
    losses = train(pruned, ctx, ctx.train_steps, desc=name)
    kept = ctx.backbone.channel_pruning(state.model).kept
    return dataclasses.replace(
        state,
        model=pruned,
        train_steps=state.train_steps + ctx.train_steps,
        info={**found, **(info or {}), "kept_layers": kept, "final_loss": losses[-1] if losses else None},
    )


@torch.no_grad()
def reinitialise_as_built(model: nn.Module, backbone: Backbone, preset: Preset, seed: int) -> None:
    """Overwrite every parameter and buffer of a pruned ``model`` with the leading slice of the same tensor of a
    freshly built (randomly initialised, ``seed``) dense model, so the backbone's own initialisation (zeroed
    output layers, embeddings) carries over; fan-in scaled inits keep the dense layer's scale."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = backbone.build(preset).state_dict()
    for name, tensor in model.state_dict().items():
        tensor.copy_(fresh[name][tuple(slice(0, n) for n in tensor.shape)].to(tensor))


def architecture_changed(dense: nn.Module, model: nn.Module) -> bool:
    """True when some parameter of ``model`` has another shape than in ``dense`` (or is missing)."""
    shapes = {name: p.shape for name, p in dense.named_parameters()}
    mine = {name: p.shape for name, p in model.named_parameters()}
    return shapes != mine


def save_pruned(model: nn.Module, file: str | Path | BinaryIO, **extra: Any) -> None:
    """Save a pruned model: its torch-pruning history (empty where no channel was removed), its weights and
    ``extra`` tensors or strings (N:M masks, a skip schedule), to a path or a file; loads with ``weights_only``."""
    if isinstance(file, (str, Path)):
        Path(file).parent.mkdir(parents=True, exist_ok=True)
    history = [[name, bool(out), [int(i) for i in idxs]] for name, out, idxs in getattr(model, "pruning_history", [])]
    torch.save({"pruning_history": history, "state_dict": model.state_dict(), **extra}, file)


def load_pruned(backbone: Backbone, preset: Preset, path: str | Path) -> nn.Module:
    """The model :func:`save_pruned` wrote: a fresh dense build, pruned again by the saved history, with
    the saved weights loaded strictly; in eval mode."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = backbone.build(preset)
    spec = backbone.channel_pruning(model)
    graph = tp.DependencyGraph().build_dependency(
        model, backbone.example_inputs(preset),
        unwrapped_parameters=_unwrapped(model, spec),
    )
    graph.load_pruning_history(saved["pruning_history"])
    backbone.after_channel_pruning(model)
    model.load_state_dict(saved["state_dict"], strict=True)
    model.pruning_history = saved["pruning_history"]
    return model.eval()
