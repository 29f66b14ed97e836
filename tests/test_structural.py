"""Structural pruning on the real tiny backbones: torch-pruning reaches a MACs target, the smaller model
runs and reloads from its file; Diff-Pruning's gradient pass stops at its threshold."""
from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from torch import nn

from benchmark import structural
from benchmark.diffusion import Diffusion
from benchmark.metrics.macs import count_macs
from benchmark.plugins import build_registries
from benchmark.presets import PRESETS

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def registries():
    return build_registries()


@pytest.mark.parametrize("name, target", [("ddpm", 0.5), ("uvit", 0.5), ("dit", 0.5), ("ddpm", 0.3)])
def test_pruning_meets_the_macs_target_and_reloads(registries, tmp_path, name, target):
    backbone = registries.backbones.get(name)
    torch.manual_seed(0)
    model = backbone.build(TINY).eval()
    inputs = backbone.example_inputs(TINY, 1)
    pruned, info = structural.prune_to_macs(model, backbone, inputs, tp.importance.MagnitudeImportance(p=1), target)

    dense_report, report = count_macs(model, inputs), count_macs(pruned, inputs)
    assert abs(report.total / dense_report.total - target) <= 0.05 * target
    assert info["macs_ratio"] == pytest.approx(report.total / dense_report.total)
    assert report.params < dense_report.params and structural.architecture_changed(model, pruned)
    for kept in backbone.channel_pruning(model).kept:  # e.g. the output head keeps its width
        assert pruned.get_submodule(kept).weight.shape[0] == model.get_submodule(kept).weight.shape[0]

    path = tmp_path / "pruned.pt"
    structural.save_pruned(pruned, path)
    reloaded = structural.load_pruned(backbone, TINY, path)
    x, t = backbone.example_inputs(TINY, 3)
    with torch.no_grad():
        assert torch.equal(reloaded(x, t), pruned.eval()(x, t))
        assert reloaded(x, t).shape == model(x, t).shape


def test_taylor_and_magnitude_rank_channels_differently(registries):
    backbone = registries.backbones.get("uvit")
    torch.manual_seed(0)
    model = backbone.build(TINY)
    inputs = backbone.example_inputs(TINY, 2)
    model(*inputs).pow(2).mean().backward()
    kept = []
    for importance in (tp.importance.TaylorImportance(), tp.importance.MagnitudeImportance(p=1)):
        pruned, history = structural.prune_channels(model, backbone, inputs, importance, 0.3)
        kept.append(history)
        assert model.in_blocks[0].mlp.fc1.weight.grad is not None  # the copy got the gradients, not a moved original
    taylor, magnitude = kept
    assert taylor != magnitude


class Scaled(nn.Module):
    """``eps = w * x_t``: at w = 1 with clean images of zeros the loss falls as t grows."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.w * x


def test_diffusion_gradients_stop_below_the_threshold():
    diffusion = Diffusion((1, 4, 4), sample_steps=10)
    x0, noise = torch.zeros(2, 1, 4, 4), torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    model = Scaled()
    losses = structural.diffusion_gradients(model, diffusion, x0, noise, threshold=0.05)
    stop = next(i for i, loss in enumerate(losses) if loss < 0.05 * max(losses[: i + 1]))
    assert len(losses) == stop + 1 and 1 < stop < diffusion.num_train_timesteps  # the step that stops it counts
    assert losses[0] == max(losses) and model.w.grad is not None and model.w.grad != 0

    everything = structural.diffusion_gradients(Scaled(), diffusion, x0, noise, threshold=1e-12)
    assert len(everything) == diffusion.num_train_timesteps
