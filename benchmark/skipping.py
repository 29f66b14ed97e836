"""Step-wise block skipping: a block either runs or reuses its output from the previous sampling step.

Gates are installed by patching each block instance's ``forward`` attribute (and restored afterwards),
so module names, state-dict keys and attributes that libraries such as diffusers read stay untouched.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch
from torch import nn
from torch.utils import _pytree as pytree

if TYPE_CHECKING:
    from benchmark.api import MethodContext

Gate = bool | torch.Tensor
"""Python True: run the block. False: reuse its cached output. A scalar tensor ``g``: ``g*run + (1-g)*cached``."""


class BlockGates:
    """Per-block gates for the current sampling step, patched onto the blocks' ``forward``.

    Use as a context manager; call :meth:`set_step` before each network evaluation. At step 0
    the cache is cleared and every block runs; a block whose cache is empty always runs.
    """

    def __init__(self, blocks: Sequence[tuple[str, nn.Module]]):
        self.modules = [module for _, module in blocks]
        self.step = 0
        self.gates: list[Gate] = [True] * len(self.modules)
        self.cache: list[Any] = [None] * len(self.modules)
        self._saved: list[tuple[nn.Module, Any]] = []

    def set_step(self, step: int, gates: Sequence[Gate]) -> None:
        if len(gates) != len(self.modules):
            raise ValueError(f"got {len(gates)} gates for {len(self.modules)} blocks")
        self.step = step
        self.gates = list(gates)
        if step == 0:
            self.cache = [None] * len(self.modules)

    def __enter__(self) -> "BlockGates":
        for index, module in enumerate(self.modules):
            self._saved.append((module, module.__dict__.get("forward")))
            module.forward = self._gated(index, module.forward)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for module, own_forward in self._saved:
            if own_forward is None:
                del module.forward
            else:
                module.forward = own_forward
        self._saved.clear()
        self.cache = [None] * len(self.modules)

    def _gated(self, index: int, forward: Callable[..., Any]) -> Callable[..., Any]:
        def gated_forward(*args: Any, **kwargs: Any) -> Any:
            gate, cached = self.gates[index], self.cache[index]
            if cached is not None and self.step > 0 and gate is False:
                return cached
            output = forward(*args, **kwargs)
            if cached is not None and self.step > 0 and isinstance(gate, torch.Tensor):
                output = pytree.tree_map(lambda new, old: _mix(gate, new, old), output, cached)
            self.cache[index] = output
            return output

        return gated_forward


def _mix(gate: torch.Tensor, new: Any, old: Any) -> Any:
    if isinstance(new, torch.Tensor) and new.is_floating_point():
        return gate * new + (1 - gate) * old
    return new


def validate_schedule(schedule: torch.Tensor, n_blocks: int) -> None:
    """Raise ValueError unless ``schedule`` is a bool ``[steps, n_blocks]`` tensor whose row 0 is all True."""
    if schedule.dtype != torch.bool or schedule.dim() != 2 or schedule.shape[1] != n_blocks:
        raise ValueError(
            f"a schedule must be a bool tensor [steps, {n_blocks}]; got {schedule.dtype} {list(schedule.shape)}"
        )
    if schedule.shape[0] == 0 or not bool(schedule[0].all()):
        raise ValueError("schedule row 0 must be all True: nothing is cached before the first step")


@contextmanager
def scheduled(
    model: nn.Module, blocks: Sequence[tuple[str, nn.Module]], schedule: torch.Tensor | None
) -> Iterator[Callable[[int], None] | None]:
    """Run ``model``'s ``blocks`` by ``schedule`` (True = run, False = reuse) while the context is open.

    Yields the ``on_step(i)`` callback for ``Diffusion.sample``/``denoise``, or None when ``schedule``
    is None. The blocks' original ``forward`` is restored on exit, also after an exception.
    """
    if schedule is None:
        yield None
        return
    validate_schedule(schedule, len(blocks))
    owned = {id(m) for m in model.modules()}
    foreign = [name for name, module in blocks if id(module) not in owned]
    if foreign:
        raise ValueError(f"blocks {foreign} are not part of the model (blocks of another copy?)")
    rows = schedule.tolist()

    with BlockGates(blocks) as gates:

        def on_step(step: int) -> None:
            if step >= len(rows):
                raise ValueError(f"sampling step {step} is beyond the schedule's {len(rows)} steps")
            gates.set_step(step, rows[step])

        yield on_step


def depths(n_blocks: int) -> list[float]:
    """Each block's distance from the middle of a U-shaped block list (0 for a middle block)."""
    centre = (n_blocks - 1) / 2
    return [abs(i - centre) for i in range(n_blocks)]


def cascade(keep: torch.Tensor, both_sides: bool = False, u_shaped: bool = True) -> torch.Tensor:
    """Keep gates ``[..., n_blocks]`` after DiP-GO's cascade rule: a block runs only where its output is used.

    U-shaped block list: blocks ``i`` and ``n - 1 - i`` sit at the same depth. When a block on the
    output side (the middle included) reuses its cache, every block at least as deep reuses too:
    their outputs would only feed it. So block ``i`` runs where its own gate and those of all
    output-side blocks at its depth or shallower are on. With ``both_sides`` (a backbone whose time
    step enters only through the first block) input-side blocks cascade alike: the deeper blocks would
    recompute the previous step's outputs from the previous step's inputs.

    Flat block list (``u_shaped=False``, e.g. DiT): a block that reuses its cached output replaces the
    whole hidden state, so every block before it is unused; block ``i`` runs where its own gate and
    those of all later blocks are on, i.e. a step recomputes a suffix of the blocks.

    Bool gates give bool, soft gates their product.
    """
    n = keep.shape[-1]
    depth = depths(n)
    columns = []
    for i in range(n):
        if u_shaped:
            cascading = [j for j in range(n) if j != i and depth[j] >= depth[i] and (both_sides or j >= (n - 1) / 2)]
        else:
            cascading = list(range(i + 1, n))
        gates = keep[..., [i, *cascading]]
        columns.append(gates.prod(-1) if keep.is_floating_point() else gates.all(-1))
    return torch.stack(columns, dim=-1)


def kept_macs_ratio(keep: torch.Tensor, block_macs: torch.Tensor, total_macs: float) -> torch.Tensor:
    """Trajectory MACs of a (possibly soft) keep schedule ``[steps, n_blocks]`` over dense trajectory MACs.

    Everything outside the blocks runs at every step; block ``j`` costs ``block_macs[j]`` where it runs.
    """
    block_macs = block_macs.to(keep.device, torch.float32)
    steps = keep.shape[0]
    always_run = total_macs - float(block_macs.sum())
    kept = steps * always_run + (keep.float() * block_macs).sum()
    return kept / (steps * total_macs)


def block_costs(ctx: "MethodContext", model: nn.Module, block_names: Sequence[str]) -> tuple[torch.Tensor, float]:
    """Dense per-sample MACs of each named block of ``model`` and of one whole evaluation of it (a model
    that an earlier method of a chain narrowed costs less than ``ctx.teacher``)."""
    from benchmark.metrics.macs import block_macs, count_macs

    inputs = tuple(x.to(ctx.device) for x in ctx.backbone.example_inputs(ctx.preset))
    report = count_macs(model, inputs)
    return torch.tensor(block_macs(report, list(block_names)), dtype=torch.float32), float(report.total)
