"""The magnitude baseline of Diff-Pruning's comparison: channel groups ranked by the L1 norm of their
weights, removed by the same torch-pruning pruner to the same MACs target, fine-tuned with the same budget."""
from __future__ import annotations

import torch_pruning as tp

from benchmark import hookimpl
from benchmark.api import Method, MethodContext, Pruned
from benchmark.structural import channel_pruned


class L1Channel(Method):
    name = "l1-channel"
    version = "1"
    description = "L1-magnitude channel pruning with torch-pruning to the same MACs target (Diff-Pruning's baseline)"
    budgets_share_work = True  # one call of the shared loop over the budget
    knob = "structural_target"

    def apply(self, ctx: MethodContext, state: Pruned) -> Pruned:
        return channel_pruned(ctx, state, tp.importance.MagnitudeImportance(p=1), self.name)


@hookimpl
def register_methods(register):
    register(L1Channel())
