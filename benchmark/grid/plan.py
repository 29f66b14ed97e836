"""Planning: the requested grid becomes one :class:`CellSpec` per (seed, backbone, method, budget), each with
the configuration that decides its numbers and that configuration's hash.

Methods are names, ``a+b`` chains and ``name@value`` operating points (a method's knob set to
``value``). Every backbone gets its ``dense`` reference cell for every seed; the other cells of the seed
compare their samples with its samples.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from benchmark.api import Method, RunOptions
from benchmark.errors import BenchmarkError
from benchmark.grid.store import REFERENCE_METHOD, config_hash
from benchmark.registry import Registry, UnknownNameError

if TYPE_CHECKING:
    from benchmark.plugins import Registries
    from benchmark.presets import Preset

CHAIN_SEPARATOR = "+"
OPERATING_POINT = "@"  # dipgo@0.3: the method with its knob at 0.3
FID_RESAMPLES = 200  # bootstrap resamples behind every FID interval
BUDGETS_GROUP = "budgets"  # a work group of one cell's budgets, the smallest first


class CellKey(NamedTuple):
    """What names a cell in the store: ``steps`` is None at the preset's budget and for methods that train
    no weights."""

    backbone: str
    method: str
    seed: int
    steps: int | None = None


@dataclass(frozen=True)
class CellSpec:
    """One cell to compute: everything a worker needs besides the shared inputs of its backbone."""

    backbone: str
    chain: tuple[str, ...]
    seed: int
    config: dict[str, Any] = field(compare=False, hash=False)
    steps: int | None = None  # the fine-tuning budget where it is not the preset's (a --train-steps list)
    work_group: tuple[Any, ...] | None = field(default=None, compare=False, hash=False)
    """Cells with one work group share work a worker keeps: a search (:attr:`benchmark.api.Method.points_share_work`)
    or a training that larger budgets continue (:attr:`benchmark.api.Method.budgets_share_work`)."""

    @property
    def method(self) -> str:
        return CHAIN_SEPARATOR.join(self.chain)

    @property
    def key(self) -> CellKey:
        return CellKey(self.backbone, self.method, self.seed, self.steps)

    @property
    def config_hash(self) -> str:
        return config_hash(self.config)

    @property
    def continuation(self) -> str | None:
        """The key under which its training continues a smaller budget's, where its budgets share work."""
        return self.work_group[1] if self.work_group and self.work_group[0] == BUDGETS_GROUP else None


def split_chain(method: str) -> list[str]:
    """``"sparsedm+dipgo"`` -> ``["sparsedm", "dipgo"]``; an empty part is an error."""
    parts = [part.strip() for part in method.split(CHAIN_SEPARATOR)]
    if not all(parts):
        raise BenchmarkError(f"malformed method chain {method!r}: write it as a+b with method names")
    return parts


def split_operating_point(part: str) -> tuple[str, str | None]:
    """``"dipgo@0.3"`` -> ``("dipgo", "0.3")``; ``"dipgo"`` -> ``("dipgo", None)``."""
    name, at, value = part.partition(OPERATING_POINT)
    return name.strip(), (value.strip() if at else None)


def canonical_part(registry: Registry[Method], part: str) -> str:
    """A chain part checked against the registry, its operating point spelled canonically (``asp@2:4``)."""
    name, value = split_operating_point(part)
    method = registry.get(name)
    if value is None:
        return name
    if method.knob is None:
        with_knobs = [m.name for m in (registry.get(n) for n in registry.names()) if m.knob is not None]
        raise BenchmarkError(
            f"method {name!r} has no operating point to set ({part!r}); methods with one: {', '.join(with_knobs)}"
        )
    try:
        _, canonical = RunOptions().with_knob(method.knob, value)
    except BenchmarkError as e:
        raise BenchmarkError(f"bad operating point {part!r} ({method.knob}): {e}") from None
    return f"{name}{OPERATING_POINT}{canonical}"


def part_options(registry: Registry[Method], part: str, options: RunOptions) -> RunOptions:
    """The options one chain part runs with: ``options`` with its knob set where the part names a value."""
    name, value = split_operating_point(part)
    return options if value is None else options.with_knob(registry.get(name).knob, value)[0]


def expand_methods(registry: Registry[Method], spec: str) -> list[str]:
    """Expand ``--methods``: a comma list of names and ``a+b`` chains; ``all`` is every method but the controls
    that say so (:attr:`benchmark.api.Method.in_all`), dense first.

    A part may set its method's operating point, ``dipgo@0.3`` (see :attr:`benchmark.api.Method.knob`).
    Every part of every chain must be registered; duplicates are dropped, the order is kept.
    """
    expanded: list[str] = []
    for item in (s.strip() for s in spec.split(",")):
        if item == "all":
            names = [name for name in registry.names() if registry.get(name).in_all]
            candidates = sorted(names, key=lambda name: name != REFERENCE_METHOD)
        elif item:
            candidates = [CHAIN_SEPARATOR.join(canonical_part(registry, part) for part in split_chain(item))]
        else:
            continue
        expanded += [name for name in candidates if name not in expanded]
    if not expanded:
        raise UnknownNameError(f"no method given; available: {', '.join(registry.names())}")
    return expanded


def cell_config(
    registries: Registries, preset: Preset, options: RunOptions, device: str, backbone: str, chain: tuple[str, ...],
    seed: int, dense_checkpoint: str, fid_weights: str,
) -> dict[str, Any]:
    """Everything that changes a cell's numbers; its hash decides whether a stored cell is current."""
    return {
        "backbone": backbone,
        "method": CHAIN_SEPARATOR.join(chain),
        "preset": preset.to_dict(conditional=registries.backbones.get(backbone).conditional),
        "options": options.to_dict(),
        "seed": seed,
        "device": device,
        "method_versions": {name: registries.methods.get(name).version for name, _ in map(split_operating_point, chain)},
        "backbone_version": registries.backbones.get(backbone).version,
        "dense_checkpoint": dense_checkpoint,
        "fid": {"weights": fid_weights, "bootstrap_resamples": FID_RESAMPLES},
    }


def parse_request(registries: Registries, methods: list[str], backbones: list[str],
                  seeds: list[int]) -> list[tuple[str, ...]]:
    """The requested chains, checked and spelled canonically; unknown names and repeated seeds raise
    :class:`BenchmarkError` before any work."""
    chains = [tuple(canonical_part(registries.methods, part) for part in split_chain(m)) for m in methods]
    for backbone in backbones:
        registries.backbones.entry(backbone)
    if not seeds or len(set(seeds)) != len(seeds):
        raise BenchmarkError(f"seeds must be distinct and at least one, got {list(seeds)}")
    return chains


def trains_weights(registries: Registries, chain: tuple[str, ...]) -> bool:
    """Whether any method of the chain fine-tunes weights with the run's budget."""
    return any(registries.methods.get(split_operating_point(part)[0]).trains_weights for part in chain)


def work_group(registries: Registries, backbone: str, chain: tuple[str, ...], seed: int,
               steps: int | None) -> tuple[Any, ...] | None:
    """The cells that differ only in the last method's operating point, where that method's points share work:
    ``sparsedm+dipgo@0.3`` and ``sparsedm+dipgo`` on one backbone, seed and budget; None for other methods."""
    name = split_operating_point(chain[-1])[0]
    if not registries.methods.get(name).points_share_work:
        return None
    return backbone, seed, steps, *chain[:-1], name


def budgets_group(registries: Registries, preset: Preset, chain: tuple[str, ...], budgets: list[int],
                  config: dict[str, Any]) -> tuple[str, str] | None:
    """The work group of a one-method chain's budgets where a larger budget may continue a smaller one's
    training (:attr:`benchmark.api.Method.budgets_share_work`, a constant fine-tuning learning rate, several
    budgets), named by the hash of the cell's configuration without its budget; None otherwise."""
    method = registries.methods.get(split_operating_point(chain[0])[0])
    if len(chain) > 1 or len(budgets) < 2 or not method.budgets_share_work or not preset.finetune.budget_independent:
        return None
    return BUDGETS_GROUP, config_hash({**config, "options": {**config["options"], "train_steps": None}})


def plan_grid(
    registries: Registries, chains: list[tuple[str, ...]], backbones: list[str], preset: Preset, options: RunOptions,
    seeds: list[int], device: str, dense_checkpoints: dict[str, str], fid_weights: str,
    budgets: list[int] | None = None,
) -> list[CellSpec]:
    """Every cell of the grid once, seed-major; within a seed, larger fine-tuning budgets first, then each
    backbone's dense reference before its other cells (executors start a cell whose dense cell is still to
    come only after it: :class:`benchmark.grid.execute.CellQueue`). The budgets of a cell whose larger
    budgets continue the smaller ones' training (:func:`budgets_group`) stay together, the smallest first,
    where their largest budget would start.

    ``dense_checkpoints`` identifies each backbone's starting checkpoint by content. ``budgets`` (fine-tuning
    steps; default: ``options.train_steps``, else the preset's) gives a chain that trains weights one cell per
    budget; a chain that trains none gets one cell, which serves every budget. A budget equal to the
    preset's is spelled as the preset's default (``train_steps`` null), so those cells are the same cells a
    run without ``--train-steps`` makes.
    """
    unique = [(REFERENCE_METHOD,)]
    for chain in chains:
        if chain not in unique:
            unique.append(chain)
    budgets = budgets or [options.train_steps or preset.train_steps]
    cells = []
    for seed in seeds:
        for backbone in backbones:
            for chain in unique:
                trains = trains_weights(registries, chain)
                for budget in (budgets if trains else [None]):
                    steps = None if budget == preset.train_steps else budget
                    cell_options = replace(options, train_steps=steps)
                    config = cell_config(registries, preset, cell_options, device, backbone, chain, seed,
                                         dense_checkpoints[backbone], fid_weights)
                    group = (budgets_group(registries, preset, chain, budgets, config)
                             or work_group(registries, backbone, chain, seed, steps))
                    cells.append(CellSpec(backbone, chain, seed, config, steps, group))
    return sorted(cells, key=_start_order(cells, seeds, preset.train_steps))


def _start_order(cells: list[CellSpec], seeds: list[int], default_steps: int) -> Callable[[CellSpec], tuple[int, ...]]:
    """The sort key: within a seed, larger budgets first (the long cells start early and short ones fill the
    tail); a budgets group sits at its largest budget's place, its own cells smallest first."""
    position = {cell: i for i, cell in enumerate(cells)}
    leads: dict[Any, tuple[int, int]] = {}  # a budgets group -> (its largest budget, its first cell's position)
    for cell in cells:
        if cell.continuation is not None:
            largest, first = leads.get(cell.work_group, (0, position[cell]))
            leads[cell.work_group] = (max(largest, cell.steps or default_steps), first)

    def key(cell: CellSpec) -> tuple[int, ...]:
        budget = cell.steps or default_steps
        if cell.continuation is None:
            return seeds.index(cell.seed), -budget, position[cell], 0
        largest, first = leads[cell.work_group]
        return seeds.index(cell.seed), -largest, first, budget

    return key
