"""When has DiP-GO's pruner converged on the tiny references? The measurement behind ``tiny``'s pruner steps.

Trains the official pruner recipe (:func:`methods.dipgo.train_pruner`) on each backbone's dense reference
for ``--steps`` optimizer steps and, every ``--every`` steps, prints the mean consistency loss (1 - SSIM)
and kept block share of the steps since the last line, and for each target the share of schedule
entries the block-major walk sets differently from the schedule it sets at the end. The pruner has
converged at the first line after which its consistency stays within noise and no schedule changes.

    python results/tiny/dipgo_convergence.py --backbones ddpm > results/tiny/dipgo_convergence_ddpm.out
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import time

import torch

from benchmark.api import RunOptions
from benchmark.checkpoints import dense_checkpoint, load_dense
from benchmark.data import load_dataset
from benchmark.grid.store import environment_versions
from benchmark.plugins import build_registries
from benchmark.presets import get_preset
from benchmark.pruning import method_context
from benchmark.skipping import block_costs
from methods.dipgo import block_major_walk, reuse_probability, train_pruner

TARGETS = (0.3, 0.5, 0.7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="ddpm,uvit,dit")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    registries = build_registries()
    preset = get_preset("tiny")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"# commit {commit}, torch {torch.__version__}, torch-pruning {environment_versions().get('torch-pruning')}, "
          f"{platform.processor() or platform.machine()}, {args.threads} thread(s), seed {args.seed}")
    for name in args.backbones.split(","):
        backbone = registries.backbones.get(name)
        dense = load_dense(backbone, preset, dense_checkpoint(backbone, preset, RunOptions(), "cpu"), "cpu")
        ctx = method_context(backbone, preset, RunOptions(), dense, load_dataset(preset.dataset), args.seed,
                             torch.device("cpu"), 0, progress=False)
        blocks = backbone.blocks(dense)
        block_macs, total = block_costs(ctx, dense, [n for n, _ in blocks])
        cascade_args = (not backbone.time_enters_every_block, backbone.u_shaped)
        snapshots: list[tuple[int, torch.Tensor]] = []

        def after_step(step: int, pruner) -> None:
            if (step + 1) % args.every == 0:
                with torch.no_grad():
                    snapshots.append((step + 1, reuse_probability(pruner()).cpu()))

        started = time.perf_counter()
        _, history = train_pruner(ctx, dense, blocks, block_macs, total, args.steps, *cascade_args, after_step)
        seconds = time.perf_counter() - started
        walks = {
            target: [block_major_walk(prob, block_macs, total, target, *cascade_args)[0] for _, prob in snapshots]
            for target in TARGETS
        }
        print(f"\n## {name}: {args.steps} pruner steps in {seconds:.0f} s ({seconds / args.steps:.2f} s/step)")
        print("step | consistency | kept block share | gates at reuse | max P(reuse) | "
              + " | ".join(f"changed vs final @{t}" for t in TARGETS))
        per_line = args.every
        for index, (step, prob) in enumerate(snapshots):
            window = slice(index * per_line, (index + 1) * per_line)
            consistency = sum(history["consistency"][window]) / per_line
            share = sum(history["kept_block_share"][window]) / per_line
            changed = [float((walks[t][index] != walks[t][-1]).float().mean()) for t in TARGETS]
            reused, top = int((prob[1:] > 0.5).sum()), float(prob[1:].max())
            print(f"{step} | {consistency:.4f} | {share:.3f} | {reused} | {top:.3f} | "
                  + " | ".join(f"{c:.3f}" for c in changed), flush=True)


if __name__ == "__main__":
    main()
