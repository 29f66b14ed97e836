"""Are the tiny dense references converged? The three checks of the trust issue, measured.

1. Dense FID does not get worse from 20 to 50 to 100 DDIM steps beyond its noise (Welch/z test of
   :mod:`benchmark.significance` on the bootstrap intervals: a later step count must not be
   significantly higher than an earlier one).
2. Dense FID@N at the preset's steps is at most twice the real-vs-real floor at the same N: the FID
   between N real digits disjoint from the reference set and the reference set itself.
3. Sample grids, written to ``--grids`` for a person to look at.

Usage (the published output, ``convergence.out``, came from the first line)::

    python results/tiny/convergence.py --seed 7 > results/tiny/convergence.out
    python results/tiny/convergence.py --checkpoint uvit=runs/dense/uvit-tiny.pt --backbones uvit

Sampling noise comes from ``--seed``; pick one no published run used to check independently.
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import time
from pathlib import Path

import torch

from benchmark import significance
from benchmark.api import RunOptions
from benchmark.checkpoints import checkpoint_id, dense_checkpoint, load_dense
from benchmark.cli import parse_checkpoints
from benchmark.data import load_dataset
from benchmark.diffusion import Diffusion
from benchmark.metrics import fid
from benchmark.plots import save_grid
from benchmark.plugins import build_registries
from benchmark.presets import get_preset
from benchmark.grid.store import environment_versions

FLOOR_FACTOR = 2.0
GRID_IMAGES = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", help="comma list (default: every registered backbone)")
    parser.add_argument("--steps", default="20,50,100", help="DDIM step counts, increasing")
    parser.add_argument("--samples", type=int, help="images per FID (default: the preset's)")
    parser.add_argument("--seed", type=int, default=7, help="sampling noise and bootstrap seed")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="BACKBONE=PATH")
    parser.add_argument("--grids", type=Path, default=Path(__file__).parent / "dense_samples")
    args = parser.parse_args()

    started = time.perf_counter()
    preset = get_preset("tiny")
    n = args.samples or preset.fid_samples
    steps = [int(s) for s in args.steps.split(",")]
    registries = build_registries()
    options = RunOptions(checkpoints=parse_checkpoints(args.checkpoint, registries.backbones.names()))
    scorer = fid.FIDScorer("cpu", progress=False)
    images = load_dataset(preset.dataset)
    real = fid.reference_features(preset.dataset, n, lambda: images, scorer)
    held_out = scorer.features(fid.reference_images(preset.dataset, n, lambda: images, offset=n))
    floor = fid.bootstrap_fid(held_out, real, seed=args.seed)

    print(f"# Convergence of the tiny dense references (seed {args.seed}, FID@{n}, 95% bootstrap intervals)\n")
    print(f"Real-vs-real floor FID@{n}: {floor.value:.2f} ± {floor.high - floor.value:.2f} "
          f"(held-out digits against the reference set); bound {FLOOR_FACTOR:g}x = {FLOOR_FACTOR * floor.value:.2f}\n")
    print("| backbone | checkpoint | " + " | ".join(f"FID@{n}, {s} steps" for s in steps)
          + " | never worse with more steps | at preset steps <= 2x floor |")
    print("|---|---|" + "---|" * len(steps) + "---|---|")
    for name in args.backbones.split(",") if args.backbones else registries.backbones.names():
        backbone = registries.backbones.get(name)
        path = dense_checkpoint(backbone, preset, options, "cpu", progress=False)
        model = load_dense(backbone, preset, path, "cpu")
        estimates = {}
        for count in steps:
            diffusion = Diffusion.for_preset(dataclasses.replace(preset, sample_steps=count))
            samples = diffusion.sample(model, n, preset.sample_batch, torch.Generator().manual_seed(args.seed))
            estimates[count] = fid.bootstrap_fid(scorer.features(samples), real, seed=args.seed)
            if count == preset.sample_steps:
                args.grids.mkdir(parents=True, exist_ok=True)
                save_grid(samples[:GRID_IMAGES], args.grids / f"{name}_ddim{count}.png")
        worse = [
            f"{a}->{b}"
            for i, a in enumerate(steps)
            for b in steps[i + 1:]
            if significance.compare([estimates[b].value], [estimates[b].sd],
                                    [estimates[a].value], [estimates[a].sd]).verdict == "higher"
        ]
        at_preset = estimates.get(preset.sample_steps)
        bounded = "n/a" if at_preset is None else _yes(at_preset.value <= FLOOR_FACTOR * floor.value)
        cells = " | ".join(f"{e.value:.2f} ± {e.high - e.value:.2f}" for e in estimates.values())
        monotone = "yes" if not worse else f"no (worse: {', '.join(worse)})"
        print(f"| {name} | {checkpoint_id(path)[:19]}… | {cells} | {monotone} | {bounded} |", flush=True)

    versions = ", ".join(f"{k} {v}" for k, v in environment_versions().items())
    print(f"\n{versions}; {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; "
          f"wall time {time.perf_counter() - started:.0f} s")


def _yes(ok: bool) -> str:
    return "yes" if ok else "no"


if __name__ == "__main__":
    main()
