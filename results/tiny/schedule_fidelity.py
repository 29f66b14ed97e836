"""How far each skip schedule moves the sampler: MSE between its samples and the full sampler's.

This is the quantity DiP-GO's consistency loss optimises, measured on 64 fresh noises (seed 123)
that neither method saw. Usage, from the repository root:

    python results/tiny/schedule_fidelity.py results/tiny/cells [more cell directories ...]
"""
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmark.api import RunOptions
from benchmark.checkpoints import load_dense
from benchmark.diffusion import Diffusion
from benchmark.plugins import build_registries
from benchmark.presets import get_preset
from benchmark.skipping import scheduled

SCHEDULE_METHODS = ("uniform-skip", "dipgo")


def main(cell_dirs: list[str]) -> None:
    preset = get_preset("tiny")
    diffusion = Diffusion.for_preset(preset)
    x_T = torch.randn((64, *diffusion.image_shape), generator=torch.Generator().manual_seed(123))
    print("| backbone | cells | method | kept MACs | MSE to the full sampler |")
    print("|---|---|---|---|---|")
    for name in ("ddpm", "uvit"):
        backbone = build_registries().backbones.get(name)
        model = load_dense(backbone, preset, RunOptions(), "cpu", progress=False)
        with torch.no_grad():
            full = diffusion.denoise(model, x_T)
            for cell_dir in cell_dirs:
                for method in SCHEDULE_METHODS:
                    cell = json.loads((Path(cell_dir) / f"{name}__{method}.json").read_text())
                    info = cell["info"][method]
                    with scheduled(model, backbone.blocks(model), torch.tensor(info["schedule"])) as on_step:
                        mse = F.mse_loss(diffusion.denoise(model, x_T, on_step), full).item()
                    ratio = info["kept_macs_ratio"]
                    print(f"| {name} | {cell_dir} | {method} v{cell['config']['method_versions'][method]} | {ratio:.3f} | {mse:.5f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
