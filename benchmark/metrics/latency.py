"""Measured time per network evaluation: dense on any device, 2:4 semi-structured sparse on CUDA.

PyTorch's 2:4 kernels (cuSPARSELt, or CUTLASS on sm8x) need compute capability 8.0+, fp16/bf16
weights and cover ``nn.Linear`` only: masked Conv2d layers run dense. Speedups are small and depend
on shape (small batches are often slower), so reports give several batch sizes and every layer.
Each is timed twice: eagerly, and replayed from a CUDA graph, which drops the per-call CPU cost
(launches, cuSPARSELt plan set-up) and leaves the kernels' own time.
"""
from __future__ import annotations

import copy
import functools
import json
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tabulate import tabulate
from torch import nn
from torch.nn.utils import parametrize
from torch.sparse import (
    SparseSemiStructuredTensor,
    SparseSemiStructuredTensorCUSPARSELT,
    SparseSemiStructuredTensorCUTLASS,
    to_sparse_semi_structured,
)

from benchmark.api import Backbone, BenchmarkError, NMPattern
from benchmark.presets import Preset, get_preset

NA_CUDA = "n/a (needs CUDA sm80+)"
SPARSE_DTYPE = torch.float16
TOLERANCE = 1e-2  # rtol and atol between the 2:4 and the dense fp16 outputs

Inputs = tuple[torch.Tensor, ...]


def time_fn(fn: Callable[[], object], device: str | torch.device, warmup: int = 5, repeat: int = 30) -> float:
    """Median wall time of ``fn()`` in milliseconds (CUDA events on a CUDA device)."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeat):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(repeat):
            start_s = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start_s) * 1e3)
    return statistics.median(times)


def cuda_graphed(fn: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
    """``fn`` captured once into a CUDA graph: the replay callable and the tensor each replay rewrites."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # one call outside the capture: lazy init, workspace allocation
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = fn()
    return graph.replay, output


def _pair(dense_ms: float, sparse_ms: float) -> dict[str, float]:
    return {"dense_ms": dense_ms, "sparse_ms": sparse_ms, "speedup": dense_ms / sparse_ms}


def _assert_close(sparse: torch.Tensor, dense: torch.Tensor, where: str) -> None:
    torch.testing.assert_close(
        sparse,
        dense,
        rtol=TOLERANCE,
        atol=TOLERANCE,
        msg=lambda detail: f"2:4 output differs from the dense fp16 output ({where}): {detail}",
    )


def graphed_pair(
    dense_fn: Callable[[], torch.Tensor], sparse_fn: Callable[[], torch.Tensor], device: torch.device, where: str
) -> dict[str, Any]:
    """Dense and 2:4 milliseconds replayed from CUDA graphs, outputs compared; a failed capture is reported."""
    try:
        (dense_replay, dense_out), (sparse_replay, sparse_out) = cuda_graphed(dense_fn), cuda_graphed(sparse_fn)
    except RuntimeError as error:
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0]}"}
    dense_replay()
    sparse_replay()
    _assert_close(sparse_out, dense_out, f"{where}, CUDA graph")
    return _pair(time_fn(dense_replay, device), time_fn(sparse_replay, device))


def eager_and_graphed(
    dense_fn: Callable[[], torch.Tensor], sparse_fn: Callable[[], torch.Tensor], device: torch.device, where: str
) -> dict[str, Any]:
    """Dense vs 2:4 milliseconds called eagerly and replayed from CUDA graphs."""
    _assert_close(sparse_fn(), dense_fn(), where)
    return {
        "eager": _pair(time_fn(dense_fn, device), time_fn(sparse_fn, device)),
        "graphed": graphed_pair(dense_fn, sparse_fn, device, where),
    }


def paired_ms(
    first: Callable[[], object], second: Callable[[], object], device: str | torch.device, warmup: int = 3,
    pairs: int = 40,
) -> tuple[float, float, float]:
    """Median milliseconds of two callables and the median ratio first/second of their paired calls.

    They are timed in alternation, one call of each per pair and the order swapped every pair, so
    that load changes and cache effects hit both alike; the ratio of neighbouring calls cancels what
    remains of them better than the ratio of the medians.
    """
    device = torch.device(device)
    calls = (first, second)
    for _ in range(warmup):
        first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for index in range(pairs):
        for which in ((0, 1) if index % 2 == 0 else (1, 0)):
            times[which].append(time_fn(calls[which], device, warmup=0, repeat=1))
    ratio = statistics.median(a / b for a, b in zip(*times))
    return statistics.median(times[0]), statistics.median(times[1]), ratio


def evaluation(model: nn.Module, inputs: Sequence[torch.Tensor]) -> Callable[[], torch.Tensor]:
    """One network evaluation ``model(*inputs)`` without autograd, for timing (``model`` must be in eval mode)."""

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return model(*inputs)

    return run


def semi_structured_supported(device: str | torch.device = "cuda") -> tuple[bool, str]:
    """Whether 2:4 kernels run on ``device``; the reason is :data:`NA_CUDA` when they don't."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False, NA_CUDA
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return False, NA_CUDA
    return True, f"{torch.cuda.get_device_name(device)} (sm{major}{minor})"


def _backend() -> type[SparseSemiStructuredTensor]:
    """cuSPARSELt where PyTorch has it (the only backend for sm90); CUTLASS (sm8x only) otherwise."""
    if torch.backends.cusparselt.is_available():
        return SparseSemiStructuredTensorCUSPARSELT
    return SparseSemiStructuredTensorCUTLASS


@dataclass
class SemiStructuredConversion:
    backend: str
    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # layer -> why it stays dense


def _skip_reason(layer: nn.Module, backend: type[SparseSemiStructuredTensor]) -> str | None:
    if not isinstance(layer, nn.Linear):
        return f"{type(layer).__name__}: PyTorch's 2:4 kernels cover nn.Linear only"
    if parametrize.is_parametrized(layer):
        return "weight is parametrized; bake the parametrization first"
    weight = layer.weight
    if not weight.is_cuda or weight.dtype not in (torch.float16, torch.bfloat16):
        return f"weight is {weight.dtype} on {weight.device}; 2:4 kernels need float16/bfloat16 on CUDA"
    limits = backend._DTYPE_SHAPE_CONSTRAINTS[weight.dtype]
    rows, cols = weight.shape
    if rows % limits.sparse_min_rows or cols % limits.sparse_min_cols:
        return f"shape {rows}x{cols} is not a multiple of {limits.sparse_min_rows}x{limits.sparse_min_cols}"
    dense_groups = int(((weight.reshape(-1, 4) != 0).sum(dim=1) > 2).sum())
    if dense_groups:
        return f"not 2:4 sparse: {dense_groups} groups of 4 have more than 2 nonzeros"
    return None


def _contiguous_input(layer: nn.Module, args: tuple) -> tuple:
    # PyTorch's 2:4 linear flattens its input with .view(), which fails on strided inputs
    # (diffusers' attention passes transposed hidden states); the copy is part of the 2:4 cost.
    return (args[0].contiguous(), *args[1:])


def to_semi_structured(
    model: nn.Module, layer_names: Sequence[str], fuse_transpose: bool = False
) -> SemiStructuredConversion:
    """Replace, in place, the weight of each named 2:4-sparse ``nn.Linear`` by a semi-structured tensor.

    ``model`` must already be on a CUDA device in fp16 or bf16. Layers that cannot be converted
    (Conv2d, unsupported shapes, weights that are not 2:4) stay dense; the result says why.
    ``fuse_transpose`` has cuSPARSELt write its output row-major, as a dense Linear does. Without it
    (PyTorch's default) the output is a transposed view and downstream kernels can slow down: U-ViT-S's
    attention falls back to the math path, 48 instead of 16 ms a forward at batch 128 on an H100.
    With it, on torch 2.11 and cuSPARSELt 0.8, each eager call costs about 0.25 s of host time.
    """
    backend = _backend()
    modules = dict(model.named_modules())
    conversion = SemiStructuredConversion(backend=backend.BACKEND)
    forced, fused = SparseSemiStructuredTensor._FORCE_CUTLASS, SparseSemiStructuredTensor._FUSE_TRANSPOSE
    SparseSemiStructuredTensor._FORCE_CUTLASS = backend is SparseSemiStructuredTensorCUTLASS
    SparseSemiStructuredTensor._FUSE_TRANSPOSE = fuse_transpose
    try:
        for name in layer_names:
            if name not in modules:
                raise ValueError(f"model has no layer {name!r}")
            reason = _skip_reason(modules[name], backend)
            if reason:
                conversion.skipped[name] = reason
                continue
            weight = modules[name].weight.detach().contiguous()
            modules[name].weight = nn.Parameter(to_sparse_semi_structured(weight), requires_grad=False)
            modules[name].register_forward_pre_hook(_contiguous_input)
            conversion.converted.append(name)
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS, SparseSemiStructuredTensor._FUSE_TRANSPOSE = forced, fused
    return conversion


def _masked_fp16_copy(model: nn.Module, masks: Mapping[str, torch.Tensor], device: torch.device) -> nn.Module:
    """A copy of ``model`` in fp16 on ``device`` with ``masks`` applied to the weights."""
    parametrized = [name for name, module in model.named_modules() if parametrize.is_parametrized(module)]
    if parametrized:
        # Baking them on a deep copy is no way out: the copy shares the parametrized class with
        # the original, and removing a parametrization deletes the class's property for both.
        raise ValueError(f"bake the weight parametrizations first (layers {', '.join(parametrized)})")
    masked = copy.deepcopy(model).to(device=device, dtype=SPARSE_DTYPE).eval()
    modules = dict(masked.named_modules())
    with torch.no_grad():
        for name, mask in masks.items():
            modules[name].weight.mul_(mask.to(device))
    return masked


def _tokens_per_layer(model: nn.Module, layer_names: Sequence[str], inputs: Inputs) -> dict[str, int]:
    """Rows each named Linear multiplies in one ``model(*inputs)`` (batch x tokens), summed over its calls."""
    modules = dict(model.named_modules())
    tokens = dict.fromkeys(layer_names, 0)

    def recorder(name: str):
        def record(module: nn.Module, args: tuple) -> None:
            tokens[name] += args[0].numel() // module.in_features

        return record

    handles = [modules[name].register_forward_pre_hook(recorder(name)) for name in layer_names]
    try:
        model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return tokens


def _layer_timing(name: str, dense: nn.Linear, sparse: nn.Linear, tokens: int, device: torch.device) -> dict:
    """``F.linear`` with a random fp16 input of the layer's real row count, dense vs 2:4 weight."""
    x = torch.randn(tokens, dense.in_features, dtype=SPARSE_DTYPE, device=device)
    timings = eager_and_graphed(
        lambda: F.linear(x, dense.weight, dense.bias), lambda: F.linear(x, sparse.weight, sparse.bias), device, name
    )
    return {"layer": name, "shape": list(dense.weight.shape), "tokens": tokens, **timings}


def sparse_latency_report(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    inputs_fn: Callable[[int], Sequence[torch.Tensor]],
    batch_sizes: Sequence[int],
    device: str | torch.device = "cuda",
) -> dict[str, Any]:
    """Dense fp16 vs 2:4 fp16 time per network evaluation of ``model`` with ``masks`` applied.

    For each batch size, end to end: eager, CUDA-graphed, and CUDA-graphed with cuSPARSELt's
    fused output transpose (too slow to call eagerly: each call sets up its plan anew); per
    converted Linear: eager and graphed. Every timed 2:4 output is compared with the dense one
    (``torch.testing.assert_close``; a mismatch raises). All run under fp16 autocast, so they
    differ only in the Linear kernels. Without a CUDA sm80+ device the result is
    ``{"supported": False, "reason": NA_CUDA}``.
    """
    supported, reason = semi_structured_supported(device)
    if not supported:
        return {"supported": False, "reason": reason}
    device = torch.device(device)
    dense = _masked_fp16_copy(model, masks, device)
    sparse, fused = copy.deepcopy(dense), copy.deepcopy(dense)
    conversion = to_semi_structured(sparse, list(masks))
    to_semi_structured(fused, list(masks), fuse_transpose=True)
    dense_modules, sparse_modules = dict(dense.named_modules()), dict(sparse.named_modules())
    batches = []
    for batch in batch_sizes:
        inputs = tuple(
            x.to(device, SPARSE_DTYPE) if x.is_floating_point() else x.to(device) for x in inputs_fn(batch)
        )
        with torch.inference_mode(), torch.autocast("cuda", dtype=SPARSE_DTYPE, cache_enabled=False):
            tokens = _tokens_per_layer(dense, conversion.converted, inputs)
            where = f"batch {batch}"
            timings = eager_and_graphed(lambda: dense(*inputs), lambda: sparse(*inputs), device, where)
            timings["graphed_fused"] = graphed_pair(
                lambda: dense(*inputs), lambda: fused(*inputs), device, f"{where}, fused transpose"
            )
            layers = [
                _layer_timing(name, dense_modules[name], sparse_modules[name], tokens[name], device)
                for name in conversion.converted
            ]
        batches.append({"batch": batch, **timings, "layers": layers})
    return {
        "supported": True,
        "device": reason,
        "dtype": str(SPARSE_DTYPE).removeprefix("torch."),
        "backend": conversion.backend,
        "converted": conversion.converted,
        "skipped": conversion.skipped,
        "batches": batches,
    }


def headline_timing(entry: Mapping[str, Any]) -> tuple[str, Mapping[str, float]]:
    """The mode a leaderboard shows for one batch of a report, and its timings.

    The first mode that ran, in this order: CUDA graph with fused transpose (the fastest in every
    measurement so far), CUDA graph, eager.
    """
    mode = next(mode for mode in ("graphed_fused", "graphed", "eager") if "error" not in entry[mode])
    return mode, entry[mode]


def environment(device: str | torch.device) -> dict[str, Any]:
    """Device and library versions that a latency number depends on."""
    device = torch.device(device)
    on_cuda = device.type == "cuda" and torch.cuda.is_available()
    cusparselt = getattr(torch.backends, "cusparselt", None)
    return {
        "device_name": torch.cuda.get_device_name(device) if on_cuda else "cpu",
        "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(device))) if on_cuda else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cusparselt": cusparselt.version() if cusparselt is not None and cusparselt.is_available() else None,
    }


def _nm_masks(backbone: Backbone, model: nn.Module, pattern: NMPattern) -> dict[str, torch.Tensor]:
    """Magnitude N:M masks for the backbone's prunable Linear layers that can take ``pattern``."""
    from benchmark.sparsity import nm_mask, skip_reason

    return {
        name: nm_mask(layer.weight, pattern)
        for name, layer in backbone.prunable_layers(model).items()
        if isinstance(layer, nn.Linear) and skip_reason(layer.weight, pattern) is None
    }


MODES = {"eager": "eager", "graphed": "CUDA graph", "graphed_fused": "CUDA graph, fused transpose"}


def format_report(report: Mapping[str, Any]) -> str:
    """The report as a table: a row per batch size and timing mode, with per-layer speedups."""
    if not report["supported"]:
        return f"2:4 latency: {report['reason']}"
    rows = []
    for entry in report["batches"]:
        for mode, label in MODES.items():
            timings = entry[mode]
            if "error" in timings:
                rows.append([entry["batch"], label, None, None, timings["error"], None])
                continue
            per_layer = [layer[mode]["speedup"] for layer in entry["layers"] if "speedup" in layer.get(mode, {})]
            speedup = f"{timings['speedup']:.2f}x"
            rows.append([entry["batch"], label, timings["dense_ms"], timings["sparse_ms"], speedup, _range(per_layer)])
    headers = ["batch", "mode", "dense ms", "2:4 ms", "speedup", "per-layer speedup"]
    table = tabulate(rows, headers=headers, floatfmt=".3f", missingval="-")
    converted, skipped = len(report["converted"]), len(report["skipped"])
    return (
        f"{report['device']}, {report['dtype']}, {report['backend']}: "
        f"{converted} Linear layers at 2:4, {skipped} masked layers left dense\n{table}"
    )


def _range(speedups: Sequence[float]) -> str | None:
    if not speedups:
        return None
    return f"median {statistics.median(speedups):.2f}x ({min(speedups):.2f}-{max(speedups):.2f}x)"


def latency_command(
    backbone: Backbone | str,
    preset: Preset | str,
    batch_sizes: Sequence[int] | None = None,
    device: str | torch.device = "cuda",
    out_json: str | Path | None = None,
    pattern: NMPattern | str = "2:4",
    variant: str | None = None,
) -> dict[str, Any]:
    """``python -m benchmark latency``: 2:4 vs dense latency of a freshly built, magnitude-masked backbone
    (or of one of its :meth:`~benchmark.api.Backbone.variants` at the preset).

    Prints a table (or the n/a line without CUDA sm80+), writes the report with the environment
    to ``out_json`` if given, and returns it. Batch sizes default to 1, 16 and the preset's.
    """
    if isinstance(backbone, str):
        from benchmark.plugins import build_registries

        backbone = build_registries().backbones.get(backbone)
    preset = get_preset(preset) if isinstance(preset, str) else preset
    pattern = NMPattern.parse(pattern) if isinstance(pattern, str) else pattern
    batch_sizes = sorted(set(batch_sizes or (1, 16, preset.latency_batch)))
    build = functools.partial(backbone.build, preset)
    if variant is not None:
        variants = backbone.variants(preset)
        if variant not in variants:
            raise BenchmarkError(f"{backbone.name} has no variant {variant!r} at preset {preset.name}; "
                                 f"available: {', '.join(variants) or 'none'}")
        build = variants[variant]
    result: dict[str, Any] = {
        "command": shlex.join(["python", "-m", "benchmark", *sys.argv[1:]]),
        "backbone": backbone.name,
        "variant": variant,
        "preset": preset.name,
        "pattern": str(pattern),
        **environment(device),
    }
    if semi_structured_supported(device)[0]:
        model = build()
        masks = _nm_masks(backbone, model, pattern)
        inputs_fn = functools.partial(backbone.example_inputs, preset)
        result.update(sparse_latency_report(model, masks, inputs_fn, batch_sizes, device))
    else:
        result.update(supported=False, reason=NA_CUDA)
    print(format_report(result))
    if out_json is not None:
        out_json = Path(out_json)
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(result, indent=2) + "\n")
    return result
