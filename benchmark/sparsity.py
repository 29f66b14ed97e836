"""N:M weight sparsity: finding masks, training with them, and checking a method's claim.

Groups are ``M`` consecutive weights along a layer's input dimension: a Linear ``[O, I]`` groups
along ``I``; a Conv2d ``[O, I, kh, kw]`` is viewed as ``(O, kh, kw, I)`` so that groups run along
input channels (as NVIDIA ASP and SparseDM do). This module only finds and enforces masks;
measuring what they save (MACs, 2:4 kernels) is the metrics' job.

Training uses ``torch.nn.utils.parametrize``: :func:`attach` puts an :class:`NMSparsify` on each
layer's ``weight``, :func:`set_pattern` changes the ratio in place and :func:`finalize` bakes the
masked weights into the layers.
"""
from __future__ import annotations

import dataclasses
import hashlib

from typing import Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from benchmark.api import MethodContext, NMPattern, Pruned

Mode = Literal["fixed", "ste"]


class MaskValidationError(RuntimeError):
    """A method's masks or weights do not satisfy the N:M pattern it claims."""


def skip_reason(weight: torch.Tensor, pattern: NMPattern) -> str | None:
    """Why ``weight`` cannot take ``pattern`` (None if it can)."""
    if weight.dim() < 2:
        return f"weight has {weight.dim()} dim(s); N:M needs an input dimension"
    if weight.shape[1] % pattern.m:
        return f"input dim {weight.shape[1]} not divisible by M={pattern.m}"
    return None


def _groups(tensor: torch.Tensor, m: int) -> torch.Tensor:
    """``[num_groups, m]`` view with the input dimension innermost (dim 1 moved last)."""
    return tensor.movedim(1, -1).reshape(-1, m)


def _ungroup(grouped: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    moved_shape = (shape[0], *shape[2:], shape[1])
    return grouped.reshape(moved_shape).movedim(-1, 1)


def nm_mask(weight: torch.Tensor, pattern: NMPattern) -> torch.Tensor:
    """Bool mask keeping the ``n`` largest ``|w|`` in every group of ``m``.

    Ties go to the lower input index (a stable sort), so the result is deterministic.
    """
    reason = skip_reason(weight, pattern)
    if reason:
        raise ValueError(f"cannot apply {pattern} to a weight of shape {tuple(weight.shape)}: {reason}")
    scores = _groups(weight.detach().abs(), pattern.m)
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)
    keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, order[:, : pattern.n], True)
    return _ungroup(keep, weight.shape)


class _StraightThroughMask(torch.autograd.Function):
    """Forward ``W * mask``; backward passes the gradient to every dense weight (STE).

    With ``decay > 0`` the backward adds SR-STE's ``decay * (1 - mask) * W``, which slowly
    shrinks the pruned weights so the mask settles.
    """

    @staticmethod
    def forward(ctx, weight: torch.Tensor, mask: torch.Tensor, decay: float) -> torch.Tensor:
        ctx.save_for_backward(weight, mask)
        ctx.decay = decay
        return weight * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, mask = ctx.saved_tensors
        if ctx.decay:
            grad = grad + ctx.decay * (~mask) * weight
        return grad, None, None


class NMSparsify(nn.Module):
    """Parametrization of a layer's weight as its N:M-masked version.

    ``mode="fixed"`` (ASP): the mask is computed once from the weight handed over and kept;
    ``W * mask`` means pruned weights get no gradient. ``mode="ste"``: the mask is recomputed from
    the dense weight at every forward and the gradient reaches all dense weights (SR-STE term
    with ``decay > 0``). ``pattern`` None means the layer runs dense for now (a ladder stage it
    cannot take). The ``mask`` buffer holds the mask last used.
    """

    def __init__(self, weight: torch.Tensor, pattern: NMPattern | None, mode: Mode, decay: float = 0.0):
        super().__init__()
        if mode not in ("fixed", "ste"):
            raise ValueError(f"unknown sparsity mode {mode!r}; use 'fixed' or 'ste'")
        self.decay = decay
        self.register_buffer("mask", torch.ones_like(weight, dtype=torch.bool))
        self.set_pattern(weight, pattern, fixed=mode == "fixed")

    def set_pattern(self, weight: torch.Tensor, pattern: NMPattern | None, fixed: bool) -> None:
        """Switch ratio and mode; the mask is recomputed from ``weight`` (the dense original)."""
        self.pattern = pattern
        self.mode = "fixed" if fixed else "ste"
        self.mask = torch.ones_like(self.mask) if pattern is None else nm_mask(weight, pattern)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.pattern is None:
            return weight
        if self.mode == "fixed":
            return weight * self.mask
        self.mask = nm_mask(weight, self.pattern)
        return _StraightThroughMask.apply(weight, self.mask, self.decay)


def _sparsified(model: nn.Module) -> dict[str, tuple[nn.Module, NMSparsify]]:
    """Layers of ``model`` whose weight carries an :class:`NMSparsify`, by qualified name."""
    found = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, NMSparsify):
                    found[name] = (module, p)
    return found


def attach(
    model: nn.Module, layers: dict[str, nn.Module], pattern: NMPattern, mode: Mode, decay: float = 0.0
) -> dict[str, str]:
    """Parametrize every layer in ``layers`` that can take ``pattern``; return the others with reasons."""
    already = _sparsified(model)
    skipped = {}
    for name, layer in layers.items():
        if name in already:
            raise ValueError(f"layer {name!r} already carries an N:M parametrization")
        reason = skip_reason(layer.weight, pattern)
        if reason:
            skipped[name] = reason
            continue
        parametrize.register_parametrization(layer, "weight", NMSparsify(layer.weight, pattern, mode, decay))
    return skipped


def set_pattern(model: nn.Module, pattern: NMPattern, fixed: bool) -> dict[str, str]:
    """Switch every attached layer to ``pattern`` (masks recomputed from the current dense weights).

    Layers whose input dim does not fit ``pattern`` run dense until the next switch; they are
    returned with reasons.
    """
    dense_now = {}
    for name, (module, sparsify) in _sparsified(model).items():
        original = module.parametrizations.weight.original
        reason = skip_reason(original, pattern)
        if reason:
            dense_now[name] = reason
        sparsify.set_pattern(original.detach(), None if reason else pattern, fixed)
    return dense_now


def finalize(model: nn.Module) -> dict[str, torch.Tensor]:
    """Bake the masked weights into the layers, remove the parametrizations, return the masks.

    A layer that runs dense under the current pattern (see :func:`set_pattern`) keeps its dense
    weight and gets no mask.
    """
    masks = {}
    for name, (module, sparsify) in _sparsified(model).items():
        if sparsify.pattern is not None:
            original = module.parametrizations.weight.original.detach()
            masks[name] = sparsify.mask.clone() if sparsify.mode == "fixed" else nm_mask(original, sparsify.pattern)
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return masks


def validate_nm(model: nn.Module, pruned: Pruned) -> float:
    """Check ``pruned``'s N:M claim against ``model``'s actual weights; return measured sparsity.

    Every mask must match its layer's weight shape, keep exactly N of every group of M (grouped
    as in :func:`nm_mask`), and the weight must be exactly zero wherever the mask is False.
    Measured sparsity is the fraction of exactly-zero weights (biases excluded) over the layers
    in ``pruned.masks`` plus ``pruned.skipped_layers``, so skipped layers count as dense.
    """
    pattern = pruned.pattern
    if not pruned.masks:
        if pattern is not None:
            raise MaskValidationError(f"pattern {pattern} is claimed but no layer has a mask")
        return 0.0
    if pattern is None:
        raise MaskValidationError("masks are given without an N:M pattern")
    modules = dict(model.named_modules())

    def weight_of(name: str) -> torch.Tensor:
        if name not in modules or not isinstance(getattr(modules[name], "weight", None), torch.Tensor):
            raise MaskValidationError(f"layer {name!r} is not a weighted module of the model")
        return modules[name].weight.detach()

    zeros = total = 0
    for name, mask in pruned.masks.items():
        weight = weight_of(name)
        if mask.dtype != torch.bool or mask.shape != weight.shape:
            raise MaskValidationError(
                f"{name}: mask {mask.dtype} {tuple(mask.shape)} does not fit weight {tuple(weight.shape)}"
            )
        reason = skip_reason(weight, pattern)
        if reason:
            raise MaskValidationError(f"{name}: cannot be {pattern}: {reason}")
        mask = mask.to(weight.device)
        kept = _groups(mask, pattern.m).sum(dim=-1)
        if not bool((kept == pattern.n).all()):
            bad = int((kept != pattern.n).sum())
            raise MaskValidationError(f"{name}: {bad} group(s) of {pattern.m} do not keep exactly {pattern.n}")
        stray = int((weight[~mask] != 0).sum())
        if stray:
            raise MaskValidationError(f"{name}: {stray} non-zero weight(s) where the mask prunes")
        zeros += int((weight == 0).sum())
        total += weight.numel()
    for name in pruned.skipped_layers:
        weight = weight_of(name)
        zeros += int((weight == 0).sum())
        total += weight.numel()
    return zeros / total


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the names and tensor bytes, in name order: equal digests mean equal masks (or weights)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def masked_result(ctx: MethodContext, state: Pruned, skipped: dict[str, str], info: dict) -> Pruned:
    """What a weight-sparsity method returns: ``state.model`` finalized at the run's pattern after
    ``ctx.train_steps`` more optimizer steps; a schedule already in ``state`` is kept."""
    return dataclasses.replace(
        state,
        masks=finalize(state.model),
        pattern=ctx.options.pattern,
        train_steps=state.train_steps + ctx.train_steps,
        skipped_layers=skipped,
        info=info,
    )
