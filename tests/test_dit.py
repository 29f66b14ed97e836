"""The DiT backbone: diffusers' DiTTransformer2DModel at the DiT-XL/2 layout and the tiny one."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from backbones.dit import CONFIGS, DiT, DiTBackbone, transformer_config
from benchmark.api import BenchmarkError, CheckpointMismatchError
from benchmark.metrics.macs import count_macs
from benchmark.presets import PRESETS

IMAGENET = PRESETS["imagenet256"]
TINY = PRESETS["tiny"]


def test_dit_xl2_has_the_published_size():
    """DiT paper, Table 4: DiT-XL/2 at 256x256 has 675M parameters and 118.6 Gflops (multiply-accumulates).

    diffusers gives every block its own copy of DiT's one time-step and label embedder (the converted
    checkpoints repeat the same weights 28 times), so the module holds 750M parameters; without the
    27 repeated copies it is the paper's 675M.
    """
    torch.manual_seed(0)
    with torch.device("meta"):
        model = DiTBackbone().build(IMAGENET)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(750e6, rel=0.01)
    assert _paper_params(model) == pytest.approx(675e6, rel=0.01)
    assert model.transformer.config.out_channels == 8  # learned sigma
    model = model.to_empty(device="cpu")
    x, t = DiTBackbone().example_inputs(IMAGENET, 1)
    assert count_macs(model, (x, t)).total == pytest.approx(118.6e9, rel=0.01)


def _paper_params(model: DiT) -> int:
    """Parameters without the repeated per-block copies of the embedder (see above)."""
    blocks = model.transformer.transformer_blocks
    repeated = sum(p.numel() for block in blocks[1:] for p in block.norm1.emb.parameters())
    return sum(p.numel() for p in model.parameters()) - repeated


@pytest.mark.parametrize("variant, params, macs", [("dit-s2", 33e6, 6.06e9), ("dit-b2", 130e6, 23.01e9)])
def test_width_variants_have_the_published_sizes(variant, params, macs):
    """DiT paper, Table 4: S/2 33M params, 6.06 Gflops; B/2 130M, 23.01 Gflops; for `latency --variant`."""
    backbone = DiTBackbone()
    variants = backbone.variants(IMAGENET)
    assert list(variants) == ["dit-s2", "dit-b2", "dit-xl2"] and backbone.variants(TINY) == {}
    model = variants[variant]()
    assert _paper_params(model) == pytest.approx(params, rel=0.01)
    assert count_macs(model, backbone.example_inputs(IMAGENET, 1)).total == pytest.approx(macs, rel=0.01)


def test_latency_names_the_variants_it_has():
    from benchmark.metrics.latency import latency_command

    with pytest.raises(BenchmarkError, match="dit has no variant 'dit-l2' at preset imagenet256; available: "
                                             "dit-s2, dit-b2, dit-xl2"):
        latency_command(DiTBackbone(), IMAGENET, [1], device="cpu", variant="dit-l2")
    report = latency_command(DiTBackbone(), IMAGENET, [1], device="cpu", variant="dit-s2")
    assert report["variant"] == "dit-s2" and not report["supported"]  # no CUDA here: the n/a line, no model built


def test_the_harness_sees_epsilon_and_the_null_label_is_used():
    model = DiTBackbone().build(dataclasses.replace(IMAGENET, name="imagenet256"))
    assert model.null_label == 1000
    small = DiT(**transformer_config(TINY, {**CONFIGS["tiny"], "learned_sigma": True}))
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3, 900])
    assert small.transformer.config.out_channels == 2 and small(x, t).shape == x.shape


def test_state_dict_round_trip_is_strict(tmp_path):
    backbone = DiTBackbone()
    torch.manual_seed(0)
    model = backbone.build(TINY).eval()
    path = tmp_path / "dit.pt"
    torch.save(model.transformer.state_dict(), path)  # the transformer's own keys, as diffusers writes them
    again = backbone.build(TINY).eval()
    backbone.load_checkpoint(again, str(path))
    x, t = backbone.example_inputs(TINY, 2)
    with torch.no_grad():
        assert torch.equal(again(x, t), model(x, t))
    torch.save(model.state_dict(), path)  # this wrapper's transformer.-prefixed keys load too
    backbone.load_checkpoint(again, str(path))
    state = model.transformer.state_dict()
    del state["proj_out_2.weight"]
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError, match="missing keys .*proj_out_2.weight"):
        backbone.load_checkpoint(again, str(path))


def test_blocks_are_a_flat_list_with_the_time_step_in_every_block():
    backbone = DiTBackbone()
    model = backbone.build(TINY)
    names = [name for name, _ in backbone.blocks(model)]
    assert names == [f"transformer.transformer_blocks.{i}" for i in range(6)]
    assert not backbone.u_shaped and backbone.time_enters_every_block


def test_channel_pruning_keeps_heads_and_the_residual_stream():
    import torch_pruning as tp

    from benchmark import structural

    backbone = DiTBackbone()
    torch.manual_seed(0)
    model = backbone.build(TINY).eval()
    inputs = backbone.example_inputs(TINY, 1)
    pruned, _ = structural.prune_to_macs(model, backbone, inputs, tp.importance.MagnitudeImportance(p=1), 0.5)
    for block in pruned.transformer.transformer_blocks:
        attention = block.attn1
        widths = {attention.to_q.out_features, attention.to_k.out_features, attention.to_v.out_features}
        assert attention.heads == 4 and len(widths) == 1 and widths.pop() % 4 == 0
        assert attention.to_out[0].out_features == block.ff.net[2].out_features == 64  # the residual stream
    assert pruned.transformer.pos_embed.proj.out_channels == 64


def test_the_imagenet_preset_says_what_it_needs_before_any_work():
    from benchmark.data import load_dataset

    with pytest.raises(BenchmarkError, match="imagenet256-latents.*VAE"):
        load_dataset(IMAGENET.dataset)
