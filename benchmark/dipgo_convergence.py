"""``python -m benchmark dipgo-convergence``: when has DiP-GO's pruner converged? The measurement behind a
preset's ``dipgo_pruner_steps``.

Trains the official pruner recipe (:func:`methods.dipgo.train_pruner`) on a backbone's dense reference and,
every ``every`` steps, reports the mean consistency loss (1 - SSIM) and kept block share of the steps since
the last line, the gates at reuse and the largest reuse probability, and for each target the share of
schedule entries the block-major walk sets differently from the schedule it sets at the end. The pruner
has converged at the first line after which its consistency stays within noise and no schedule changes.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

TARGETS = (0.3, 0.5, 0.7)

if TYPE_CHECKING:
    from benchmark.api import Backbone
    from benchmark.presets import Preset


def measure(backbone: Backbone, preset: Preset, steps: int, every: int, seed: int) -> dict[str, Any]:
    """The convergence table of one backbone's pruner: ``seconds`` and one row per ``every`` steps."""
    from benchmark.api import RunOptions
    from benchmark.checkpoints import dense_checkpoint, load_dense
    from benchmark.data import load_dataset
    from benchmark.pruning import method_context
    from benchmark.skipping import block_costs
    from methods.dipgo import block_major_walk, reuse_probability, train_pruner

    dense = load_dense(backbone, preset, dense_checkpoint(backbone, preset, RunOptions(), "cpu"), "cpu")
    ctx = method_context(backbone, preset, RunOptions(), dense, load_dataset(preset.dataset), seed,
                         torch.device("cpu"), 0, progress=False)
    blocks = backbone.blocks(dense)
    block_macs, total = block_costs(ctx, dense, [name for name, _ in blocks])
    cascade_args = (not backbone.time_enters_every_block, backbone.u_shaped)
    snapshots: list[tuple[int, torch.Tensor]] = []

    def after_step(step: int, pruner) -> None:
        if (step + 1) % every == 0:
            with torch.no_grad():
                snapshots.append((step + 1, reuse_probability(pruner()).cpu()))

    started = time.perf_counter()
    _, history = train_pruner(ctx, dense, blocks, block_macs, total, steps, *cascade_args, after_step)
    seconds = time.perf_counter() - started
    walks = {t: [block_major_walk(p, block_macs, total, t, *cascade_args)[0] for _, p in snapshots] for t in TARGETS}
    rows = []
    for index, (step, prob) in enumerate(snapshots):
        window = slice(index * every, (index + 1) * every)
        rows.append({
            "step": step,
            "consistency": sum(history["consistency"][window]) / every,
            "kept_block_share": sum(history["kept_block_share"][window]) / every,
            "gates_at_reuse": int((prob[1:] > 0.5).sum()),
            "max_reuse_probability": float(prob[1:].max()),
            "changed_vs_final": {t: float((walks[t][index] != walks[t][-1]).float().mean()) for t in TARGETS},
        })
    return {"backbone": backbone.name, "steps": steps, "seconds": seconds, "rows": rows}


def render(result: dict[str, Any]) -> str:
    lines = [f"## {result['backbone']}: {result['steps']} pruner steps in {result['seconds']:.0f} s "
             f"({result['seconds'] / result['steps']:.2f} s/step)",
             "step | consistency | kept block share | gates at reuse | max P(reuse) | "
             + " | ".join(f"changed vs final @{t}" for t in TARGETS)]
    for row in result["rows"]:
        lines.append(f"{row['step']} | {row['consistency']:.4f} | {row['kept_block_share']:.3f} | "
                     f"{row['gates_at_reuse']} | {row['max_reuse_probability']:.3f} | "
                     + " | ".join(f"{row['changed_vs_final'][t]:.3f}" for t in TARGETS))
    return "\n".join(lines)
