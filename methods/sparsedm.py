"""SparseDM (Wang et al. 2024): N:M sparse transfer from the dense model with a dense teacher.

``sparsedm`` is the official transfer recipe (wangkafeng/SparseDM, ``train_c10_lsm3.py``): one stage
straight from dense to the target pattern for the whole budget; the mask is recomputed from the dense
latent weights at every forward (STE with SR-STE decay, ``options.srste_decay``) and the loss is the
noise MSE plus ``options.sparsedm_weight`` (0.1) times the MSE to the frozen dense teacher's prediction.

``sparsedm-chained`` is the official way to reach a ratio through intermediate ones: each ratio is a
separate run whose student **and teacher** start from the previous run's result (its EMA where the
preset's recipe keeps one), with a fresh optimizer and warm-up; the budget is split equally between
the runs and the split is recorded in the cell. Every run continues one batch and noise stream, so
step k sees what every other method sees at its step k.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from benchmark import hookimpl
from benchmark.api import Method, MethodContext, NMPattern, Pruned
from benchmark.sparsity import attach, masked_result, set_pattern
from benchmark.training import ExtraLoss, Optimisation, TrainingStream, train
from methods.progressive import stage_boundaries


def teacher_term(teacher: nn.Module, weight: float) -> ExtraLoss:
    """``extra_loss`` for :func:`benchmark.training.train`: ``weight * MSE(pred, teacher(x_t, t))``."""

    def extra_loss(model, x_t, t, noise, pred):
        with torch.no_grad():
            target = teacher(x_t, t)
        return weight * F.mse_loss(pred, target)

    return extra_loss


def frozen_copy(model: nn.Module) -> nn.Module:
    """The model as it is now, in eval mode and without gradients: the next run's teacher."""
    return copy.deepcopy(model).eval().requires_grad_(False)


class SparseDM(Method):
    name = "sparsedm"
    version = "2"
    description = "SparseDM transfer: dense -> N:M in one stage, STE plus 0.1 x MSE to the frozen dense teacher"
    knob = "pattern"
    budgets_share_work = True  # one call of the shared loop over the budget (the official recipe has one stage)

    def apply(self, ctx: MethodContext, state: Pruned) -> Pruned:
        pattern, decay = ctx.options.pattern, ctx.options.srste_decay
        skipped = attach(state.model, ctx.backbone.prunable_layers(state.model), pattern, mode="ste", decay=decay)
        losses = train(
            state.model, ctx, ctx.train_steps, extra_loss=teacher_term(ctx.teacher, ctx.options.sparsedm_weight),
            desc=self.name,
        )
        stage = {"pattern": str(pattern), "start": 0, "end": ctx.train_steps, "teacher": "dense",
                 "final_loss": losses[-1] if losses else None}
        info = {"stages": [stage], "teacher_weight": ctx.options.sparsedm_weight, "srste_decay": decay}
        return masked_result(ctx, state, skipped, info)


OFFICIAL_RATIOS = tuple(NMPattern(n, m) for n, m in ((7, 8), (3, 4), (2, 4), (1, 4), (1, 8), (1, 16), (1, 32)))
"""Ratios of the official chained-run loaders (``utils.py`` ``load_train_state_c10_ls_*``), densest first; the
release also has 31:32 and 15:16, denser than any step this budget can spend a run on, and no script that
fixes the order, so the chain follows density."""


def chain_patterns(pattern: NMPattern) -> list[NMPattern]:
    """The runs of a chained transfer to ``pattern``: the official ratios denser than it, then ``pattern``."""
    return [p for p in OFFICIAL_RATIOS if p.density > pattern.density] + [pattern]


class SparseDMChained(Method):
    name = "sparsedm-chained"
    version = "1"
    description = "SparseDM's chained runs 7:8 -> 3:4 -> 2:4, each taught by and started from the previous run"
    knob = "pattern"

    def apply(self, ctx: MethodContext, state: Pruned) -> Pruned:
        model = state.model
        pattern, decay = ctx.options.pattern, ctx.options.srste_decay
        skipped = attach(model, ctx.backbone.prunable_layers(model), pattern, mode="ste", decay=decay)
        patterns = chain_patterns(pattern)
        stream = TrainingStream.start(ctx)
        teacher, teacher_name = ctx.teacher, "dense"
        runs = []
        for (start, end), run_pattern in zip(stage_boundaries(ctx.train_steps, len(patterns)), patterns):
            dense_now = set_pattern(model, run_pattern, fixed=False)
            losses = []
            if end > start:  # a fresh optimizer and warm-up over this run's own steps
                losses = train(
                    model, ctx, end - start, extra_loss=teacher_term(teacher, ctx.options.sparsedm_weight),
                    desc=f"{self.name} {run_pattern}", stream=stream,
                    optimisation=Optimisation(model, ctx.preset.finetune, end - start),
                )
            runs.append({"pattern": str(run_pattern), "start": start, "end": end, "teacher": teacher_name,
                         "dense_layers": dense_now, "final_loss": losses[-1] if losses else None})
            teacher, teacher_name = frozen_copy(model), f"run {str(run_pattern)}"
        info = {"stages": runs, "teacher_weight": ctx.options.sparsedm_weight, "srste_decay": decay,
                "budget_split": [run["end"] - run["start"] for run in runs]}
        return masked_result(ctx, state, skipped, info)


@hookimpl
def register_methods(register):
    register(SparseDM())
    register(SparseDMChained())
