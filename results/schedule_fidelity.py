"""How far each skip schedule moves the sampler, per sample and as a distribution.

For the published ``uniform-skip`` and ``dipgo`` cells of each tiny backbone:

- MSE between the schedule's samples and the full sampler's, on 64 fresh noises (seed 123) that
  neither method saw: the quantity DiP-GO's consistency loss optimises;
- FID@1024 against 1024 real digits, from the noise the harness uses (seed 0), so with four times
  the samples of the leaderboard's FID@256;
- FID@1024 against the dense model's own 1024 samples from the same noise: how far the schedule
  moves the *distribution* of the full sampler, whatever the data say.

Two diagnostic rows per backbone swap the last ``--swap-tail`` sampling steps (default 3; 0: none)
between the two schedules, to show how much of the difference those steps carry. The preset,
including the DDIM step count, is the one recorded in the cells.

Usage, from the repository root (about 10 minutes on 2 CPU cores at 20 DDIM steps, 12 at 50):

    python results/schedule_fidelity.py results/tiny/cells --swap-tail 0
    python results/schedule_fidelity.py results/tiny-ddim20/cells
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.api import RunOptions
from benchmark.checkpoints import dense_checkpoint, load_dense
from benchmark.data import load_dataset
from benchmark.diffusion import Diffusion
from benchmark.metrics import fid
from benchmark.metrics.fid import FIDScorer
from benchmark.metrics.macs import block_macs, count_macs
from benchmark.plugins import build_registries
from benchmark.presets import Preset
from benchmark.skipping import kept_macs_ratio, scheduled

BACKBONES = ("ddpm", "uvit")
SCHEDULE_METHODS = ("uniform-skip", "dipgo")
FID_SAMPLES = 1024
FID_SEED = 0  # the harness's default seed: the leaderboard's samples are the first 256 of these


def read_cells(cell_dir: Path) -> tuple[dict[tuple[str, str], dict], Preset]:
    """The schedule cells by ``(backbone, method)``, and the one preset they all ran under."""
    cells = {
        (name, method): json.loads((cell_dir / f"{name}__{method}.json").read_text())
        for name in BACKBONES
        for method in SCHEDULE_METHODS
    }
    presets = {Preset(**cell["config"]["preset"]) for cell in cells.values()}
    if len(presets) != 1:
        raise SystemExit(f"the cells in {cell_dir} ran under {len(presets)} different presets")
    return cells, presets.pop()


def main(cell_dir: Path, tail: int) -> None:
    cells, preset = read_cells(cell_dir)
    diffusion = Diffusion.for_preset(preset)
    scorer = FIDScorer("cpu", progress=False)
    real = fid.reference_features(preset.dataset, FID_SAMPLES, lambda: load_dataset(preset.dataset), scorer)
    x_T = torch.randn((64, *diffusion.image_shape), generator=torch.Generator().manual_seed(123))
    print(f"| backbone | method | kept MACs | MSE to the full sampler | FID@{FID_SAMPLES} | FID@{FID_SAMPLES} to dense samples |")
    print("|---|---|---|---|---|---|")
    backbones = build_registries().backbones
    for name in BACKBONES:
        backbone = backbones.get(name)
        model = load_dense(backbone, preset, dense_checkpoint(backbone, preset, RunOptions(), "cpu", False), "cpu")
        blocks = backbone.blocks(model)

        def sample_features(schedule: torch.Tensor | None) -> np.ndarray:
            generator = torch.Generator().manual_seed(FID_SEED)
            with scheduled(model, blocks, schedule) as on_step:
                samples = diffusion.sample(model, FID_SAMPLES, preset.sample_batch, generator, on_step)
            return scorer.features(samples)

        dense = sample_features(None)
        print(f"| {name} | dense | 1.000 | 0 | {fid.fid_from_features(dense, real):.2f} | 0 |", flush=True)
        with torch.no_grad():
            full = diffusion.denoise(model, x_T)

        def report(label: str, schedule: torch.Tensor, ratio: float) -> None:
            with torch.no_grad(), scheduled(model, blocks, schedule) as on_step:
                mse = F.mse_loss(diffusion.denoise(model, x_T, on_step), full).item()
            stats = sample_features(schedule)
            print(
                f"| {name} | {label} | {ratio:.3f} | {mse:.5f} "
                f"| {fid.fid_from_features(stats, real):.2f} | {fid.fid_from_features(stats, dense):.2f} |",
                flush=True,
            )

        schedules = {}
        for method in SCHEDULE_METHODS:
            cell = cells[name, method]
            info = cell["info"][method]
            label = f"{method} v{cell['config']['method_versions'][method]}"
            schedules[label] = torch.tensor(info["schedule"])
            report(label, schedules[label], info["kept_macs_ratio"])
        if not tail:
            continue
        macs = count_macs(model, backbone.example_inputs(preset))
        costs = torch.tensor(block_macs(macs, [block for block, _ in blocks]), dtype=torch.float32)
        (first, a), (second, b) = schedules.items()
        for label, schedule in (
            (f"{second}, last {tail} steps of {first}", torch.cat([b[:-tail], a[-tail:]])),
            (f"{first}, last {tail} steps of {second}", torch.cat([a[:-tail], b[-tail:]])),
        ):
            report(label, schedule, float(kept_macs_ratio(schedule, costs, float(macs.total))))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cell_dir", type=Path)
    parser.add_argument("--swap-tail", type=int, default=3, metavar="N", help="steps swapped in the diagnostic rows")
    args = parser.parse_args()
    main(args.cell_dir, args.swap_tail)
