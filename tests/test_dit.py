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
    params = sum(p.numel() for p in model.parameters())
    blocks = model.transformer.transformer_blocks
    repeated = sum(p.numel() for block in blocks[1:] for p in block.norm1.emb.parameters())
    assert params == pytest.approx(750e6, rel=0.01)
    assert params - repeated == pytest.approx(675e6, rel=0.01)
    assert model.transformer.config.out_channels == 8  # learned sigma
    model = model.to_empty(device="cpu")
    x, t = DiTBackbone().example_inputs(IMAGENET, 1)
    assert count_macs(model, (x, t)).total == pytest.approx(118.6e9, rel=0.01)


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


def test_the_imagenet_preset_says_what_it_needs_before_any_work():
    from benchmark.data import load_dataset

    with pytest.raises(BenchmarkError, match="imagenet256-latents.*VAE"):
        load_dataset(IMAGENET.dataset)
