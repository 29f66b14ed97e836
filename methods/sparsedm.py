"""SparseDM: stage-wise transfer from the dense model to an N:M-sparse one.

Each stage of the :func:`methods.progressive.ladder` trains a new sparse model at a fixed ratio:
it starts from the previous stage's weights (the dense latent weights that STE keeps, as a
SparseDM checkpoint holds them), is re-masked at the stage's ratio, and is trained with STE and a
fresh optimizer on the noise loss plus ``options.sparsedm_weight`` times the MSE to the frozen
dense teacher's prediction. The last stage is the target pattern. The stages continue one batch
and noise stream, so step k sees the batch, timesteps and noise every other method sees at its
step k.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmark import hookimpl
from benchmark.api import Method, MethodContext, Pruned
from benchmark.sparsity import attach, masked_result, set_pattern
from benchmark.training import ExtraLoss, TrainingStream, train
from methods.progressive import ladder, stage_boundaries


def teacher_term(teacher: nn.Module, weight: float) -> ExtraLoss:
    """``extra_loss`` for :func:`benchmark.training.train`: ``weight * MSE(pred, teacher(x_t, t))``."""

    def extra_loss(model, x_t, t, noise, pred):
        with torch.no_grad():
            target = teacher(x_t, t)
        return weight * F.mse_loss(pred, target)

    return extra_loss


class SparseDM(Method):
    name = "sparsedm"
    version = "1"
    description = "stage-wise transfer through 7:8 ... 4:8 to 2:4, STE plus dense-teacher loss"
    knob = "pattern"

    def apply(self, ctx: MethodContext, state: Pruned) -> Pruned:
        model = state.model
        pattern = ctx.options.pattern
        decay = ctx.options.srste_decay
        skipped = attach(model, ctx.backbone.prunable_layers(model), pattern, mode="ste", decay=decay)
        extra_loss = teacher_term(ctx.teacher, ctx.options.sparsedm_weight)
        stages = ladder(pattern)
        stream = TrainingStream.start(ctx)
        stage_info = []
        for (start, end), stage in zip(stage_boundaries(ctx.train_steps, len(stages)), stages):
            dense_now = set_pattern(model, stage, fixed=False)
            losses = []
            if end > start:
                losses = train(
                    model, ctx, end - start, extra_loss=extra_loss, desc=f"{self.name} {stage}", stream=stream
                )
            stage_info.append(
                {
                    "pattern": str(stage),
                    "start": start,
                    "end": end,
                    "dense_layers": dense_now,
                    "final_loss": losses[-1] if losses else None,
                }
            )
        info = {"stages": stage_info, "teacher_weight": ctx.options.sparsedm_weight, "srste_decay": decay}
        return masked_result(ctx, state, skipped, info)


@hookimpl
def register_methods(register):
    register(SparseDM())
