"""The fine-tuning control: the dense checkpoint trained with the same budget as every sparse method.

Fine-tuning alone can change FID (a lower learning rate than the checkpoint was trained with, more
steps); comparing a sparse method with this row instead of ``dense`` isolates what sparsity costs.
"""
import dataclasses

from benchmark import hookimpl
from benchmark.api import Method, MethodContext, Pruned
from benchmark.training import train


class DenseFineTuned(Method):
    name = "dense-ft"
    version = "1"
    description = "dense checkpoint fine-tuned with the shared budget, no mask (control for 2:4 methods)"
    budgets_share_work = True  # one call of the shared loop over the budget

    def apply(self, ctx: MethodContext, state: Pruned) -> Pruned:
        losses = train(state.model, ctx, ctx.train_steps, desc=self.name)
        return dataclasses.replace(
            state, train_steps=state.train_steps + ctx.train_steps, info={"final_loss": losses[-1] if losses else None}
        )


@hookimpl
def register_methods(register):
    register(DenseFineTuned())
