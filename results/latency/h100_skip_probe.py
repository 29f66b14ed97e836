"""Does a skip schedule's MACs saving turn into time on a GPU? Full-size CIFAR-10 backbones, batch 128.

For each backbone (randomly initialised: timing does not depend on the weights) this takes the
``uniform-skip`` method's own schedule for the ``cifar10`` preset's 100 DDIM steps at two MACs
targets: 0.5 (the default; every block reuses on odd steps) and 0.75 (only the innermost blocks
do, as in a partial, DiP-GO-like schedule). It times whole sampling runs of one batch with and
without the schedule, in alternation, as the harness does on CPU. It does so in fp32 and under bf16 autocast. Printed: median ms per
sampling step over ``ROUNDS`` runs each, and the speedup.

Usage, on a CUDA machine, from the repository root:

    python results/latency/h100_skip_probe.py > results/latency/h100_skip_probe.out
"""
import statistics
import time
from contextlib import nullcontext

import torch

from benchmark.api import MethodContext, Pruned, RunOptions
from benchmark.diffusion import Diffusion
from benchmark.plugins import build_registries
from benchmark.presets import get_preset
from benchmark.skipping import scheduled
from methods.uniform_skip import UniformSkip

ROUNDS = 5
TARGETS = (0.5, 0.75)
device = torch.device("cuda")
preset = get_preset("cifar10")
diffusion = Diffusion.for_preset(preset)
batch = preset.latency_batch
print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
print(f"preset {preset.name}: DDIM {diffusion.sample_steps} steps, batch {batch}, {ROUNDS} alternating rounds\n")
print("| backbone | target | precision | kept MACs | skipped on odd steps | dense ms/step | uniform-skip ms/step | speedup |")
print("|---|---|---|---|---|---|---|---|")
for name in ("uvit", "ddpm"):
    backbone = build_registries().backbones.get(name)
    torch.manual_seed(0)
    model = backbone.build(preset).to(device).eval().requires_grad_(False)
    blocks = backbone.blocks(model)

    def ms_per_step(schedule: torch.Tensor | None, precision: str) -> float:
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
        with autocast, scheduled(model, blocks, schedule) as on_step:
            torch.cuda.synchronize(device)
            start = time.perf_counter()
            diffusion.sample(model, batch, batch, torch.Generator().manual_seed(0), on_step)
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) * 1e3 / diffusion.sample_steps

    for target, precision in ((target, precision) for target in TARGETS for precision in ("fp32", "bf16")):
        ctx = MethodContext(
            backbone=backbone, preset=preset, options=RunOptions(dipgo_target=target), diffusion=diffusion,
            teacher=model, batches=lambda: iter(()), train_steps=0, seed=0, device=device, progress=False,
        )  # fmt: skip
        pruned = UniformSkip().apply(ctx, Pruned(model=model))
        ms_per_step(None, precision), ms_per_step(pruned.schedule, precision)  # warm-up
        dense, skip = [], []
        for _ in range(ROUNDS):
            dense.append(ms_per_step(None, precision))
            skip.append(ms_per_step(pruned.schedule, precision))
        dense_ms, skip_ms = statistics.median(dense), statistics.median(skip)
        print(
            f"| {name} | {target} | {precision} | {pruned.info['kept_macs_ratio']:.3f} | {len(pruned.info['skipped_blocks'])}"
            f" of {len(blocks)} blocks | {dense_ms:.2f} | {skip_ms:.2f} | {dense_ms / skip_ms:.2f}x |",
            flush=True,
        )
