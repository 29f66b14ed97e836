"""Two ways to make the FID features cheaper, measured against the standard fp32 network on real images.

FID between two disjoint sets of 256 images of the default data set (the MNIST digits of ``mnist16``),
one thread: the standard fp32 InceptionV3 (channels_last, as the suite runs it), the same with every
convolution's batch norm folded into it (``torch.nn.utils.fusion.fuse_conv_bn_eval``), and bf16
autocast (AMX where the CPU has it). The issue's bars: a lower precision must give the same FID to
0.1%; a change must pay at least 1.2x per cell.

    python results/speed/inception_probe.py > results/speed/inception_probe.out
"""
from __future__ import annotations

import copy
import platform
import subprocess
import time

import torch
from torch.nn.utils.fusion import fuse_conv_bn_eval

from benchmark.data import load_dataset
from benchmark.metrics import fid
from benchmark.metrics.fid import _inception_input

N, BATCH = 256, 50


def fused(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with each BasicConv2d's batch norm folded into its convolution."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(getattr(module, "conv", None), torch.nn.Conv2d) and isinstance(getattr(module, "bn", None),
                                                                                       torch.nn.BatchNorm2d):
            module.conv, module.bn = fuse_conv_bn_eval(module.conv, module.bn), torch.nn.Identity()
    return model


def features(model: torch.nn.Module, images: torch.Tensor, bf16: bool) -> tuple[float, object]:
    start, chunks = time.perf_counter(), []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(images), BATCH):
            batch = _inception_input(images[i : i + BATCH]).contiguous(memory_format=torch.channels_last)
            chunks.append(model(batch)[0].flatten(1).double())
    return time.perf_counter() - start, torch.cat(chunks).numpy()


def main() -> None:
    torch.set_num_threads(1)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"# commit {commit}, {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread, "
          f"FID between two disjoint sets of {N} mnist16 images")
    images = load_dataset("mnist16")[: 2 * N]
    standard = fid.FIDScorer("cpu", progress=False).model
    print("| features | seconds for both sets | speedup | FID | FID change |")
    print("|---|---|---|---|---|")
    reference = None
    for label, model, bf16 in (("fp32 (standard)", standard, False), ("fp32, conv+BN folded", fused(standard), False),
                               ("bf16 autocast", standard, True)):
        seconds_a, a = features(model, images[:N], bf16)
        seconds_b, b = features(model, images[N:], bf16)
        seconds, value = seconds_a + seconds_b, fid.fid_from_features(a, b)
        reference = reference or (seconds, value)
        print(f"| {label} | {seconds:.1f} | {reference[0] / seconds:.2f}x | {value:.4f} | "
              f"{100 * (value - reference[1]) / reference[1]:+.2f}% |", flush=True)


if __name__ == "__main__":
    main()
