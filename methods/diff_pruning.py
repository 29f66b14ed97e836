"""Diff-Pruning (Fang, Ma, Wang, NeurIPS 2023): structural pruning by a Taylor importance over pruned timesteps.

Gradients of the noise-prediction loss are accumulated on one fixed batch and noise at timesteps
0, 1, 2, ... until the loss falls below ``options.diffpruning_threshold`` of its maximum (the paper's
default 0.05); each channel group scores ``Σ|w·∂L/∂w|`` (torch-pruning's ``TaylorImportance``,
``multivariable=False``). torch-pruning then removes the least important groups until the measured
MACs ratio meets ``options.structural_target``, and the smaller model is fine-tuned with the shared budget.
"""
from __future__ import annotations

import torch
import torch_pruning as tp

from benchmark import hookimpl
from benchmark.api import Method, MethodContext, Pruned
from benchmark.structural import channel_pruned, diffusion_gradients


class DiffPruning(Method):
    name = "diff-pruning"
    version = "1"
    description = "Diff-Pruning: Taylor channel importance over the low-noise timesteps, torch-pruning to a MACs target"
    budgets_share_work = True  # one call of the shared loop over the budget
    knob = "structural_target"

    def apply(self, ctx: MethodContext, state: Pruned) -> Pruned:
        x0 = next(ctx.batches()).to(ctx.device)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(ctx.seed)).to(ctx.device)
        was_training = state.model.training
        state.model.eval()  # as the release takes its gradients (no dropout here, so train mode would agree)
        losses = diffusion_gradients(state.model, ctx.diffusion, x0, noise, ctx.options.diffpruning_threshold)
        state.model.train(was_training)
        importance = tp.importance.TaylorImportance(multivariable=False)
        info = {"threshold": ctx.options.diffpruning_threshold, "gradient_timesteps": len(losses)}
        return channel_pruned(ctx, state, importance, self.name, info)


@hookimpl
def register_methods(register):
    register(DiffPruning())
