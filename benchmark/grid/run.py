"""The driver: check the input, plan the grid, prepare what cells share, execute, store, report.

Every cell is pruned, trained and measured under the same budget. A cell that raises is stored as
``failed`` with its traceback and the run goes on; a cell already complete under the same
configuration is skipped, so an interrupted run resumes where it stopped (Ctrl-C keeps every cell
stored so far).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmark.api import RunOptions
from benchmark.errors import BenchmarkError
from benchmark.grid.cell import Shared
from benchmark.grid.execute import Executor, LocalExecutor
from benchmark.grid.plan import CellSpec, parse_request, plan_grid
from benchmark.grid.store import CellStore
from benchmark.plugins import Registries
from benchmark.presets import Preset


@dataclass
class RunSummary:
    """The cells of a run by outcome, as ``(backbone, method, seed)``."""

    ok: list[tuple[str, str, int]] = field(default_factory=list)
    failed: list[tuple[str, str, int]] = field(default_factory=list)
    skipped: list[tuple[str, str, int]] = field(default_factory=list)  # already complete, not recomputed
    claimed: list[tuple[str, str, int]] = field(default_factory=list)  # being computed by another invocation


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
    executor: Executor | None = None,
) -> RunSummary:
    """Run every (backbone, method, seed) cell plus each backbone's dense reference; store cells and report.

    Input errors (unknown names, unwritable ``out_dir``, missing CUDA, more FID samples than images,
    no FID Inception weights, an unloadable given checkpoint) raise :class:`BenchmarkError` before any
    cell runs. The seeds run one after another, so an interrupted run holds whole grids of the first ones.
    """
    from benchmark.grid import report
    from benchmark.metrics import fid

    device = resolve_device(device)
    say = _printer(progress)
    store = CellStore(out_dir)
    chains = parse_request(registries, methods, backbones, seeds)
    n = _check_fid_samples(preset, options)
    fid_weights = fid.ensure_weights_available()
    store.ensure_writable()
    dense_ids, dense_paths, failures = _identify_dense(registries, backbones, preset, options, device, progress)
    cells = plan_grid(registries, chains, backbones, preset, options, seeds, str(device), dense_ids, fid_weights)

    summary = RunSummary()
    pending: list[CellSpec] = []
    try:
        for spec in cells:
            key = (spec.backbone, spec.method, spec.seed)
            if store.is_complete(*key, spec.config_hash):
                summary.skipped.append(key)
                say(f"{spec.backbone}/{spec.method} seed {spec.seed}: already complete, skipped")
            elif (holder := store.claim(*key)) is not None:
                summary.claimed.append(key)
                say(f"{spec.backbone}/{spec.method} seed {spec.seed}: being computed by {holder}, skipped")
            elif store.is_complete(*key, spec.config_hash):  # finished between the check and the claim
                store.release(*key)
                summary.skipped.append(key)
            else:
                pending.append(spec)
        if pending:
            shared = _prepare(registries, preset, options, device, progress, n, dense_paths, failures,
                              {spec.backbone for spec in pending})
            _execute(pending, shared, store, summary, say, executor or LocalExecutor())
    finally:
        for spec in pending:
            store.release(spec.backbone, spec.method, spec.seed)
    report.publish(store.out_dir)
    return summary


def _execute(
    pending: list[CellSpec], shared: Shared, store: CellStore, summary: RunSummary, say, executor: Executor
) -> None:
    """Compute the pending cells and store each result (then drop its claim) as it arrives."""
    numbers = {spec: f"[{i}/{len(pending)}]" for i, spec in enumerate(pending, 1)}
    for result in executor.run(
        pending, shared, lambda spec: say(f"{numbers[spec]} {spec.backbone}/{spec.method} seed {spec.seed}")
    ):
        cell = result.record
        store.write(cell, result.artefacts)
        store.release(cell["backbone"], cell["method"], cell["seed"])
        (summary.ok if cell["status"] == "ok" else summary.failed).append((cell["backbone"], cell["method"], cell["seed"]))
        detail = f"fid {cell['metrics']['fid']:.2f}" if cell["status"] == "ok" else cell["error"]
        say(f"{cell['backbone']}/{cell['method']} seed {cell['seed']}: {cell['status']} in "
            f"{cell['timings']['total']:.1f} s ({detail})")


def _printer(progress: bool):
    def say(line: str) -> None:
        if progress:
            print(line, file=sys.stderr, flush=True)

    return say


def _check_fid_samples(preset: Preset, options: RunOptions) -> int:
    """Refuse more FID samples than the data set has, before any cell; the sample count."""
    from benchmark.data import load_dataset

    n, available = options.fid_samples or preset.fid_samples, len(load_dataset(preset.dataset))
    if not 2 <= n <= available:
        raise BenchmarkError(
            f"--fid-samples {n} is not possible: dataset {preset.dataset!r} has {available} images "
            f"(allowed: 2 to {available})"
        )
    return n


def _identify_dense(
    registries: Registries, backbones: list[str], preset: Preset, options: RunOptions, device: torch.device,
    progress: bool,
) -> tuple[dict[str, str], dict[str, Path], dict[str, BaseException]]:
    """Find (or train) each backbone's dense checkpoint and identify it by content, before any cell.

    A failure is kept and fails that backbone's cells; input errors raise.
    """
    from benchmark import checkpoints

    ids, paths, failures = {}, {}, {}
    for name in backbones:
        backbone = registries.backbones.get(name)
        try:
            path = checkpoints.dense_checkpoint(backbone, preset, options, device, progress)
            ids[name] = checkpoints.checkpoint_id(path)
        except (BenchmarkError, KeyboardInterrupt):
            raise
        except Exception as e:
            ids[name], failures[name] = "unavailable", e
        else:
            paths[name] = path
    return ids, paths, failures


def _prepare(
    registries: Registries, preset: Preset, options: RunOptions, device: torch.device, progress: bool, n: int,
    dense_paths: dict[str, Path], failures: dict[str, BaseException], needed: set[str],
) -> Shared:
    """Load the dense model of each backbone with a cell to compute and the FID network and reference features.

    A user-given checkpoint that cannot be loaded is an input error; any other failure is kept and
    fails that backbone's cells.
    """
    from benchmark import checkpoints
    from benchmark.data import load_dataset
    from benchmark.metrics import fid

    dense: dict = dict(failures)
    for name in sorted(needed - failures.keys()):
        start = time.perf_counter()
        try:
            model = checkpoints.load_dense(registries.backbones.get(name), preset, dense_paths[name], device)
        except (BenchmarkError, KeyboardInterrupt):
            raise
        except Exception as e:
            given = options.checkpoints.get(name)
            if given is not None:
                raise BenchmarkError(f"cannot load dense checkpoint {given} for {name!r}: {e}") from e
            dense[name] = e
        else:
            dense[name] = (model.eval().requires_grad_(False), time.perf_counter() - start)
    scorer = fid.FIDScorer(device, progress=progress)
    real = fid.reference_features(preset.dataset, n, lambda: load_dataset(preset.dataset), scorer)
    return Shared(registries, preset, options, device, dense, real, scorer, progress)
