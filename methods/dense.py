"""The dense reference: the starting checkpoint, untouched. Every leaderboard has this row."""
from benchmark import hookimpl
from benchmark.api import Method, MethodContext, Pruned


class Dense(Method):
    name = "dense"
    version = "1"
    trains_weights = False
    description = "unpruned starting checkpoint (the reference row)"

    def apply(self, ctx: MethodContext, state: Pruned) -> Pruned:
        return state


@hookimpl
def register_methods(register):
    register(Dense())
