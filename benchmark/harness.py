"""Run the (backbone x method x seed) grid: every cell is pruned, trained and measured under the same budget.

Each backbone also gets its ``dense`` reference cell for every seed. A cell that raises is written as ``failed``
with its traceback and the run goes on; a cell already complete under the same configuration is
skipped, so an interrupted run resumes where it stopped (Ctrl-C keeps the cells written so far).
"""
from __future__ import annotations

import copy
import dataclasses
import platform
import random
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from benchmark.api import (
    Backbone,
    BenchmarkError,
    Method,
    MethodContext,
    NMPattern,
    PluginContractError,
    Pruned,
    RunOptions,
)
from benchmark.presets import Preset
from benchmark.registry import Registry, UnknownNameError
from benchmark.results import (
    REFERENCE_METHOD,
    SCHEMA_VERSION,
    CellStore,
    cell_stem,
    config_hash,
    environment_versions,
    now_iso,
)

if TYPE_CHECKING:
    from benchmark.diffusion import Diffusion
    from benchmark.metrics.fid import FIDEstimate, FIDScorer
    from benchmark.plugins import Registries

CHAIN_SEPARATOR = "+"
OPERATING_POINT = "@"  # dipgo@0.3: the method with its knob at 0.3
GRID_IMAGES = 64  # samples shown in samples/{backbone}__{method}__seed{seed}.png
FID_RESAMPLES = 200  # bootstrap resamples behind every FID interval
SAMPLING_PAIRS = 4  # alternating timings of dense and scheduled sampling behind a skip schedule's speedup


@dataclass
class RunSummary:
    """The cells of a run by outcome, as ``(backbone, method, seed)``."""

    ok: list[tuple[str, str, int]] = field(default_factory=list)
    failed: list[tuple[str, str, int]] = field(default_factory=list)
    skipped: list[tuple[str, str, int]] = field(default_factory=list)  # already complete, not recomputed


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
    """Expand ``--methods``: a comma list of names and ``a+b`` chains; ``all`` is every method, dense first.

    A part may set its method's operating point, ``dipgo@0.3`` (see :attr:`benchmark.api.Method.knob`).
    Every part of every chain must be registered; duplicates are dropped, the order is kept.
    """
    expanded: list[str] = []
    for item in (s.strip() for s in spec.split(",")):
        if item == "all":
            names = registry.names()
            candidates = sorted(names, key=lambda name: name != REFERENCE_METHOD)
        elif item:
            candidates = [CHAIN_SEPARATOR.join(canonical_part(registry, part) for part in split_chain(item))]
        else:
            continue
        expanded += [name for name in candidates if name not in expanded]
    if not expanded:
        raise UnknownNameError(f"no method given; available: {', '.join(registry.names())}")
    return expanded


def resolve_device(name: str | torch.device) -> torch.device:
    """``torch.device(name)``, refusing CUDA when this torch cannot use it."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BenchmarkError(f"unknown device {str(name)!r}; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchmarkError(
            f"device {str(name)!r} requested but CUDA is not available (torch {torch.__version__}); use --device cpu"
        )
    return device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()})"


def run_grid(
    registries: Registries,
    methods: list[str],
    backbones: list[str],
    preset: Preset,
    options: RunOptions,
    seeds: list[int],
    device: str | torch.device,
    out_dir: str | Path,
    progress: bool = True,
) -> RunSummary:
    """Run every (backbone, method, seed) cell plus each backbone's dense reference; write cells and leaderboard.

    Input errors (unknown names, unwritable ``out_dir``, missing CUDA, more FID samples than images,
    no FID Inception weights, an unloadable given checkpoint) raise :class:`BenchmarkError` before any
    cell runs. The seeds run one after another, so an interrupted run holds whole grids of the first ones.
    """
    grid = _Grid(registries, preset, options, resolve_device(device), Path(out_dir), progress)
    chains = [[canonical_part(registries.methods, part) for part in split_chain(method)] for method in methods]
    for backbone in backbones:
        registries.backbones.entry(backbone)
    if not seeds or len(set(seeds)) != len(seeds):
        raise BenchmarkError(f"seeds must be distinct and at least one, got {list(seeds)}")
    grid.check_fid_inputs()
    grid.store.ensure_writable()
    grid.identify_dense(backbones)

    unique_chains = [[REFERENCE_METHOD]]  # every backbone gets its reference row
    for chain in chains:
        if chain not in unique_chains:
            unique_chains.append(chain)
    summary = RunSummary()
    pending = []
    for seed in seeds:
        for backbone in backbones:
            for chain in unique_chains:
                method, config = CHAIN_SEPARATOR.join(chain), grid.config(backbone, chain, seed)
                if grid.store.is_complete(backbone, method, seed, config_hash(config)):
                    summary.skipped.append((backbone, method, seed))
                    grid.say(f"{backbone}/{method} seed {seed}: already complete, skipped")
                else:
                    pending.append((backbone, chain, seed, config))
    needed = {backbone for backbone, _, _, _ in pending}
    grid.load_dense_models([backbone for backbone in backbones if backbone in needed])

    for index, (backbone, chain, seed, config) in enumerate(pending, 1):
        label = f"[{index}/{len(pending)}] {backbone}/{CHAIN_SEPARATOR.join(chain)} seed {seed}"
        grid.say(label)
        cell = grid.run_cell(backbone, chain, seed, config)
        (summary.ok if cell["status"] == "ok" else summary.failed).append((backbone, cell["method"], seed))
        outcome = f"fid {cell['metrics']['fid']:.2f}" if cell["status"] == "ok" else cell["error"]
        grid.say(f"{label}: {cell['status']} in {cell['timings']['total']:.1f} s ({outcome})")

    from benchmark import leaderboard

    leaderboard.publish(grid.out_dir)
    return summary


class _Grid:
    """What the cells of one run share: the settings, the dense models and the FID network."""

    def __init__(
        self,
        registries: Registries,
        preset: Preset,
        options: RunOptions,
        device: torch.device,
        out_dir: Path,
        progress: bool,
    ):
        self.registries = registries
        self.preset = preset
        self.options = options
        self.device = device
        self.out_dir = out_dir
        self.progress = progress
        self.store = CellStore(out_dir)
        self.dense: dict[str, tuple[nn.Module, float] | BaseException] = {}
        self._fid_scorer: FIDScorer | None = None
        self._fid_weights: str | None = None  # identity of the Inception weights, checked before any cell
        self._dense_features: dict[tuple[str, int], np.ndarray] = {}  # FID features of dense samples by seed
        self._checkpoint_ids: dict[str, str] = {}  # by content, part of every cell's config
        self._checkpoint_paths: dict[str, Path] = {}

    @property
    def fid_scorer(self) -> FIDScorer:
        """One Inception network for the whole run, built when the first cell is scored."""
        if self._fid_scorer is None:
            from benchmark.metrics.fid import FIDScorer

            self._fid_scorer = FIDScorer(self.device, progress=self.progress)
        return self._fid_scorer

    def say(self, line: str) -> None:
        if self.progress:
            print(line, file=sys.stderr, flush=True)

    def config(self, backbone: str, chain: list[str], seed: int) -> dict[str, Any]:
        """Everything that changes a cell's numbers; its hash decides whether a stored cell is current."""
        return {
            "backbone": backbone,
            "method": CHAIN_SEPARATOR.join(chain),
            "preset": self.preset.to_dict(),
            "options": self.options.to_dict(),
            "seed": seed,
            "device": str(self.device),
            "method_versions": {
                name: self.registries.methods.get(name).version for name, _ in map(split_operating_point, chain)
            },
            "backbone_version": self.registries.backbones.get(backbone).version,
            "dense_checkpoint": self._checkpoint_ids[backbone],
            "fid": {"weights": self._fid_weights, "bootstrap_resamples": FID_RESAMPLES},
        }

    def fid_samples(self) -> int:
        return self.options.fid_samples or self.preset.fid_samples

    def check_fid_inputs(self) -> None:
        """Refuse more FID samples than the data set has, or missing Inception weights, before any cell."""
        from benchmark.data import load_dataset
        from benchmark.metrics import fid

        n, available = self.fid_samples(), len(load_dataset(self.preset.dataset))
        if not 2 <= n <= available:
            raise BenchmarkError(
                f"--fid-samples {n} is not possible: dataset {self.preset.dataset!r} has {available} images "
                f"(allowed: 2 to {available})"
            )
        self._fid_weights = fid.ensure_weights_available()

    def identify_dense(self, backbones: list[str]) -> None:
        """Find (or train) each backbone's dense checkpoint and identify it by content, before any cell.

        A failure is kept and fails that backbone's cells.
        """
        from benchmark import checkpoints

        for name in backbones:
            backbone = self.registries.backbones.get(name)
            try:
                path = checkpoints.dense_checkpoint(backbone, self.preset, self.options, self.device, self.progress)
                self._checkpoint_ids[name] = checkpoints.checkpoint_id(path)
            except (BenchmarkError, KeyboardInterrupt):
                raise
            except Exception as e:
                self._checkpoint_ids[name] = "unavailable"
                self.dense[name] = e
            else:
                self._checkpoint_paths[name] = path

    def load_dense_models(self, backbones: list[str]) -> None:
        """Load the dense model of each backbone that has a cell to compute.

        A user-given checkpoint that cannot be loaded is an input error; any other failure is kept
        and fails that backbone's cells.
        """
        from benchmark import checkpoints

        for name in backbones:
            if name not in self._checkpoint_paths:
                continue  # finding or training it failed: kept in self.dense
            start = time.perf_counter()
            try:
                model = checkpoints.load_dense(
                    self.registries.backbones.get(name), self.preset, self._checkpoint_paths[name], self.device
                )
            except (BenchmarkError, KeyboardInterrupt):
                raise
            except Exception as e:
                given = self.options.checkpoints.get(name)
                if given is not None:
                    raise BenchmarkError(f"cannot load dense checkpoint {given} for {name!r}: {e}") from e
                self.dense[name] = e
            else:
                self.dense[name] = (model.eval().requires_grad_(False), time.perf_counter() - start)

    def run_cell(self, backbone: str, chain: list[str], seed: int, config: dict[str, Any]) -> dict[str, Any]:
        """Compute one cell and write it; any exception but KeyboardInterrupt makes it a failed cell."""
        cell: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "backbone": backbone,
            "method": CHAIN_SEPARATOR.join(chain),
            "status": "failed",
            "error": None,
            "traceback": None,
            "config": config,
            "config_hash": config_hash(config),
            "versions": environment_versions(),
            "device": device_name(self.device),
            "seed": seed,
            "timings": {},
            "metrics": {},
            "info": {},
            "latency_report": None,
            "mask_digest": None,
            "pruned_model": None,  # models/{stem}.pt where the method changed layer shapes
            "started": now_iso(),
        }
        try:
            self._compute(self.registries.backbones.get(backbone), chain, seed, cell)
            cell["status"] = "ok"
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001 - one failing cell must not stop the grid
            cell["error"] = f"{type(e).__name__}: {e}"
            cell["traceback"] = "".join(traceback.format_exception(e))
        cell["timings"]["total"] = sum(cell["timings"].values())
        cell["finished"] = now_iso()
        self.store.write(cell)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return cell

    def _compute(self, backbone: Backbone, chain: list[str], seed: int, cell: dict[str, Any]) -> None:
        """Fill ``cell``'s timings, metrics and info in place, so a failure keeps what was measured."""
        from benchmark.diffusion import Diffusion

        timings, metrics, info = cell["timings"], cell["metrics"], cell["info"]
        loaded = self.dense[backbone.name]
        if isinstance(loaded, BaseException):
            raise RuntimeError(f"no dense model for {backbone.name!r}: {loaded}") from loaded
        dense, timings["load"] = loaded
        diffusion = Diffusion.for_preset(self.preset)

        with _timed(timings, "prune"):
            state = self._prune(backbone, dense, diffusion, chain, seed, info)
            if state.masks or state.pattern is not None:
                from benchmark.sparsity import masks_digest, validate_nm

                metrics["masked_sparsity"] = validate_nm(state.model, state)
                cell["mask_digest"] = masks_digest(state.masks)
            metrics["sparsity"] = removed_fraction(dense, state.model)
            metrics["train_steps"] = state.train_steps
            cell["pruned_model"] = self._save_architecture(dense, state.model, cell_stem(backbone.name, cell["method"], seed))
        model = state.model.eval()
        with _timed(timings, "metrics"), torch.no_grad():
            metrics.update(self._macs(backbone, state))
            metrics.update(self._latency(backbone, dense, diffusion, state, seed, cell))
        with _timed(timings, "fid"):
            metrics.update(self._quality(backbone, cell["method"], model, diffusion, state.schedule, seed))

    def _prune(
        self, backbone: Backbone, dense: nn.Module, diffusion: Diffusion, chain: list[str], seed: int,
        info: dict[str, Any],
    ) -> Pruned:
        from benchmark.data import batch_stream, load_dataset

        _seed_everything(seed)
        images = load_dataset(self.preset.dataset)
        ctx = MethodContext(
            backbone=backbone,
            preset=self.preset,
            options=self.options,
            diffusion=diffusion,
            teacher=copy.deepcopy(dense).eval().requires_grad_(False),
            batches=lambda: batch_stream(images, self.preset.batch_size, seed),
            train_steps=self.options.train_steps or self.preset.train_steps,
            seed=seed,
            device=self.device,
            progress=self.progress,
        )
        state = Pruned(model=copy.deepcopy(dense).requires_grad_(True))
        for part in chain:
            method = self.registries.methods.get(split_operating_point(part)[0])
            options = part_options(self.registries.methods, part, self.options)
            state = method.apply(dataclasses.replace(ctx, options=options), state)
            if not isinstance(state, Pruned):
                raise PluginContractError(f"method {part!r} returned {type(state).__name__}, not a Pruned")
            info[part] = state.info
        return state

    def _save_architecture(self, dense: nn.Module, model: nn.Module, stem: str) -> str | None:
        """Save a model whose layers changed shape to ``models/{stem}.pt``; its path relative to the run."""
        from benchmark import structural

        if not structural.architecture_changed(dense, model):
            return None
        path = structural.save_pruned(model, self.out_dir / "models" / f"{stem}.pt")
        return path.relative_to(self.out_dir).as_posix()

    def _macs(self, backbone: Backbone, state: Pruned) -> dict[str, Any]:
        """Params and per-sample MACs: dense, and effective (masked layers at N/M, skipped blocks removed)."""
        from benchmark.metrics import macs

        model = state.model
        report = macs.count_macs(model, self._inputs(backbone, 1))
        if state.schedule is not None:
            block_names = [name for name, _ in backbone.blocks(model)]
            effective = macs.trajectory_macs(report, block_names, state.schedule, state.masks or None, state.pattern)
        elif state.masks:
            effective = macs.sparse_macs(report, state.masks, state.pattern)
        else:
            effective = report.total
        return {"params_m": report.params / 1e6, "macs_g": report.total / 1e9, "sparse_macs_g": effective / 1e9}

    def _latency(
        self, backbone: Backbone, dense: nn.Module, diffusion: Diffusion, state: Pruned, seed: int,
        cell: dict[str, Any],
    ) -> dict[str, Any]:
        """Milliseconds of the dense model and of this row's, both measured the way ``latency_mode`` names.

        * a skip schedule: DDIM sampling time per step, the dense model without a schedule against the
          row's model with it;
        * 2:4 masks where PyTorch's semi-structured kernels run (CUDA sm80+): per evaluation in fp16,
          the masked model with dense kernels against 2:4 kernels (the full report goes to
          ``cell["latency_report"]``); other N:M patterns, or no such kernels: n/a;
        * anything else (dense, fine-tuned, structurally pruned): per evaluation, the dense model
          against the row's.

        Both sides of a pair are timed in alternation (:func:`benchmark.metrics.latency.paired_ms`),
        fp32 eager unless said otherwise, at the preset's latency batch on this cell's device.
        """
        from benchmark.metrics import latency

        batch, where = self.preset.latency_batch, self.device.type
        inputs = self._inputs(backbone, batch)
        if state.schedule is not None:
            timed = self._sampling_ms_per_step(backbone, dense, state, diffusion, seed)
            return _latency_metrics(f"sampling per step, fp32 eager, {where}, batch {batch}", *timed)
        if not state.masks:
            model = state.model.eval()
            timed = latency.paired_ms(latency.evaluation(dense, inputs), latency.evaluation(model, inputs), self.device)
            return _latency_metrics(f"per evaluation, fp32 eager, {where}, batch {batch}", *timed)
        supported, reason = latency.semi_structured_supported(self.device)
        if not supported or state.pattern != NMPattern(2, 4):
            not_available = reason if not supported else f"n/a (no {state.pattern} kernels)"
            return _latency_metrics(not_available, not_available, not_available, not_available)
        report = latency.sparse_latency_report(
            state.model, state.masks, lambda b: backbone.example_inputs(self.preset, b), [batch], self.device,
        )  # fmt: skip
        mode, timing = latency.headline_timing(report["batches"][0])
        cell["latency_report"] = {**report, "headline_mode": mode}
        return _latency_metrics(
            f"per evaluation, fp16 {latency.MODES[mode]}, {where}, batch {batch}", timing["dense_ms"],
            timing["sparse_ms"], timing["speedup"],
        )

    def _sampling_ms_per_step(
        self, backbone: Backbone, dense: nn.Module, state: Pruned, diffusion: Diffusion, seed: int
    ) -> tuple[float, float, float]:
        """Median sampling time per step at the latency batch of the dense model and of the row's with its
        schedule, and their median paired ratio."""
        from benchmark.metrics.latency import paired_ms
        from benchmark.skipping import scheduled

        batch, model = self.preset.latency_batch, state.model.eval()

        def sampler(net: nn.Module, schedule: torch.Tensor | None) -> Callable[[], None]:
            def run() -> None:
                generator = torch.Generator().manual_seed(seed)
                with torch.inference_mode(), scheduled(net, backbone.blocks(net), schedule) as on_step:
                    diffusion.sample(net, batch, batch, generator, on_step)

            return run

        dense_ms, ms, ratio = paired_ms(sampler(dense, None), sampler(model, state.schedule), self.device, warmup=1,
                                        pairs=SAMPLING_PAIRS)
        return dense_ms / diffusion.sample_steps, ms / diffusion.sample_steps, ratio

    def _quality(
        self, backbone: Backbone, method: str, model: nn.Module, diffusion: Diffusion, schedule: torch.Tensor | None,
        seed: int,
    ) -> dict[str, Any]:
        """Sample ``fid_samples`` images with the cell's schedule, save a grid and score FID with its interval.

        ``fid`` is against real images; ``fid_to_dense`` against the dense model's samples from the
        same noise, i.e. how far the method moves the dense sampler's distribution (0 for ``dense``).
        Each comes with the sd and 95% interval of a bootstrap over the generated samples.
        """
        from benchmark import plots
        from benchmark.data import load_dataset
        from benchmark.metrics import fid

        n = self.fid_samples()
        samples = self._samples(backbone, model, diffusion, schedule, n, seed)
        stem = cell_stem(backbone.name, method, seed)
        plots.save_grid(samples[:GRID_IMAGES], self.out_dir / "samples" / f"{stem}.png")
        features = self.fid_scorer.features(samples)
        if method == REFERENCE_METHOD:
            self._dense_features[backbone.name, seed] = features
            to_dense = fid.FIDEstimate(0.0, 0.0, 0.0, 0.0, 0)
        else:
            to_dense = fid.bootstrap_fid(features, self._dense_samples_features(backbone, diffusion, n, seed),
                                         FID_RESAMPLES, seed)
        dataset = self.preset.dataset
        real = fid.reference_features(dataset, n, lambda: load_dataset(dataset), self.fid_scorer)
        return {
            **_estimate_metrics("fid", fid.bootstrap_fid(features, real, FID_RESAMPLES, seed)),
            **_estimate_metrics("fid_to_dense", to_dense),
            "fid_samples": n,
            "sample_steps": diffusion.sample_steps,
            "sampler": "ddim (eta=0)",
        }

    def _dense_samples_features(self, backbone: Backbone, diffusion: Diffusion, n: int, seed: int) -> np.ndarray:
        """FID features of the dense samples of ``seed``, drawn again if its dense cell did not run in this run."""
        if (backbone.name, seed) not in self._dense_features:
            dense, _ = self.dense[backbone.name]  # loaded: this backbone has a cell to compute
            samples = self._samples(backbone, dense, diffusion, None, n, seed)
            self._dense_features[backbone.name, seed] = self.fid_scorer.features(samples)
        return self._dense_features[backbone.name, seed]

    def _samples(
        self, backbone: Backbone, model: nn.Module, diffusion: Diffusion, schedule: torch.Tensor | None, n: int,
        seed: int,
    ) -> torch.Tensor:
        """``n`` samples from the seed's noise, the same for every cell of that seed."""
        from benchmark.skipping import scheduled

        generator = torch.Generator().manual_seed(seed)
        with scheduled(model, backbone.blocks(model), schedule) as on_step:
            return diffusion.sample(model, n, self.preset.sample_batch, generator, on_step, self.progress)

    def _inputs(self, backbone: Backbone, batch: int) -> tuple[torch.Tensor, ...]:
        return tuple(x.to(self.device) for x in backbone.example_inputs(self.preset, batch))


def _estimate_metrics(name: str, estimate: FIDEstimate) -> dict[str, float]:
    """``name`` and its bootstrap ``_sd``, ``_low`` and ``_high``."""
    return {name: estimate.value, f"{name}_sd": estimate.sd, f"{name}_low": estimate.low, f"{name}_high": estimate.high}


def _latency_metrics(mode: str, dense_ms: float | str, ms: float | str, speedup: float | str) -> dict[str, Any]:
    """The row's latency pair and speedup; a text (why it is n/a) in place of numbers that could not be measured."""
    return {"latency_mode": mode, "dense_latency_ms": dense_ms, "latency_ms": ms, "speedup": speedup}


def removed_fraction(dense: nn.Module, model: nn.Module) -> float:
    """Share of the dense model's parameters that ``model`` no longer has or holds at exactly zero."""
    total = sum(p.numel() for p in dense.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    return 1.0 - nonzero / total


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


@contextmanager
def _timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[phase] = time.perf_counter() - start
