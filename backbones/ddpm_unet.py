"""The DDPM UNet of Ho et al. as diffusers' ``UNet2DModel``; cifar10 is google/ddpm-cifar10-32."""
from __future__ import annotations

import json
import os
import re
from typing import Callable

import torch
from torch import nn

from backbones.uvit import load_state_dict_strict, read_state_dict
from benchmark import hookimpl
from benchmark.api import Backbone, BenchmarkError, ChannelPruning, CheckpointMismatchError
from benchmark.presets import Preset

CONFIGS: dict[str, dict] = {
    # unet/config.json of google/ddpm-cifar10-32: 35.746M params, 6.064 GMACs; attention at 16x16.
    "cifar10": dict(
        block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        norm_num_groups=32,
        norm_eps=1e-6,
        downsample_padding=0,
        flip_sin_to_cos=False,
        freq_shift=1,
        attention_head_dim=None,
    ),
    # Same recipe on 16x16 digits: resolutions 16/8/4, attention at 8x8, channels multiples of 8.
    "tiny": dict(
        block_out_channels=(16, 32, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
        norm_eps=1e-6,
        downsample_padding=0,
        flip_sin_to_cos=False,
        freq_shift=1,
        attention_head_dim=None,
    ),
}
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
# Checkpoints converted by early diffusers (google/ddpm-*) name the attention projections the old way.
_LEGACY_ATTENTION = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")
_RENAMED_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_TRAINING_ONLY = {"dropout"}  # google/ddpm-cifar10-32 was trained with dropout 0.1; sampling ignores it


class DDPMUNet(nn.Module):
    """``model(x, t) -> eps`` around a diffusers ``UNet2DModel`` kept as attribute ``unet``."""

    def __init__(self, **unet_config):
        super().__init__()
        from diffusers import UNet2DModel  # imported here: diffusers takes seconds to import

        self.unet = UNet2DModel(**unet_config)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample


def _unet_state_dict(checkpoint: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """UNet2DModel keys from our own ``unet.``-prefixed files or from diffusers files (old names included)."""
    state_dict = {}
    for key, tensor in checkpoint.items():
        key = key.removeprefix("unet.")
        legacy = _LEGACY_ATTENTION.match(key)
        if legacy:
            block, old_name, kind = legacy.groups()
            key = f"{block}.{_RENAMED_ATTENTION[old_name]}.{kind}"
        state_dict[key] = tensor
    return state_dict


def diffusers_weights(model: nn.Module, path: str, subfolder: str, ignored: Callable[[str], bool]) -> str:
    """The weights file of a diffusers model directory (or of a pipeline's ``subfolder``) for ``model``.

    Architecture settings that no weight shape reveals (e.g. ``flip_sin_to_cos``, heads) must agree
    with the directory's ``config.json``, except the keys ``ignored`` names.
    """
    if os.path.isdir(os.path.join(path, subfolder)):
        path = os.path.join(path, subfolder)
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise BenchmarkError(f"checkpoint directory has no config.json: {path}")
    with open(config_path) as f:
        saved = json.load(f)
    differ = [
        f"{key}={saved[key]!r} vs model {value!r}"
        for key, value in model.config.items()
        if key in saved and not ignored(key) and (list(value) if isinstance(value, tuple) else value) != saved[key]
    ]
    if differ:
        raise CheckpointMismatchError(f"checkpoint config {config_path} does not fit the model: {'; '.join(differ)}")
    weights = [os.path.join(path, name) for name in WEIGHT_FILES if os.path.isfile(os.path.join(path, name))]
    if not weights:
        raise BenchmarkError(f"no {' or '.join(WEIGHT_FILES)} in checkpoint directory {path}")
    return weights[0]


def unet_blocks(unet: nn.Module, prefix: str = "unet") -> list[tuple[str, nn.Module]]:
    """A diffusers UNet's down blocks, mid block and up blocks, as ``(qualified name, module)``."""
    return [
        *((f"{prefix}.down_blocks.{i}", blk) for i, blk in enumerate(unet.down_blocks)),
        (f"{prefix}.mid_block", unet.mid_block),
        *((f"{prefix}.up_blocks.{i}", blk) for i, blk in enumerate(unet.up_blocks)),
    ]


class DDPMBackbone(Backbone):
    name = "ddpm"
    version = "1"
    description = "diffusers UNet2DModel (cifar10: google/ddpm-cifar10-32, 35.7M params; tiny: 0.28M)"

    def build(self, preset: Preset) -> DDPMUNet:
        if preset.name not in CONFIGS:
            raise BenchmarkError(f"ddpm has no config for preset {preset.name!r}; available: {', '.join(CONFIGS)}")
        return DDPMUNet(
            sample_size=preset.image_size, in_channels=preset.channels, out_channels=preset.channels,
            **CONFIGS[preset.name],
        )

    def load_checkpoint(self, model: nn.Module, path: str) -> None:
        """Load a diffusers model directory (or a pipeline directory with ``unet/``) or a state-dict file."""
        if os.path.isdir(path):
            path = diffusers_weights(model.unet, path, "unet", lambda key: key in _TRAINING_ONLY)
        load_state_dict_strict(model.unet, _unet_state_dict(read_state_dict(path)), path)

    def blocks(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return unet_blocks(model.unet)

    def kept_dense(self, model: nn.Module) -> list[str]:
        return ["unet.conv_in", "unet.conv_out"]

    def channel_pruning(self, model: nn.Module) -> ChannelPruning:
        """Only ``conv_out`` keeps its width, as in Diff-Pruning; GroupNorm keeps its groups (torch-pruning
        removes the same offsets in every group) and attention has one head here."""
        return ChannelPruning(kept=["unet.conv_out"])

    def after_channel_pruning(self, model: nn.Module) -> None:
        """diffusers' resamplers check their input against a stored channel count."""
        from diffusers.models.downsampling import Downsample2D
        from diffusers.models.upsampling import Upsample2D

        for module in model.modules():
            if isinstance(module, (Downsample2D, Upsample2D)) and module.conv is not None:
                module.channels, module.out_channels = module.conv.in_channels, module.conv.out_channels


@hookimpl
def register_backbones(register):
    register(DDPMBackbone())
