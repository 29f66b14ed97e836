"""Progressive sparse training: one model, dynamic STE masks, the ratio raised in stages.

For a target n:m the ladder runs (2m-1):(2m), (2m-2):(2m), ..., (2n):(2m) and ends at n:m
(7:8, 6:8, 5:8, 4:8, 2:4 for 2:4), as in SparseDM's progressive baseline (``train_c10_multi_step7.py``,
stages at 1/5 ... 4/5 of the budget). The optimizer and the model persist across stages; only the
pattern switches. This is that script's evident intent: as written, its training step keeps the
stage-0 network and optimizer, so the switch never reaches the network being trained.
"""
from benchmark import hookimpl
from benchmark.api import Method, MethodContext, NMPattern, Pruned
from benchmark.sparsity import attach, masked_result, set_pattern
from benchmark.training import train


def ladder(pattern: NMPattern) -> list[NMPattern]:
    """Stage patterns ending at ``pattern``, each at least as sparse as the one before."""
    wide = 2 * pattern.m
    return [NMPattern(n, wide) for n in range(wide - 1, 2 * pattern.n - 1, -1)] + [pattern]


def stage_boundaries(steps: int, n_stages: int) -> list[tuple[int, int]]:
    """Half-open ``[start, end)`` step ranges: equal stages, the remainder goes to the last."""
    length = steps // n_stages
    starts = [i * length for i in range(n_stages)]
    return list(zip(starts, starts[1:] + [steps]))


class Progressive(Method):
    name = "progressive"
    version = "1"
    description = "dynamic STE masks in one model with the N:M ratio raised in stages (7:8 ... 4:8, 2:4)"
    knob = "pattern"

    def apply(self, ctx: MethodContext, state: Pruned) -> Pruned:
        model = state.model
        pattern = ctx.options.pattern
        decay = ctx.options.srste_decay
        skipped = attach(model, ctx.backbone.prunable_layers(model), pattern, mode="ste", decay=decay)
        stages = ladder(pattern)
        bounds = stage_boundaries(ctx.train_steps, len(stages))
        switch_at = {start: stage for (start, end), stage in zip(bounds, stages) if end > start}
        dense_in_stage: dict[str, dict[str, str]] = {}

        def before_step(step: int) -> None:
            if step in switch_at:
                stage = switch_at[step]
                dense_in_stage[str(stage)] = set_pattern(model, stage, fixed=False)

        losses = train(model, ctx, ctx.train_steps, before_step=before_step, desc=self.name)
        stage_info = [
            {"pattern": str(stage), "start": start, "end": end, "dense_layers": dense_in_stage.get(str(stage), {})}
            for (start, end), stage in zip(bounds, stages)
        ]
        info = {"stages": stage_info, "srste_decay": decay, "final_loss": losses[-1] if losses else None}
        return masked_result(ctx, state, skipped, info)


@hookimpl
def register_methods(register):
    register(Progressive())
