"""The paper preset's path before anyone queues it: ``run --preset cifar10`` end to end on CPU, with the
full-size U-ViT-S/2 and DDPM UNet, on a synthetic stand-in for CIFAR-10 fed through the same loader."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from benchmark import data
from benchmark.cli import main
from benchmark.grid.store import CellStore
from benchmark.plugins import build_registries
from benchmark.presets import PRESETS


@pytest.mark.slow
def test_cifar10_preset_end_to_end_on_synthetic_images(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))  # keep synthetic features out of the real cache
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(data, "_cifar10", lambda root: images)
    preset = dataclasses.replace(PRESETS["cifar10"], batch_size=2, sample_batch=2, latency_batch=1)
    monkeypatch.setitem(PRESETS, "cifar10", preset)  # same name, configs and recipe; small batches
    arguments = ["run", "--preset", "cifar10", "--methods", "dense,asp,uniform-skip", "--backbones", "ddpm,uvit",
                 "--train-steps", "1", "--fid-samples", "2", "--sample-steps", "2", "--out", str(tmp_path / "run"),
                 "--quiet", "--jobs", "1"]  # in this process: the synthetic images are patched in here
    registries = build_registries()
    for name in ("ddpm", "uvit"):  # no official weights offline: freshly initialised full-size checkpoints
        path = tmp_path / f"{name}.pt"
        torch.save(registries.backbones.get(name).build(preset).state_dict(), path)
        arguments += ["--checkpoint", f"{name}={path}"]

    assert main(arguments) == 0
    cells = {(c["backbone"], c["method"]): c for c in CellStore(tmp_path / "run").all_cells()}
    assert len(cells) == 6 and all(c["status"] == "ok" for c in cells.values())
    assert cells["ddpm", "dense"]["metrics"]["params_m"] == pytest.approx(35.75, abs=0.01)
    assert cells["uvit", "dense"]["metrics"]["params_m"] == pytest.approx(44.26, abs=0.01)
    # google/ddpm-cifar10-32's 6.06 GMACs of torch-pruning's count, plus its 16x16 attention matmuls
    assert cells["ddpm", "dense"]["metrics"]["macs_g"] == pytest.approx(6.23, abs=0.01)
    assert cells["uvit", "asp"]["metrics"]["masked_sparsity"] == pytest.approx(0.5)
    assert cells["ddpm", "uniform-skip"]["metrics"]["sparse_macs_g"] < cells["ddpm", "dense"]["metrics"]["macs_g"]
