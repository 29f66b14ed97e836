"""``python -m benchmark check-dense``: is a dense reference converged enough to prune from?

Two checks per backbone, and its sample grid for a person to look at:

1. its FID does not get worse with more DDIM steps (20 -> 50 -> 100 by default) beyond noise: no later step
   count significantly higher than an earlier one (:mod:`benchmark.significance` on the bootstrap intervals);
2. its FID@N at the preset's steps is at most twice the real-vs-real floor at the same N: the FID between N
   real images disjoint from the reference set and the reference set itself.

A text-to-image backbone also gets its prompt adherence at the preset's steps (its samples' grid has one
prompt per column, so a person sees whether the digits match).
"""
from __future__ import annotations

import dataclasses
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from benchmark import significance
from benchmark.grid.store import environment_versions

if TYPE_CHECKING:
    from benchmark.api import Backbone
    from benchmark.metrics.fid import FIDEstimate, FIDScorer
    from benchmark.presets import Preset

FLOOR_FACTOR = 2.0
GRID_IMAGES = 64


def worse_with_more_steps(estimates: dict[int, FIDEstimate]) -> list[str]:
    """``"a->b"`` for every pair of step counts a < b where the FID at b is higher than at a beyond noise."""
    steps = sorted(estimates)
    return [f"{a}->{b}" for i, a in enumerate(steps) for b in steps[i + 1:]
            if significance.compare([estimates[b].value], [estimates[b].sd],
                                    [estimates[a].value], [estimates[a].sd]).verdict == "higher"]


def check(backbone: Backbone, preset: Preset, path: Path, steps: list[int], real, floor: FIDEstimate,
          scorer: FIDScorer, seed: int, grids: Path | None) -> dict[str, Any]:
    """The two checks for one backbone's dense checkpoint at ``path``."""
    from benchmark.checkpoints import checkpoint_id, load_dense
    from benchmark.diffusion import Diffusion
    from benchmark.metrics import adherence, fid
    from benchmark.plots import save_grid

    model = load_dense(backbone, preset, path, "cpu")
    estimates, adherent = {}, None
    for count in steps:
        diffusion = Diffusion.for_backbone(backbone, dataclasses.replace(preset, sample_steps=count))
        samples = diffusion.sample(model, len(real), preset.sample_batch, torch.Generator().manual_seed(seed))
        estimates[count] = fid.bootstrap_fid(scorer.features(samples), real, seed=seed)
        labels = diffusion.sample_labels(0, len(samples))
        if count == preset.sample_steps and labels is not None:
            adherent = adherence.prompt_adherence(preset.dataset, samples, labels)
        if count == preset.sample_steps and grids is not None:
            grids.mkdir(parents=True, exist_ok=True)
            columns = 8 if labels is None else diffusion.guidance.prompts.classes
            save_grid(samples[:GRID_IMAGES - GRID_IMAGES % columns], grids / f"{backbone.name}_ddim{count}.png",
                      nrow=columns)
    at_preset = estimates.get(preset.sample_steps)
    return {"backbone": backbone.name, "checkpoint": checkpoint_id(path), "estimates": estimates,
            "adherence": adherent, "worse": worse_with_more_steps(estimates),
            "bounded": None if at_preset is None else at_preset.value <= FLOOR_FACTOR * floor.value}


def render(rows: list[dict[str, Any]], floor: FIDEstimate, n: int, seed: int, wall_s: float) -> str:
    steps = sorted(rows[0]["estimates"]) if rows else []
    lines = [f"# Convergence of the dense references (seed {seed}, FID@{n}, 95% bootstrap intervals)", "",
             f"Real-vs-real floor FID@{n}: {floor.value:.2f} ± {floor.high - floor.value:.2f} (held-out images against "
             f"the reference set); bound {FLOOR_FACTOR:g}x = {FLOOR_FACTOR * floor.value:.2f}", "",
             "| backbone | checkpoint | " + " | ".join(f"FID@{n}, {s} steps" for s in steps)
             + " | never worse with more steps | at preset steps <= 2x floor | prompt adherence |",
             "|---|---|" + "---|" * len(steps) + "---|---|---|"]
    for row in rows:
        cells = " | ".join(f"{e.value:.2f} ± {e.high - e.value:.2f}" for _, e in sorted(row["estimates"].items()))
        monotone = "yes" if not row["worse"] else f"no (worse: {', '.join(row['worse'])})"
        bounded = "n/a" if row["bounded"] is None else ("yes" if row["bounded"] else "no")
        held = row.get("adherence")
        adherent = "n/a" if held is None else (f"{held['prompt_adherence']:.3f} [{held['prompt_adherence_low']:.3f}, "
                                               f"{held['prompt_adherence_high']:.3f}]")
        lines.append(f"| {row['backbone']} | {row['checkpoint'][:19]}… | {cells} | {monotone} | {bounded} | {adherent} |")
    versions = ", ".join(f"{name} {version}" for name, version in environment_versions().items())
    lines += ["", f"{versions}; {platform.machine()}, {torch.get_num_threads()} threads; wall time {wall_s:.0f} s"]
    return "\n".join(lines)
