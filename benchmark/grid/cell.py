"""One cell from its spec: prune -> validate -> measure -> score. It returns its record and the files it
made, and writes nothing itself, so any executor can run it and the store decides where results go."""
from __future__ import annotations

import io
import platform
import random
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch
from torch import nn

from benchmark.api import Backbone, Pruned, RunOptions
from benchmark.grid.plan import FID_RESAMPLES, CellSpec
from benchmark.grid.store import REFERENCE_METHOD, SCHEMA_VERSION, cell_stem, environment_versions, now_iso

if TYPE_CHECKING:
    from benchmark.diffusion import Diffusion
    from benchmark.metrics.fid import FIDEstimate, FIDScorer
    from benchmark.plugins import Registries
    from benchmark.presets import Preset

GRID_IMAGES = 64  # samples shown in samples/{stem}.png


@dataclass
class Shared:
    """What the cells of a run read and never change: settings, each backbone's dense model, FID inputs."""

    registries: Registries
    preset: Preset
    options: RunOptions
    device: torch.device
    dense: dict[str, tuple[nn.Module, float] | BaseException]  # backbone -> (model, load seconds) or the failure
    real_features: np.ndarray  # FID features of the preset's reference images
    scorer: FIDScorer
    progress: bool = True
    continuations: str | None = None  # the run directory's folder of training continuations (budgets that share work)


@dataclass
class CellResult:
    record: dict[str, Any]
    artefacts: dict[str, bytes]  # run-relative path -> content, for the store to write
    dense_features: np.ndarray | None = None  # features of the seed's dense samples, where this cell drew them


def compute_cell(spec: CellSpec, shared: Shared, dense_features: np.ndarray | None = None) -> CellResult:
    """Compute one cell; any exception but KeyboardInterrupt makes it a ``failed`` record with its traceback,
    keeping what was measured before it.

    ``dense_features`` are the FID features of the seed's dense samples where its dense cell already
    gave them; without them a non-dense cell draws the dense samples itself (and returns their features).
    """
    result = CellResult(_new_record(spec, shared), {})
    record = result.record
    try:
        _compute(spec, shared, dense_features, result)
        record["status"] = "ok"
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 - one failing cell must not stop the grid
        record["error"] = f"{type(e).__name__}: {e}"
        record["traceback"] = "".join(traceback.format_exception(e))
    record["timings"]["total"] = sum(record["timings"].values())
    record["finished"] = now_iso()
    if shared.device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def failed_record(spec: CellSpec, shared: Shared, error: str, trace: str) -> dict[str, Any]:
    """The record of a cell whose computation could not report back (its worker died)."""
    record = _new_record(spec, shared)
    record.update(error=error, traceback=trace, finished=now_iso())
    record["timings"]["total"] = 0.0
    return record


def _new_record(spec: CellSpec, shared: Shared) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION,
        "backbone": spec.backbone,
        "method": spec.method,
        "status": "failed",
        "error": None,
        "traceback": None,
        "config": spec.config,
        "config_hash": spec.config_hash,
        "versions": environment_versions(),
        "device": device_name(shared.device),
        "seed": spec.seed,
        "steps": spec.steps,
        "threads": torch.get_num_threads(),
        "timings": {},
        "metrics": {},
        "info": {},
        "latency_report": None,
        "mask_digest": None,
        "pruned_model": None,  # models/{stem}.pt where the method changed layer shapes
        "started": now_iso(),
    }


def _compute(spec: CellSpec, shared: Shared, dense_features: np.ndarray | None, result: CellResult) -> None:
    """Fill the record's timings, metrics and info in place, so a failure keeps what was measured."""
    from benchmark.diffusion import Diffusion
    from benchmark.grid import measure, quiet

    record = result.record
    timings, metrics, info = record["timings"], record["metrics"], record["info"]
    backbone = shared.registries.backbones.get(spec.backbone)
    loaded = shared.dense[spec.backbone]
    if isinstance(loaded, BaseException):
        raise RuntimeError(f"no dense model for {spec.backbone!r}: {loaded}") from loaded
    dense, timings["load"] = loaded
    diffusion = Diffusion.for_backbone(backbone, shared.preset)
    stem = cell_stem(*spec.key)

    with _timed(timings, "prune"):
        state = _prune(spec, shared, backbone, dense, info, metrics)
        if state.masks or state.pattern is not None:
            from benchmark.sparsity import tensors_digest, validate_nm

            metrics["masked_sparsity"] = validate_nm(state.model, state)
            record["mask_digest"] = tensors_digest(state.masks)
        metrics["sparsity"] = measure.removed_fraction(dense, state.model)
        metrics["train_steps"] = state.train_steps
        _keep_architecture(dense, state.model, f"models/{stem}.pt", result)
    model = state.model.eval()
    with _timed(timings, "metrics"), torch.no_grad():
        inputs = tuple(x.to(shared.device) for x in backbone.example_inputs(shared.preset, 1))
        branches = 1 if diffusion.guidance is None else diffusion.guidance.branches
        metrics.update(measure.macs(backbone, state, inputs, branches))
        with quiet.quiet():  # no other worker of this machine computes while the pair is timed
            pair, record["latency_report"] = measure.latency(
                backbone, shared.preset, dense, diffusion, state, spec.seed, shared.device
            )
        metrics.update(pair)
    with _timed(timings, "fid"):
        metrics.update(
            _quality(spec, shared, backbone, model, dense, diffusion, state.schedule, stem, dense_features, result)
        )


def _prune(
    spec: CellSpec, shared: Shared, backbone: Backbone, dense: nn.Module, info: dict[str, Any],
    metrics: dict[str, Any],
) -> Pruned:
    from benchmark.data import load_dataset
    from benchmark.pruning import apply_chain, method_context
    from benchmark.training import CONTINUED_FROM

    _seed_everything(spec.seed)
    ctx = method_context(
        backbone, shared.preset, shared.options, dense, load_dataset(shared.preset.dataset), spec.seed, shared.device,
        spec.steps or shared.options.train_steps or shared.preset.train_steps, shared.progress, spec.continuation,
        shared.continuations,
    )
    state = apply_chain(shared.registries, spec.chain, ctx, dense, info)[0]
    measured = dict(ctx.measured)
    if CONTINUED_FROM in measured:  # this worker had trained a smaller budget of the cell: it went on from there
        info[CONTINUED_FROM] = measured.pop(CONTINUED_FROM)
    metrics.update(measured)  # the loss right after pruning, where the chain trained weights
    return state


def _keep_architecture(dense: nn.Module, model: nn.Module, relative: str, result: CellResult) -> None:
    """A model whose layers changed shape travels with its cell, as ``relative`` under the run directory."""
    from benchmark import structural

    if structural.architecture_changed(dense, model):
        buffer = io.BytesIO()
        structural.save_pruned(model, buffer)
        result.artefacts[relative] = buffer.getvalue()
        result.record["pruned_model"] = relative


def _quality(
    spec: CellSpec, shared: Shared, backbone: Backbone, model: nn.Module, dense: nn.Module, diffusion: Diffusion,
    schedule: torch.Tensor | None, stem: str, dense_features: np.ndarray | None, result: CellResult,
) -> dict[str, Any]:
    """Sample ``fid_samples`` images with the cell's schedule, keep a grid of them and score FID with its interval.

    ``fid`` is against real images; ``fid_to_dense`` against the dense model's samples from the same
    noise, i.e. how far the method moves the dense sampler's distribution (0 for ``dense``). Each comes
    with the sd and 95% interval of a bootstrap over the generated samples. A guided backbone's samples are
    also scored for ``prompt_adherence`` (:mod:`benchmark.metrics.adherence`); its grid has one prompt per column.
    """
    from benchmark import plots
    from benchmark.metrics import adherence, fid

    n = len(shared.real_features)
    samples = _samples(shared, backbone, model, diffusion, schedule, n, spec.seed)
    labels = diffusion.sample_labels(0, n)
    adherent = {} if labels is None else adherence.prompt_adherence(shared.preset.dataset, samples, labels)
    buffer = io.BytesIO()
    columns = 8 if diffusion.guidance is None else diffusion.guidance.prompts.classes
    plots.save_grid(samples[:GRID_IMAGES - GRID_IMAGES % columns], buffer, nrow=columns)
    result.artefacts[f"samples/{stem}.png"] = buffer.getvalue()
    features = shared.scorer.features(samples)
    if spec.method == REFERENCE_METHOD:
        result.dense_features = features
        to_dense = fid.FIDEstimate(0.0, 0.0, 0.0, 0.0, 0)
    else:
        if dense_features is None:  # its dense cell ran in an earlier invocation: draw the dense samples again
            dense_features = shared.scorer.features(_samples(shared, backbone, dense, diffusion, None, n, spec.seed))
            result.dense_features = dense_features
        to_dense = fid.bootstrap_fid(features, dense_features, FID_RESAMPLES, spec.seed)
    return {
        **_estimate("fid", fid.bootstrap_fid(features, shared.real_features, FID_RESAMPLES, spec.seed)),
        **_estimate("fid_to_dense", to_dense),
        **adherent,
        "fid_samples": n,
        "sample_steps": diffusion.sample_steps,
        "sampler": "ddim (eta=0)" if diffusion.guidance is None else f"ddim (eta=0), guidance {diffusion.guidance.scale:g}",
    }


def _samples(
    shared: Shared, backbone: Backbone, model: nn.Module, diffusion: Diffusion, schedule: torch.Tensor | None,
    n: int, seed: int,
) -> torch.Tensor:
    """``n`` samples from the seed's noise, the same for every cell of that seed."""
    from benchmark.skipping import scheduled

    generator = torch.Generator().manual_seed(seed)
    with scheduled(model, backbone.blocks(model), schedule) as on_step:
        return diffusion.sample(model, n, shared.preset.sample_batch, generator, on_step, shared.progress)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()})"


def _estimate(name: str, estimate: FIDEstimate) -> dict[str, float]:
    """``name`` and its bootstrap ``_sd``, ``_low`` and ``_high``."""
    return {name: estimate.value, f"{name}_sd": estimate.sd, f"{name}_low": estimate.low, f"{name}_high": estimate.high}


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
