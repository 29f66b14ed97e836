"""CPU speedup of structural pruning against its MACs ratio, on an idle machine, one thread.

For each tiny backbone, the shipped dense reference is pruned by L1 channel magnitude (widths, not
weights, set the speed) to several MACs targets with the suite's own pruner, and each pruned model is
timed against the dense one per network evaluation, in alternation (:func:`benchmark.metrics.latency.paired_ms`),
at batch 1 and at the preset's latency batch.

    OMP_NUM_THREADS=1 python results/tiny/structural_speedup.py > results/tiny/structural_speedup.out
"""
from __future__ import annotations

import torch
import torch_pruning as tp

from benchmark import checkpoints, structural
from benchmark.api import RunOptions
from benchmark.metrics import latency
from benchmark.metrics.macs import count_macs
from benchmark.plugins import build_registries
from benchmark.presets import get_preset

TARGETS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def main() -> None:
    torch.set_num_threads(1)
    registries, preset = build_registries(), get_preset("tiny")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread; speedup = median paired dense/pruned time")
    print("| backbone | target | MACs ratio | params ratio | speedup, batch 1 | speedup, batch "
          f"{preset.latency_batch} | dense ms, batch {preset.latency_batch} |")
    print("|---|---|---|---|---|---|---|")
    for name in registries.backbones.names():
        backbone = registries.backbones.get(name)
        path = checkpoints.find_dense_checkpoint(backbone, preset, RunOptions())
        dense = checkpoints.load_dense(backbone, preset, path, "cpu")
        one = backbone.example_inputs(preset, 1)
        dense_report = count_macs(dense, one)
        for target in TARGETS:
            pruned, info = structural.prune_to_macs(dense, backbone, one, tp.importance.MagnitudeImportance(p=1), target)
            pruned.eval()
            params = count_macs(pruned, one).params / dense_report.params
            cells = []
            for batch in (1, preset.latency_batch):
                inputs = backbone.example_inputs(preset, batch)
                dense_ms, _, ratio = latency.paired_ms(
                    latency.evaluation(dense, inputs), latency.evaluation(pruned, inputs), "cpu"
                )
                cells.append(ratio)
            print(f"| {name} | {target} | {info['macs_ratio']:.3f} | {params:.3f} | {cells[0]:.2f} | {cells[1]:.2f} | "
                  f"{dense_ms:.1f} |")


if __name__ == "__main__":
    main()
