"""Where a cell's time goes: each phase's achieved multiply-add rate against the machine's one-thread peak, and
the share of its time spent inside the kernels that do the model's arithmetic (convolutions, matrix products,
attention) rather than in everything around them (elementwise ops, normalisation, optimizer, dispatch).

One thread, as a ``--jobs 2`` worker runs: a fine-tuning step of each tiny backbone (batch 64: forward,
backward, AdamW), a DDIM sampling step (batch 128, no gradients), and a batch of 50 InceptionV3 feature
extractions (the FID network, 299x299 inputs). The peak is a 1024x1024 fp32 matrix product.

    python results/speed/profile_probe.py > results/speed/profile_probe.out
"""
from __future__ import annotations

import platform
import subprocess
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from benchmark import checkpoints
from benchmark.api import RunOptions
from benchmark.data import load_dataset
from benchmark.diffusion import Diffusion
from benchmark.metrics import fid
from benchmark.metrics.fid import _inception_input
from benchmark.metrics.macs import count_macs
from benchmark.plugins import build_registries
from benchmark.presets import get_preset

ARITHMETIC = ("conv", "mm", "addmm", "bmm", "baddbmm", "linear", "matmul", "scaled_dot_product", "mkldnn")
REPEATS = 10


def seconds_per_call(step: Callable[[], None], repeats: int = REPEATS) -> float:
    step()  # warm-up: allocator, oneDNN primitives
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def arithmetic_share(step: Callable[[], None]) -> tuple[float, list[tuple[str, float]]]:
    """The share of self CPU time in the arithmetic kernels, and the five ops with the most self time."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    events = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(t for _, t in events)
    inside = sum(t for key, t in events if any(word in key.lower() for word in ARITHMETIC))
    top = sorted(events, key=lambda e: -e[1])[:5]
    return inside / total, [(key, t / total) for key, t in top]


def peak_macs_per_second() -> float:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    return 1024**3 / seconds_per_call(lambda: a @ b, 20)


def row(label: str, seconds: float, macs: float, peak: float, step: Callable[[], None]) -> None:
    share, top = arithmetic_share(step)
    ops = ", ".join(f"{key} {100 * t:.0f}%" for key, t in top)
    print(f"| {label} | {1000 * seconds:.1f} | {macs / seconds / 1e9:.1f} | {100 * macs / seconds / peak:.0f}% | "
          f"{100 * share:.0f}% | {ops} |", flush=True)


def main() -> None:
    torch.set_num_threads(1)
    preset, registries = get_preset("tiny"), build_registries()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    peak = peak_macs_per_second()
    print(f"# commit {commit}, {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread; "
          f"peak {peak / 1e9:.1f} GMAC/s (1024x1024 fp32 matmul)")
    print("| phase | ms per call | GMAC/s | of peak | time in arithmetic kernels | ops with the most self time |")
    print("|---|---|---|---|---|---|")
    for name in ("ddpm", "uvit", "dit"):
        backbone = registries.backbones.get(name)
        diffusion = Diffusion.for_backbone(backbone, preset)
        path = checkpoints.dense_checkpoint(backbone, preset, RunOptions(), torch.device("cpu"), False)
        model = checkpoints.load_dense(backbone, preset, path, torch.device("cpu"))
        per_sample = count_macs(model.eval(), backbone.example_inputs(preset, 1)).total
        generator = torch.Generator().manual_seed(0)
        x0 = torch.rand(preset.batch_size, *diffusion.image_shape, generator=generator) * 2 - 1
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def train_step() -> None:
            x_t, t, noise = diffusion.training_inputs(x0, generator)
            loss = F.mse_loss(model(x_t, t), noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        model.train()
        macs = 3 * per_sample * preset.batch_size  # forward, and backward at about twice the forward
        row(f"{name} fine-tuning step (batch {preset.batch_size})", seconds_per_call(train_step), macs, peak, train_step)
        model.eval()
        x = torch.randn(preset.sample_batch, *diffusion.image_shape)
        t = torch.full((preset.sample_batch,), 500, dtype=torch.long)

        def sample_step() -> None:
            with torch.inference_mode():
                model(x, t)

        macs = per_sample * preset.sample_batch
        row(f"{name} sampling step (batch {preset.sample_batch})", seconds_per_call(sample_step), macs, peak,
            sample_step)
    inception = fid.FIDScorer("cpu", progress=False).model
    images = _inception_input(load_dataset("mnist16")[:50]).contiguous(memory_format=torch.channels_last)
    per_image = count_macs(inception, (images[:1],)).total

    def features() -> None:
        with torch.inference_mode():
            inception(images)

    row("InceptionV3 features (batch 50)", seconds_per_call(features, 3), per_image * 50, peak, features)


if __name__ == "__main__":
    main()
