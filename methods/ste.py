"""STE / SR-STE sparse fine-tuning: the N:M mask is recomputed from the dense weights every step."""
from benchmark import hookimpl
from benchmark.api import Method, MethodContext, Pruned
from benchmark.sparsity import attach, masked_result
from benchmark.training import train


class STE(Method):
    name = "ste"
    version = "1"
    description = "dynamic N:M mask with straight-through gradients and SR-STE decay (options.srste_decay)"
    budgets_share_work = True  # one call of the shared loop over the budget
    knob = "pattern"

    def apply(self, ctx: MethodContext, state: Pruned) -> Pruned:
        model = state.model
        pattern = ctx.options.pattern
        decay = ctx.options.srste_decay
        skipped = attach(model, ctx.backbone.prunable_layers(model), pattern, mode="ste", decay=decay)
        losses = train(model, ctx, ctx.train_steps, desc=self.name)
        info = {"mask": "dynamic", "srste_decay": decay, "final_loss": losses[-1] if losses else None}
        return masked_result(ctx, state, skipped, info)


@hookimpl
def register_methods(register):
    register(STE())
