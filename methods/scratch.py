"""The from-scratch control of structural pruning (Diff-Pruning's and Liu et al.'s): the architecture L1
channel pruning reaches at the same target (the uniform per-layer ratio with ``scratch@layer=0.3``),
re-initialised at random as the backbone initialises itself and trained with the same budget. A control,
not a pruning method: ``--methods all`` leaves it out; name it."""
from __future__ import annotations

import torch_pruning as tp

from benchmark import hookimpl
from benchmark.api import Method, MethodContext, Pruned
from benchmark.structural import channel_pruned


class Scratch(Method):
    name = "scratch"
    version = "1"
    description = "control: the pruned architecture at the same target, randomly re-initialised, same budget"
    budgets_share_work = True  # one call of the shared loop over the budget
    knob = "structural_target"
    in_all = False

    def apply(self, ctx: MethodContext, state: Pruned) -> Pruned:
        return channel_pruned(ctx, state, tp.importance.MagnitudeImportance(p=1), self.name,
                              {"initialisation": "random, as the backbone builds itself"}, reinitialise=True)


@hookimpl
def register_methods(register):
    register(Scratch())
