"""What a cell measures on its pruned model besides FID: sparsity, params and MACs, and latency."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from benchmark.api import Backbone, NMPattern, Pruned

if TYPE_CHECKING:
    from benchmark.diffusion import Diffusion
    from benchmark.presets import Preset

SAMPLING_PAIRS = 4  # alternating timings of dense and scheduled sampling behind a skip schedule's speedup


def removed_fraction(dense: nn.Module, model: nn.Module) -> float:
    """Share of the dense model's parameters that ``model`` no longer has or holds at exactly zero."""
    total = sum(p.numel() for p in dense.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    return 1.0 - nonzero / total


def macs(backbone: Backbone, state: Pruned, inputs: tuple[torch.Tensor, ...], branches: int = 1) -> dict[str, Any]:
    """Params and per-sample MACs of the model the cell ran: dense kernels, and effective (masked layers at
    N/M, skipped blocks removed); ``branches`` network evaluations per sample and step (2 under guidance)."""
    from benchmark.metrics import macs as counting

    report = counting.count_macs(state.model, inputs)
    if state.schedule is not None:
        block_names = [name for name, _ in backbone.blocks(state.model)]
        effective = counting.trajectory_macs(report, block_names, state.schedule, state.masks or None, state.pattern)
    elif state.masks:
        effective = counting.sparse_macs(report, state.masks, state.pattern)
    else:
        effective = report.total
    return {"params_m": report.params / 1e6, "macs_g": branches * report.total / 1e9,
            "sparse_macs_g": branches * effective / 1e9}


def latency(
    backbone: Backbone, preset: Preset, dense: nn.Module, diffusion: Diffusion, state: Pruned, seed: int,
    device: torch.device,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Milliseconds of the dense model and of the cell's, both measured the way ``latency_mode`` names, and
    the 2:4 kernel report where one was measured.

    * a skip schedule: DDIM sampling time per step, the dense model without a schedule against the
      cell's model with it;
    * 2:4 masks where PyTorch's semi-structured kernels run (CUDA sm80+): per evaluation in fp16,
      the masked model with dense kernels against 2:4 kernels; other N:M patterns, or no such
      kernels: n/a;
    * anything else (dense, fine-tuned, structurally pruned): per evaluation, the dense model
      against the cell's.

    Both sides of a pair are timed in alternation (:func:`benchmark.metrics.latency.paired_ms`),
    fp32 eager unless said otherwise, at the preset's latency batch on ``device``; under guidance one
    evaluation takes both branches (twice the rows), as the sampler runs it.
    """
    from benchmark.metrics import latency as timing

    batch, where = preset.latency_batch, device.type
    rows = batch * (1 if diffusion.guidance is None else diffusion.guidance.branches)
    inputs = tuple(x.to(device) for x in backbone.example_inputs(preset, rows))
    size = f"batch {batch}" if rows == batch else f"batch {batch} x {rows // batch} guidance branches"
    if state.schedule is not None:
        timed = _sampling_ms_per_step(backbone, preset, dense, state, diffusion, seed, device)
        return _pair(f"sampling per step, fp32 eager, {where}, {size}", *timed), None
    if not state.masks:
        model = state.model.eval()
        timed = timing.paired_ms(timing.evaluation(dense, inputs), timing.evaluation(model, inputs), device)
        return _pair(f"per evaluation, fp32 eager, {where}, {size}", *timed), None
    supported, reason = timing.semi_structured_supported(device)
    if not supported or state.pattern != NMPattern(2, 4):
        not_available = reason if not supported else f"n/a (no {state.pattern} kernels)"
        return _pair(not_available, not_available, not_available, not_available), None
    report = timing.sparse_latency_report(
        state.model, state.masks, lambda b: backbone.example_inputs(preset, b), [rows], device,
    )  # fmt: skip
    mode, timed = timing.headline_timing(report["batches"][0])
    metrics = _pair(
        f"per evaluation, fp16 {timing.MODES[mode]}, {where}, {size}", timed["dense_ms"], timed["sparse_ms"],
        timed["speedup"],
    )  # fmt: skip
    return metrics, {**report, "headline_mode": mode}


def _sampling_ms_per_step(
    backbone: Backbone, preset: Preset, dense: nn.Module, state: Pruned, diffusion: Diffusion, seed: int,
    device: torch.device,
) -> tuple[float, float, float]:
    """Median sampling time per step at the latency batch of the dense model and of the cell's with its
    schedule, and their median paired ratio."""
    from benchmark.metrics.latency import paired_ms
    from benchmark.skipping import scheduled

    batch, model = preset.latency_batch, state.model.eval()

    def sampler(net: nn.Module, schedule: torch.Tensor | None) -> Callable[[], None]:
        def run() -> None:
            generator = torch.Generator().manual_seed(seed)
            with torch.inference_mode(), scheduled(net, backbone.blocks(net), schedule) as on_step:
                diffusion.sample(net, batch, batch, generator, on_step)

        return run

    dense_ms, ms, ratio = paired_ms(sampler(dense, None), sampler(model, state.schedule), device, warmup=1,
                                    pairs=SAMPLING_PAIRS)
    return dense_ms / diffusion.sample_steps, ms / diffusion.sample_steps, ratio


def _pair(mode: str, dense_ms: float | str, ms: float | str, speedup: float | str) -> dict[str, Any]:
    """The cell's latency pair and speedup; a text (why it is n/a) in place of numbers that could not be measured."""
    return {"latency_mode": mode, "dense_latency_ms": dense_ms, "latency_ms": ms, "speedup": speedup}
