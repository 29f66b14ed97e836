"""What matches the papers' official code, pinned with figures derived from it (``results/README.md``, fidelity)."""
import json

import pytest
import torch_pruning as tp

from benchmark import structural
from benchmark.cli import main
from benchmark.plugins import build_registries
from benchmark.presets import get_preset

REGISTRIES = build_registries()


def test_uvit_2_4_layers_are_sparsedm_s_qkv_proj_fc1_fc2():
    backbone = REGISTRIES.backbones.get("uvit")
    model = backbone.build(get_preset("cifar10"))
    layers = backbone.prunable_layers(model)
    assert len(layers) == 52 and sum(layer.weight.numel() for layer in layers.values()) == pytest.approx(40.9e6, rel=1e-3)
    assert {name.rsplit(".", 2)[-2] + "." + name.rsplit(".", 1)[-1] for name in layers} == {
        "attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"}
    assert not any("skip_linear" in name for name in layers)


def test_paper_ratio_0_3_removes_one_of_four_channels_per_groupnorm_group():
    backbone = REGISTRIES.backbones.get("ddpm")
    model = backbone.build(get_preset("tiny"))
    inputs = backbone.example_inputs(get_preset("tiny"))
    pruner = structural._pruner(model, backbone, inputs, tp.importance.MagnitudeImportance(p=1), 0.3, per_layer=True)
    ratios = structural.paper_group_ratios(pruner, 0.3)
    # GroupNorm(8) on 32 channels: groups of 4; 32 - int(32 x 0.7) = 10 channels, 1 per group: ratio (1 - 0.5) / 4
    # on 16 channels: groups of 2; 16 - int(16 x 0.7) = 5, 0 per group: nothing to remove
    assert set(ratios.values()) == {0.125, 0.0}


def test_ddpm_cifar10_at_the_paper_ratio_has_the_paper_s_size(capsys):
    """Diff-Pruning's table: 35.7M -> 19.8M params, 6.1G -> 3.4G MACs at ch_sparsity 0.3, torch-pruning's counter.
    The widths of a per-layer ratio do not depend on the importance, so L1 (no gradient pass) shows them."""
    assert main(["prune", "--method", "l1-channel@layer=0.3", "--backbone", "ddpm", "--preset", "cifar10",
                 "--json", "--quiet", "--out", "/dev/null"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "random weights" in result["weights"]
    assert result["params"]["before"] == pytest.approx(35.7e6, rel=0.02)
    assert result["params"]["after"] == pytest.approx(19.8e6, rel=0.02)
    assert result["macs"]["before"] == pytest.approx(6.1e9, rel=0.02)
    assert result["macs"]["after"] == pytest.approx(3.4e9, rel=0.02)
    kept = result["kept_fraction"]
    assert kept["unet.conv_out"] == 1.0
    assert sorted(set(kept.values())) == [0.6992, 0.75, 1.0]  # torch-pruning 1.2's widths, as the paper ran it
    assert sum(1 for value in kept.values() if value == 0.75) == 88


@pytest.mark.parametrize("ratio, kept_16_wide", [(0.3, 1.0), (0.5, 0.5)])
def test_tiny_unet_groupnorm_pairs_keep_whole_or_half(ratio, kept_16_wide):
    """GroupNorm(8, 16) pairs channels: a 16-wide layer keeps all or half; the paper's rounding keeps all below 0.5."""
    backbone = REGISTRIES.backbones.get("ddpm")
    preset = get_preset("tiny")
    model = backbone.build(preset)
    pruned, info = structural.prune_per_layer(model, backbone, backbone.example_inputs(preset),
                                              tp.importance.MagnitudeImportance(p=1), ratio)
    kept = structural.kept_fractions(model, pruned)
    assert kept["unet.down_blocks.0.resnets.0.conv1"] == kept_16_wide
    assert info["ranking"] == "per-layer" and 0 < info["macs_ratio"] < 1


def test_ddpm_2_4_layers_are_the_111_that_apex_asp_masks():
    """apex's ASP masks 111 layers of the google/ddpm-cifar10-32 UNet (not conv_in with 3 inputs, not conv_out
    with 3 outputs); SparseDM's own DDPM code also masks conv_out, which no 2:4 kernel can take."""
    from benchmark.api import NMPattern
    from benchmark.sparsity import skip_reason

    backbone = REGISTRIES.backbones.get("ddpm")
    layers = backbone.prunable_layers(backbone.build(get_preset("cifar10")))
    assert len([name for name, layer in layers.items() if not skip_reason(layer.weight, NMPattern(2, 4))]) == 111
    assert "unet.conv_out" not in layers


def test_dipgo_pruner_has_the_official_trainable_size_on_sd15_s_layout():
    """50 steps x 9 blocks: the official log counts 37,852,676 trainable parameters, of which 526,976 belong to
    an encoder layer whose forward returns its input (left out here)."""
    from methods.dipgo import PrunerNet

    assert sum(p.numel() for p in PrunerNet(50, 9).parameters()) == 37_852_676 - 526_976
