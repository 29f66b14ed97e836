"""The driver: check the input, plan the grid, prepare what cells share, execute, store, report.

Every cell is pruned, trained and measured under the same budget. A cell that raises is stored as
``failed`` with its traceback and the run goes on; a cell already complete under the same
configuration is skipped, so an interrupted run resumes where it stopped (Ctrl-C keeps every cell
stored so far).
"""
from __future__ import annotations

import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from benchmark.api import RunOptions
from benchmark.errors import BenchmarkError
from benchmark.grid.cell import CellResult, Shared
from benchmark.grid.execute import Executor, LocalExecutor, Ticket
from benchmark.grid.plan import CellKey, CellSpec, parse_request, plan_grid
from benchmark.grid.store import REFERENCE_METHOD, RENEW_SECONDS, CellStore
from benchmark.plugins import Registries
from benchmark.presets import Preset


@dataclass
class RunSummary:
    """The cells of a run by outcome, as :class:`CellKey` ``(backbone, method, seed, steps)``."""

    ok: list[CellKey] = field(default_factory=list)
    failed: list[CellKey] = field(default_factory=list)
    skipped: list[CellKey] = field(default_factory=list)  # already complete, not recomputed
    claimed: list[CellKey] = field(default_factory=list)  # being computed by another invocation


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
    budgets: list[int] | None = None,
) -> RunSummary:
    """Run every (backbone, method, seed) cell plus each backbone's dense reference; store cells and report.

    ``budgets`` (fine-tuning steps) make each weight-training chain one cell per budget (see
    :func:`benchmark.grid.plan.plan_grid`).

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
    cells = plan_grid(registries, chains, backbones, preset, options, seeds, str(device), dense_ids, fid_weights,
                      budgets)

    summary = RunSummary()
    pending = []
    for spec in cells:
        if store.is_complete(spec.backbone, spec.method, spec.seed, spec.config_hash, spec.steps):
            summary.skipped.append(spec.key)
            say(f"{label(spec.key)}: already complete, skipped")
        else:
            pending.append(spec)
    if pending:
        shared = _prepare(registries, preset, options, device, progress, n, dense_paths, failures,
                          {spec.backbone for spec in pending}, str(store.continuations_dir.resolve()))
        driver = _Driver(store, summary, say, cells, len(pending))
        with _renewing_claims(store), _terminate_as_interrupt():
            try:
                for result in (executor or LocalExecutor()).run(pending, shared, driver.start):
                    driver.finish(result)
            finally:
                store.release_all()
    report.publish(store.out_dir)
    return summary


class _Driver:
    """Claims each cell as an executor starts it and stores each result (with its seed's dense features) as
    it arrives."""

    def __init__(self, store: CellStore, summary: RunSummary, say, cells: list[CellSpec], pending: int):
        self.store, self.summary, self.say, self.pending, self.started = store, summary, say, pending, 0
        self.dense_hash = {(s.backbone, s.seed): s.config_hash for s in cells if s.method == REFERENCE_METHOD}

    def start(self, spec: CellSpec) -> Ticket | None:
        key, store = spec.key, self.store
        if store.is_complete(*key[:3], spec.config_hash, key.steps):  # another invocation finished it meanwhile
            self.summary.skipped.append(key)
            self.say(f"{label(key)}: completed by another invocation, skipped")
            return None
        if (holder := store.claim(*key)) is not None:
            self.summary.claimed.append(key)
            self.say(f"{label(key)}: being computed by {holder}, skipped")
            return None
        if store.is_complete(*key[:3], spec.config_hash, key.steps):  # finished between the check and the claim
            store.release(*key)
            self.summary.skipped.append(key)
            return None
        self.started += 1
        self.say(f"[{self.started}/{self.pending}] {label(key)}")
        features = None
        if spec.method != REFERENCE_METHOD:
            features = store.read_features(spec.backbone, spec.seed, self.dense_hash[spec.backbone, spec.seed])
        return Ticket(spec, features)

    def finish(self, result: CellResult) -> None:
        cell, store = result.record, self.store
        key = CellKey(cell["backbone"], cell["method"], cell["seed"], cell.get("steps"))
        store.write(cell, result.artefacts)
        if result.dense_features is not None:
            store.write_features(key.backbone, key.seed, self.dense_hash[key.backbone, key.seed], result.dense_features)
        store.release(*key)
        (self.summary.ok if cell["status"] == "ok" else self.summary.failed).append(key)
        detail = f"fid {cell['metrics']['fid']:.2f}" if cell["status"] == "ok" else cell["error"]
        self.say(f"{label(key)}: {cell['status']} in {cell['timings']['total']:.1f} s ({detail})")


def label(key: CellKey) -> str:
    """``ddpm/asp seed 0``, with ``at 1000 steps`` where the cell has a budget of its own."""
    steps = "" if key.steps is None else f" at {key.steps} steps"
    return f"{key.backbone}/{key.method} seed {key.seed}{steps}"


@contextmanager
def _renewing_claims(store: CellStore) -> Iterator[None]:
    """Renew the leases of the claims ``store`` holds every :data:`RENEW_SECONDS` until the block ends."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(RENEW_SECONDS):
            store.renew()

    thread = threading.Thread(target=renew, name="claim leases", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's kill, ``timeout``) stops the run as Ctrl-C does: finished cells stay, claims go."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
    dense_paths: dict[str, Path], failures: dict[str, BaseException], needed: set[str], continuations: str,
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
    return Shared(registries, preset, options, device, dense, real, scorer, progress, continuations)
