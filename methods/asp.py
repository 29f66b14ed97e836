"""NVIDIA ASP recipe: one-shot magnitude N:M mask from the dense weights, then fine-tune with it fixed."""
from benchmark import hookimpl
from benchmark.api import Method, MethodContext, Pruned
from benchmark.sparsity import attach, masked_result
from benchmark.training import train


class ASP(Method):
    name = "asp"
    version = "1"
    description = "one-shot magnitude N:M mask along input channels, fine-tuned with the mask fixed"
    budgets_share_work = True  # one call of the shared loop over the budget
    knob = "pattern"

    def apply(self, ctx: MethodContext, state: Pruned) -> Pruned:
        model = state.model
        pattern = ctx.options.pattern
        skipped = attach(model, ctx.backbone.prunable_layers(model), pattern, mode="fixed")
        losses = train(model, ctx, ctx.train_steps, desc=self.name)
        info = {"mask": "fixed", "final_loss": losses[-1] if losses else None}
        return masked_result(ctx, state, skipped, info)


@hookimpl
def register_methods(register):
    register(ASP())
