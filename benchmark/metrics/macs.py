"""Multiply-accumulates per sample: dense, N:M-sparse, per block, and along a block-skip schedule.

What is counted (torch-pruning's op counter, plus attention):

* Conv / ConvTranspose / Linear: one MAC per weight use, plus one per bias element of the output;
* norms (BatchNorm, GroupNorm, LayerNorm, InstanceNorm): 1 op per element, 2 with affine parameters;
* ReLU-like activations and GELU: 1 op per element; pooling and nn.Upsample: 1 op per element;
* ``nn.MultiheadAttention``: its projections, ``QK^T``, softmax and ``AV``;
* ``F.scaled_dot_product_attention`` (which torch-pruning misses): ``QK^T`` and ``AV``, i.e.
  ``L * S * (E + Ev)`` per head and sample, booked on the module that called it.

Not counted: SiLU, dropout, functional ops other than attention (``torch.matmul``, ``einsum``,
``F.silu``), additions and concatenations. Subclasses of counted layers (for example layers
carrying a ``torch.nn.utils.parametrize`` parametrization) are counted like their base class.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

from benchmark.api import NMPattern

_op_counter = tp.utils.op_counter


@dataclass
class MacsReport:
    """Per-sample MACs of one network evaluation."""

    total: float  # sum of ``per_module``
    params: int
    per_module: dict[str, float]  # qualified module name -> MACs per sample


def count_macs(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> MacsReport:
    """Count MACs per sample of ``model(*example_inputs)``; the batch is ``len(example_inputs[0])``."""
    inputs = tuple(example_inputs)
    batch = len(inputs[0])
    _op_counter.CUSTOM_MODULES_MAPPING = _subclass_hooks(model)  # torch-pruning resets it after each call
    _, params, layer_flops, _ = tp.utils.count_ops_and_params(model, inputs, layer_wise=True)
    per_module = {
        name: layer_flops[module] / batch
        for name, module in model.named_modules()
        if _counted_type(type(module)) is not None and layer_flops.get(module) is not None
    }
    for name, macs in attention_macs(model, inputs).items():
        per_module[name] = per_module.get(name, 0.0) + macs
    return MacsReport(total=sum(per_module.values()), params=int(params), per_module=per_module)


def _counted_type(module_type: type) -> type | None:
    """The torch-pruning counter type ``module_type`` is, or derives from (None if not counted)."""
    return next((base for base in module_type.__mro__ if base in _op_counter.MODULES_MAPPING), None)


def _subclass_hooks(model: nn.Module) -> dict[type, object]:
    """Counter hooks for subclasses of counted types, which torch-pruning matches by exact type only."""
    hooks = {}
    for module in model.modules():
        base = _counted_type(type(module))
        if base is not None and base is not type(module):
            hooks[type(module)] = _op_counter.MODULES_MAPPING[base]
    return hooks


class _AttentionRecorder(TorchFunctionMode):
    """Calls ``on_attention(query, key, value)`` for every ``F.scaled_dot_product_attention``."""

    def __init__(self, on_attention):
        super().__init__()
        self.on_attention = on_attention

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            named = [kwargs.get(key) for key in ("query", "key", "value")]
            self.on_attention(*(list(args) + named[len(args):])[:3])
        return func(*args, **kwargs)


def attention_macs(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> dict[str, float]:
    """MACs per sample of ``F.scaled_dot_product_attention`` calls, by the innermost calling module.

    Calls made inside a module torch-pruning already counts as a whole (``nn.MultiheadAttention``)
    are left to it. Runs one forward pass in eval mode without gradients.
    """
    inputs = tuple(example_inputs)
    names = {module: name for name, module in model.named_modules()}
    running: list[nn.Module] = []
    found: dict[str, float] = defaultdict(float)

    def record(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
        if any(_counted_type(type(module)) is not None for module in running):
            return
        caller = names[running[-1]] if running else ""
        heads = math.prod(query.shape[:-2])
        found[caller] += heads * query.shape[-2] * key.shape[-2] * (query.shape[-1] + value.shape[-1])

    def enter(module: nn.Module, args: object) -> None:
        running.append(module)

    def leave(module: nn.Module, args: object, output: object) -> None:
        running.pop()

    handles: list[RemovableHandle] = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave, always_call=True))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), _AttentionRecorder(record):
            model(*inputs)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    batch = len(inputs[0])
    return {name: macs / batch for name, macs in found.items()}


def _effective_per_module(
    report: MacsReport, masks: Mapping[str, torch.Tensor] | None, pattern: NMPattern | None
) -> dict[str, float]:
    """``report.per_module`` with each masked layer at ``pattern``'s density."""
    masks = masks or {}
    if masks and pattern is None:
        raise ValueError("masks were given without the N:M pattern they follow")
    unknown = sorted(set(masks) - set(report.per_module))
    if unknown:
        raise ValueError(f"masked layer(s) with no MACs in the report: {', '.join(unknown)}")
    return {
        name: macs * pattern.density if name in masks else macs for name, macs in report.per_module.items()
    }


def sparse_macs(report: MacsReport, masks: Mapping[str, torch.Tensor], pattern: NMPattern | None) -> float:
    """Per-sample MACs with every masked layer at N/M of its dense MACs (what N:M kernels could reach)."""
    return sum(_effective_per_module(report, masks, pattern).values())


def _under(name: str, prefix: str) -> bool:
    return not prefix or name == prefix or name.startswith(prefix + ".")


def _block_sums(per_module: Mapping[str, float], block_names: Sequence[str]) -> list[float]:
    return [sum(macs for name, macs in per_module.items() if _under(name, block)) for block in block_names]


def block_macs(report: MacsReport, block_names: Sequence[str]) -> list[float]:
    """Per-sample MACs of each block: the sum of ``per_module`` entries under its qualified name."""
    return _block_sums(report.per_module, block_names)


def trajectory_macs(
    report: MacsReport,
    block_names: Sequence[str],
    schedule: torch.Tensor,
    masks: Mapping[str, torch.Tensor] | None = None,
    pattern: NMPattern | None = None,
) -> float:
    """Mean per-sample MACs over the sampling steps of a block-skip ``schedule``.

    ``schedule`` is a bool ``[steps, len(block_names)]`` tensor, True where a block runs; a
    skipped block costs nothing at that step. Masked layers count at N/M of their MACs.
    """
    if schedule.dim() != 2 or schedule.shape[1] != len(block_names):
        raise ValueError(
            f"schedule of shape {tuple(schedule.shape)} does not match {len(block_names)} blocks"
        )
    per_module = _effective_per_module(report, masks, pattern)
    skipped_fraction = (~schedule.bool()).double().mean(dim=0).tolist()
    blocks = _block_sums(per_module, block_names)
    return sum(per_module.values()) - sum(cost * share for cost, share in zip(blocks, skipped_fraction))
