"""Backbones: official layouts and sizes, strict checkpoint loading, and the plugin contract."""
from __future__ import annotations

import importlib
import itertools
import json
import math
from dataclasses import replace

import pluggy
import pytest
import torch
import torch_pruning as tp
from safetensors.torch import save_file
from torch import nn

from backbones import ddpm_unet, uvit
from benchmark import PROJECT, hookspecs
from benchmark.api import Backbone, BenchmarkError, CheckpointMismatchError
from benchmark.plugins import DEFAULT_PLUGINS, build_registries
from benchmark.presets import get_preset
from benchmark.skipping import BlockGates

TINY, CIFAR10 = get_preset("tiny"), get_preset("cifar10")


def _builtin_backbones() -> dict[str, Backbone]:
    """The backbones as the registry sees them, from a manager holding only the built-in backbone plugins."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    for module in DEFAULT_PLUGINS:
        if module.startswith("backbones."):
            pm.register(importlib.import_module(module), name=module)
    registry = build_registries(pm).backbones
    return {name: registry.get(name) for name in registry.names()}


BUILTIN = _builtin_backbones()
BACKBONES = list(BUILTIN)
BLOCKS = {"uvit": 7, "ddpm": 7, "dit": 6, "sd": 7}  # skippable blocks of each tiny layout

# Every key of the official cifar10_uvit_small.pth (baofff/U-ViT, libs/uvit.py, U-ViT-S/2) and its shape.
_UVIT_TOP_KEYS = {
    "pos_embed": (1, 257, 512),
    "patch_embed.proj.weight": (512, 3, 2, 2),
    "patch_embed.proj.bias": (512,),
    "norm.weight": (512,),
    "norm.bias": (512,),
    "decoder_pred.weight": (12, 512),
    "decoder_pred.bias": (12,),
    "final_layer.weight": (3, 3, 3, 3),
    "final_layer.bias": (3,),
}
_UVIT_BLOCK_KEYS = {
    "norm1.weight": (512,),
    "norm1.bias": (512,),
    "attn.qkv.weight": (1536, 512),
    "attn.proj.weight": (512, 512),
    "attn.proj.bias": (512,),
    "norm2.weight": (512,),
    "norm2.bias": (512,),
    "mlp.fc1.weight": (2048, 512),
    "mlp.fc1.bias": (2048,),
    "mlp.fc2.weight": (512, 2048),
    "mlp.fc2.bias": (512,),
}
_UVIT_SKIP_KEYS = {"skip_linear.weight": (512, 1024), "skip_linear.bias": (512,)}
OFFICIAL_UVIT_CIFAR10 = {
    **_UVIT_TOP_KEYS,
    **{f"in_blocks.{i}.{k}": s for i in range(6) for k, s in _UVIT_BLOCK_KEYS.items()},
    **{f"mid_block.{k}": s for k, s in _UVIT_BLOCK_KEYS.items()},
    **{f"out_blocks.{i}.{k}": s for i in range(6) for k, s in {**_UVIT_BLOCK_KEYS, **_UVIT_SKIP_KEYS}.items()},
}

# unet/config.json of google/ddpm-cifar10-32 (as copied in VainF/Diff-Pruning tools/ddpm_cifar10_config.json).
GOOGLE_DDPM_CIFAR10_CONFIG = {
    "_class_name": "UNet2DModel",
    "_diffusers_version": "0.0.4",
    "act_fn": "silu",
    "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256],
    "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0,
    "dropout": 0.1,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 32,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}


@pytest.fixture(scope="module")
def backbones() -> dict[str, Backbone]:
    return BUILTIN


@pytest.fixture(scope="module")
def uvit_cifar10() -> uvit.UViT:
    return uvit.UViTBackbone().build(CIFAR10)


@pytest.fixture(scope="module")
def ddpm_cifar10() -> ddpm_unet.DDPMUNet:
    return ddpm_unet.DDPMBackbone().build(CIFAR10)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def outputs(model: nn.Module, seed: int = 1, shape: tuple[int, ...] = (TINY.channels, TINY.image_size, TINY.image_size)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, *shape, generator=generator)
    with torch.no_grad():
        return model(x, torch.tensor([3, 870]))


def test_registered_backbones(backbones):
    assert sorted(backbones) == ["ddpm", "dit", "sd", "uvit"]
    assert all(b.version and b.description for b in backbones.values())


# -- paper configurations ------------------------------------------------------------------


def test_uvit_cifar10_has_exactly_the_official_keys_and_shapes(uvit_cifar10):
    assert {k: tuple(v.shape) for k, v in uvit_cifar10.state_dict().items()} == OFFICIAL_UVIT_CIFAR10
    assert sum(math.prod(s) for s in OFFICIAL_UVIT_CIFAR10.values()) == n_params(uvit_cifar10)
    assert round(n_params(uvit_cifar10) / 1e6, 2) == 44.26


def test_ddpm_cifar10_matches_google_ddpm_size(ddpm_cifar10):
    x, t = ddpm_unet.DDPMBackbone().example_inputs(CIFAR10)
    macs, params = tp.utils.count_ops_and_params(ddpm_cifar10, (x, t))
    assert params == n_params(ddpm_cifar10)
    assert params / 1e6 == pytest.approx(35.746, abs=0.01)
    assert macs / 1e9 == pytest.approx(6.064, abs=0.01)


def test_ddpm_cifar10_accepts_the_google_config(ddpm_cifar10, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(GOOGLE_DDPM_CIFAR10_CONFIG))
    save_file(ddpm_cifar10.unet.state_dict(), tmp_path / "diffusion_pytorch_model.safetensors")
    ddpm_unet.DDPMBackbone().load_checkpoint(ddpm_cifar10, str(tmp_path))


def test_uvit_attention_uses_the_official_qkv_layout():
    """qkv features are (q|k|v, head, head_dim): plain per-head softmax attention must agree."""
    attn = uvit.Attention(dim=16, num_heads=2)
    x = torch.randn(3, 5, 16)
    q, k, v = (part.reshape(3, 5, 2, 8).transpose(1, 2) for part in attn.qkv(x).chunk(3, dim=-1))
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), dim=-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(3, 5, 16))
    torch.testing.assert_close(attn(x), expected)


def test_uvit_unpatchify_reads_features_as_p1_p2_channel():
    model = uvit.UViT(replace(uvit.CONFIGS["tiny"], img_size=4, in_chans=3, embed_dim=8, depth=2, num_heads=1))
    patch = model.config.patch_size
    patches = torch.randn(1, (4 // patch) ** 2, patch * patch * 3)
    image = model._unpatchify(patches, torch.Size([4, 4]))
    grid_w = 4 // patch
    for token in range(patches.shape[1]):
        for p1 in range(patch):
            for p2 in range(patch):
                for c in range(3):
                    pixel = image[0, c, (token // grid_w) * patch + p1, (token % grid_w) * patch + p2]
                    assert pixel == patches[0, token, (p1 * patch + p2) * 3 + c]


def test_uvit_timestep_embedding_is_cos_then_sin():
    emb = uvit.timestep_embedding(torch.tensor([0, 7]), dim=6)
    assert emb.shape == (2, 6)
    torch.testing.assert_close(emb[0], torch.tensor([1.0, 1, 1, 0, 0, 0]))
    freqs = torch.exp(-math.log(10000) * torch.arange(3) / 3)
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(7 * freqs), torch.sin(7 * freqs)]))


def test_uvit_runs_in_reduced_precision():
    """The time token follows the weights' dtype, so a ``.half()``/``bfloat16`` model needs no autocast."""
    model = uvit.UViTBackbone().build(TINY).to(torch.bfloat16)
    x, t = uvit.UViTBackbone().example_inputs(TINY, batch=2)
    assert model(x.to(torch.bfloat16), t).dtype == torch.bfloat16


# -- checkpoints ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", BACKBONES)
def test_own_state_dict_round_trips(backbones, name, tmp_path):
    backbone = backbones[name]
    trained = backbone.build(TINY)
    path = tmp_path / "dense.pt"
    torch.save(trained.state_dict(), path)
    fresh = backbone.build(TINY)
    shape = backbone.example_inputs(TINY)[0].shape[1:]
    assert not torch.equal(outputs(fresh, shape=shape), outputs(trained, shape=shape))
    backbone.load_checkpoint(fresh, str(path))
    assert torch.equal(outputs(fresh, shape=shape), outputs(trained, shape=shape))


@pytest.mark.parametrize("name, other", list(itertools.permutations(BACKBONES, 2)))
def test_wrong_architecture_names_the_differing_keys(backbones, name, other, tmp_path):
    path = tmp_path / f"{other}.pt"
    torch.save(backbones[other].build(TINY).state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(\d+\): .*; unexpected keys \(\d+\): ") as error:
        backbones[name].load_checkpoint(backbones[name].build(TINY), str(path))
    assert "\n" not in str(error.value)


def test_mismatch_message_counts_and_shapes(tmp_path):
    model = uvit.UViTBackbone().build(TINY)
    state = model.state_dict()
    del state["norm.bias"], state["mid_block.norm1.bias"]
    state["label_emb.weight"] = torch.zeros(10, 64)
    state["decoder_pred.weight"] = torch.zeros(12, 64)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointMismatchError) as error:
        uvit.UViTBackbone().load_checkpoint(model, str(tmp_path / "bad.pt"))
    message = str(error.value)
    assert "missing keys (2): " in message and "norm.bias" in message
    assert "unexpected keys (1): label_emb.weight;" in message
    assert f"shape mismatches (1): decoder_pred.weight [12, 64] vs model {list(model.decoder_pred.weight.shape)}" in message


def test_unreadable_or_absent_checkpoint_is_a_user_error(tmp_path):
    model = uvit.UViTBackbone().build(TINY)
    with pytest.raises(BenchmarkError, match="not found"):
        uvit.UViTBackbone().load_checkpoint(model, str(tmp_path / "absent.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(BenchmarkError, match="cannot read checkpoint"):
        uvit.UViTBackbone().load_checkpoint(model, str(tmp_path / "junk.pt"))
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointMismatchError, match="not a state dict"):
        uvit.UViTBackbone().load_checkpoint(model, str(tmp_path / "tensor.pt"))


def test_uvit_loads_an_official_training_checkpoint(tmp_path):
    """Official training saves ``{step}.ckpt/nnet.pth``; a dict with an ``nnet`` entry loads too."""
    backbone = uvit.UViTBackbone()
    trained = backbone.build(TINY)
    torch.save({"nnet": trained.state_dict(), "step": 500_000}, tmp_path / "ckpt.pth")
    fresh = backbone.build(TINY)
    backbone.load_checkpoint(fresh, str(tmp_path / "ckpt.pth"))
    assert torch.equal(outputs(fresh), outputs(trained))


@pytest.mark.parametrize("layout", ["model_dir", "pipeline_dir", "safetensors_file"])
def test_ddpm_loads_diffusers_checkpoints(layout, tmp_path):
    backbone = ddpm_unet.DDPMBackbone()
    trained = backbone.build(TINY)
    if layout == "model_dir":
        trained.unet.save_pretrained(tmp_path)
        path = tmp_path
    elif layout == "pipeline_dir":
        trained.unet.save_pretrained(tmp_path / "unet")
        path = tmp_path
    else:
        path = tmp_path / "unet.safetensors"
        save_file(trained.unet.state_dict(), path)
    fresh = backbone.build(TINY)
    backbone.load_checkpoint(fresh, str(path))
    assert torch.equal(outputs(fresh), outputs(trained))


def test_ddpm_renames_legacy_attention_keys(tmp_path):
    """google/ddpm-* weights predate diffusers' to_q/to_k/to_v/to_out.0 attention names."""
    backbone = ddpm_unet.DDPMBackbone()
    trained = backbone.build(TINY)
    legacy_names = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    legacy = {}
    for key, tensor in trained.unet.state_dict().items():
        for new, old in legacy_names.items():
            key = key.replace(new, old)
        legacy[key] = tensor
    assert "mid_block.attentions.0.query.weight" in legacy
    torch.save(legacy, tmp_path / "diffusion_pytorch_model.bin")
    fresh = backbone.build(TINY)
    backbone.load_checkpoint(fresh, str(tmp_path / "diffusion_pytorch_model.bin"))
    assert torch.equal(outputs(fresh), outputs(trained))


def test_ddpm_directory_with_other_settings_is_rejected(tmp_path):
    """``flip_sin_to_cos`` changes no weight shape, so the directory's config.json is compared too."""
    backbone = ddpm_unet.DDPMBackbone()
    other = ddpm_unet.DDPMUNet(
        sample_size=16, in_channels=1, out_channels=1, **{**ddpm_unet.CONFIGS["tiny"], "flip_sin_to_cos": True}
    )
    other.unet.save_pretrained(tmp_path)
    with pytest.raises(CheckpointMismatchError, match="flip_sin_to_cos=True vs model False"):
        backbone.load_checkpoint(backbone.build(TINY), str(tmp_path))


# -- the plugin contract at the tiny preset ------------------------------------------------


@pytest.mark.parametrize("name", BACKBONES)
def test_forward_predicts_noise_of_the_input_shape(backbones, name):
    backbone = backbones[name]
    for preset in (TINY, replace(TINY, channels=3, image_size=8)):
        model = backbone.build(preset)
        x, t = backbone.example_inputs(preset, batch=3)
        assert t.dtype == torch.long
        eps = model(x, torch.tensor([0, 500, 999]))
        assert eps.shape == x.shape
        assert torch.isfinite(eps).all()


@pytest.mark.parametrize("name", BACKBONES)
def test_blocks_are_listed_in_execution_order(backbones, name):
    backbone = backbones[name]
    model = backbone.build(TINY)
    blocks = backbone.blocks(model)
    called: list[str] = []
    for block_name, block in blocks:
        assert model.get_submodule(block_name) is block
        block.register_forward_hook(lambda *_, n=block_name: called.append(n))
    model(*backbone.example_inputs(TINY))
    assert len(blocks) == BLOCKS[name]
    assert called == [n for n, _ in blocks]


@pytest.mark.parametrize("name", BACKBONES)
def test_time_enters_every_block_tells_whether_reusing_the_first_block_freezes_the_rest(backbones, name):
    """Step 1 reuses in_blocks.0 and runs the rest; it matches reusing everything iff time enters only there."""
    backbone = backbones[name]
    model = backbone.build(TINY).eval()
    x0, _ = backbone.example_inputs(TINY, batch=2)
    x1 = torch.randn_like(x0)
    blocks = backbone.blocks(model)
    n = len(blocks)
    outs = []
    with torch.no_grad(), BlockGates(blocks) as gates:
        for step1_gates in ([False] + [True] * (n - 1), [False] * n):
            gates.set_step(0, [True] * n)
            model(x0, torch.tensor([900, 900]))
            gates.set_step(1, step1_gates)
            outs.append(model(x1, torch.tensor([850, 850])))
    assert torch.equal(*outs) == (not backbone.time_enters_every_block)


@pytest.mark.parametrize("name", BACKBONES)
def test_prunable_layers_exclude_the_stem_and_head(backbones, name):
    backbone = backbones[name]
    model = backbone.build(TINY)
    prunable = backbone.prunable_layers(model)
    kept = backbone.kept_dense(model)
    assert prunable and not set(prunable) & set(kept)
    assert all(isinstance(model.get_submodule(n), (nn.Linear, nn.Conv2d)) for n in kept)
    assert all(isinstance(layer, (nn.Linear, nn.Conv2d)) for layer in prunable.values())
    # N:M groups (M up to 8) run along the input dimension, so it must split into whole groups.
    assert all(layer.weight.shape[1] % 8 == 0 for layer in prunable.values())


@pytest.mark.parametrize("name", BACKBONES)
def test_unknown_preset_is_a_user_error(backbones, name):
    with pytest.raises(BenchmarkError, match="no config for preset 'huge'"):
        backbones[name].build(replace(TINY, name="huge"))
