"""Does ``torch.compile`` (CPU inductor) pay on the tiny backbones, compile time included?

For each tiny backbone's dense checkpoint, one thread (as a ``--jobs 2`` worker has): the fine-tuning loop
of a cell (preset ``tiny``: 300 AdamW steps at batch 64) and its FID sampling (256 images, 50 DDIM steps,
timesteps as tensors, fixed batch), eager against compiled, where the compiled time includes compiling.
The issue's bar for adopting it: at least 1.2x per cell, compile included.

    python results/speed/compile_probe.py > results/speed/compile_probe.out
"""
from __future__ import annotations

import platform
import subprocess
import time

import torch
import torch.nn.functional as F

from benchmark import checkpoints
from benchmark.api import RunOptions
from benchmark.diffusion import Diffusion
from benchmark.plugins import build_registries
from benchmark.presets import get_preset

STEPS = 300


def train_seconds(model: torch.nn.Module, diffusion: Diffusion, batch: int, steps: int) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(batch, *diffusion.image_shape, generator=generator) * 2 - 1
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        x_t, t, noise = diffusion.training_inputs(x0, generator)
        loss = F.mse_loss(model(x_t, t), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def sample_seconds(model: torch.nn.Module, diffusion: Diffusion, n: int, batch: int) -> float:
    start = time.perf_counter()
    diffusion.sample(model, n, batch, torch.Generator().manual_seed(0))
    return time.perf_counter() - start


def main() -> None:
    torch.set_num_threads(1)
    preset, registries = get_preset("tiny"), build_registries()
    diffusion = Diffusion.for_preset(preset)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"# commit {commit}, {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread")
    print("| backbone | phase | eager s | compiled s (compile included) | speedup |")
    print("|---|---|---|---|---|")
    for name in ("ddpm", "uvit", "dit"):
        backbone = registries.backbones.get(name)
        path = checkpoints.dense_checkpoint(backbone, preset, RunOptions(), torch.device("cpu"), False)

        def fresh() -> torch.nn.Module:
            return checkpoints.load_dense(backbone, preset, path, torch.device("cpu"))

        for phase, measure in (
            (f"fine-tuning, {STEPS} steps at batch {preset.batch_size}",
             lambda m: train_seconds(m, diffusion, preset.batch_size, STEPS)),
            (f"sampling, {preset.fid_samples} images x {preset.sample_steps} steps",
             lambda m: sample_seconds(m, diffusion, preset.fid_samples, preset.sample_batch)),
        ):
            eager = measure(fresh())
            torch._dynamo.reset()
            try:
                compiled = f"{(c := measure(torch.compile(fresh()))):.1f}"
                speedup = f"{eager / c:.2f}x"
            except Exception as e:  # noqa: BLE001 - a backbone that does not compile is a finding
                compiled, speedup = f"fails: {type(e).__name__}", "n/a"
            print(f"| {name} | {phase} | {eager:.1f} | {compiled} | {speedup} |", flush=True)


if __name__ == "__main__":
    main()
