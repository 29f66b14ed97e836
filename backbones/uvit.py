"""U-ViT (Bao et al., CVPR 2023): a ViT with long skips, written with the module names of the
official ``libs/uvit.py`` so that ``cifar10_uvit_small.pth`` loads with ``strict=True``.

Tokens are one time token followed by the image patches. The first half of the blocks push
their outputs onto a stack; the second half pop them and fuse ``cat([x, skip])`` with
``skip_linear`` before attention.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from benchmark import hookimpl
from benchmark.api import Backbone, BenchmarkError, ChannelPruning, CheckpointMismatchError
from benchmark.presets import Preset

_SHOWN_KEYS = 3  # keys named per kind of mismatch in an error message
SPARSE_LAYERS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")  # per block, N:M-masked (SparseDM's U-ViT)


@dataclass(frozen=True)
class UViTConfig:
    img_size: int
    patch_size: int
    in_chans: int
    embed_dim: int
    depth: int  # in-blocks + out-blocks; the mid block comes on top
    num_heads: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    mlp_time_embed: bool = False
    conv: bool = True  # 3x3 conv on the unpatchified output


CONFIGS = {
    # U-ViT-S/2, configs/cifar10_uvit_small.py of the official code: 44.26M parameters.
    "cifar10": UViTConfig(img_size=32, patch_size=2, in_chans=3, embed_dim=512, depth=12, num_heads=8),
    # 3 in-blocks, a mid block and 3 out-blocks on 16x16 digits; every prunable input dim is a multiple of 8.
    "tiny": UViTConfig(img_size=16, patch_size=2, in_chans=1, embed_dim=64, depth=6, num_heads=4),
}


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t f), sin(t f)]`` of ``[B]`` timesteps, as in the official code."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(embedding, (0, dim % 2))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5  # fixed, as in the official code: pruning head dims keeps it
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        # qkv features are laid out (q|k|v, head, head_dim), as in the official checkpoint.
        q, k, v = self.qkv(x).reshape(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(x.transpose(1, 2).reshape(batch, length, -1))  # -1: heads may be narrower after pruning


class Mlp(nn.Module):
    """timm's two-layer MLP (``fc1``, GELU, ``fc2``) without dropout."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block; with ``skip=True`` it first fuses a long-skip input."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, skip: bool = False):
        super().__init__()
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, patches, D]


class UViT(nn.Module):
    """Unconditional U-ViT noise predictor: ``model(x, t) -> eps`` for discrete ``t`` in [0, 1000)."""

    def __init__(self, config: UViTConfig):
        super().__init__()
        self.config = config
        dim, patch = config.embed_dim, config.patch_size
        self.patch_embed = PatchEmbed(patch, config.in_chans, dim)
        self.time_embed = (
            nn.Sequential(nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, dim))
            if config.mlp_time_embed
            else nn.Identity()
        )
        num_patches = (config.img_size // patch) ** 2
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, dim))

        def block(skip: bool = False) -> Block:
            return Block(dim, config.num_heads, config.mlp_ratio, config.qkv_bias, skip)

        self.in_blocks = nn.ModuleList(block() for _ in range(config.depth // 2))
        self.mid_block = block()
        self.out_blocks = nn.ModuleList(block(skip=True) for _ in range(config.depth // 2))
        self.norm = nn.LayerNorm(dim)
        self.decoder_pred = nn.Linear(dim, patch * patch * config.in_chans)
        self.final_layer = (
            nn.Conv2d(config.in_chans, config.in_chans, 3, padding=1) if config.conv else nn.Identity()
        )
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x)
        time_token = self.time_embed(timestep_embedding(t, self.config.embed_dim).to(tokens.dtype))
        tokens = torch.cat([time_token.unsqueeze(1), tokens], dim=1) + self.pos_embed

        skips = []
        for blk in self.in_blocks:
            tokens = blk(tokens)
            skips.append(tokens)
        tokens = self.mid_block(tokens)
        for blk in self.out_blocks:
            tokens = blk(tokens, skips.pop())

        patches = self.decoder_pred(self.norm(tokens))[:, 1:]  # drop the time token
        return self.final_layer(self._unpatchify(patches, x.shape[-2:]))

    def _unpatchify(self, patches: torch.Tensor, size: torch.Size) -> torch.Tensor:
        """``[B, h*w, p*p*C]`` with features laid out (p1, p2, C) -> ``[B, C, h*p, w*p]``."""
        p, channels = self.config.patch_size, self.config.in_chans
        h, w = size[0] // p, size[1] // p
        grid = patches.reshape(patches.shape[0], h, w, p, p, channels)
        return grid.permute(0, 5, 1, 3, 2, 4).reshape(patches.shape[0], channels, h * p, w * p)


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or of a ``torch.save``-d state dict."""
    if not os.path.isfile(path):
        raise BenchmarkError(f"checkpoint not found: {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            checkpoint = load_file(path)
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a corrupt or foreign file: report it as the user's input
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        raise BenchmarkError(f"cannot read checkpoint {path}: {reason}") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointMismatchError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a state dict")
    return checkpoint


def load_state_dict_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state_dict, strict=True)``, but every mismatch becomes one line."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    reshaped = [
        f"{k} {list(state_dict[k].shape)} vs model {list(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = [
        f"{kind} ({len(items)}): {', '.join(items[:_SHOWN_KEYS])}{', ...' if len(items) > _SHOWN_KEYS else ''}"
        for kind, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", reshaped))
        if items
    ]
    if problems:
        raise CheckpointMismatchError(f"checkpoint {source} does not fit the model: {'; '.join(problems)}")
    model.load_state_dict(state_dict, strict=True)


class UViTBackbone(Backbone):
    name = "uvit"
    version = "2"
    description = "U-ViT with official module names (cifar10: U-ViT-S/2, 44.3M params; tiny: 0.38M)"
    time_enters_every_block = False  # the time step is a token, concatenated before in_blocks.0

    def build(self, preset: Preset) -> UViT:
        if preset.name not in CONFIGS:
            raise BenchmarkError(f"uvit has no config for preset {preset.name!r}; available: {', '.join(CONFIGS)}")
        config = replace(CONFIGS[preset.name], img_size=preset.image_size, in_chans=preset.channels)
        return UViT(config)

    def load_checkpoint(self, model: nn.Module, path: str) -> None:
        """Load a raw state dict or an official training checkpoint ``{'nnet': state_dict, ...}``."""
        checkpoint = read_state_dict(path)
        state_dict = checkpoint["nnet"] if isinstance(checkpoint.get("nnet"), dict) else checkpoint
        load_state_dict_strict(model, state_dict, path)

    def blocks(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [
            *((f"in_blocks.{i}", blk) for i, blk in enumerate(model.in_blocks)),
            ("mid_block", model.mid_block),
            *((f"out_blocks.{i}", blk) for i, blk in enumerate(model.out_blocks)),
        ]

    def kept_dense(self, model: nn.Module) -> list[str]:
        return ["patch_embed.proj", "decoder_pred", "final_layer"]

    def prunable_layers(self, model: nn.Module) -> dict[str, nn.Module]:
        """The transformer blocks' ``attn.qkv``, ``attn.proj``, ``mlp.fc1`` and ``mlp.fc2``, as SparseDM's official
        U-ViT code masks them (52 layers on U-ViT-S/2); ``skip_linear``, the embeddings and the decoder stay dense."""
        return {
            f"{name}.{layer}": block.get_submodule(layer)
            for name, block in self.blocks(model)
            for layer in SPARSE_LAYERS
        }

    def channel_pruning(self, model: nn.Module) -> ChannelPruning:
        """Heads keep their number and lose dims equally; the stem (tied to ``pos_embed`` and the time
        token) and the output head keep their width, and so does the residual stream they share."""
        heads = {f"{name}.attn.qkv": block.attn.num_heads for name, block in self.blocks(model)}
        return ChannelPruning(kept=self.kept_dense(model), heads=heads, unwrapped={"pos_embed": 2})


@hookimpl
def register_backbones(register):
    register(UViTBackbone())
