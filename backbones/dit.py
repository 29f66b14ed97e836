"""DiT (Peebles & Xie, ICCV 2023) as diffusers' ``DiTTransformer2DModel``; imagenet256 is DiT-XL/2.

DiT is class-conditional. The benchmark samples unconditionally, so every evaluation gets the null
label (index ``num_embeds_ada_norm``, the row label dropout trained; 1000 for the ImageNet models)
and no classifier-free guidance. With learned sigma (``out_channels`` twice the input channels) the
variance half of the output is dropped, so the harness sees epsilon.
"""
from __future__ import annotations

import functools
import os
from typing import Callable

import torch
from torch import nn

from backbones.ddpm_unet import diffusers_weights
from backbones.uvit import load_state_dict_strict, read_state_dict
from benchmark import hookimpl
from benchmark.api import Backbone, BenchmarkError, ChannelPruning
from benchmark.presets import Preset

CONFIGS: dict[str, dict] = {
    # DiT-XL/2 of facebook/DiT-XL-2-256 (latent 4x32x32, learned sigma): 675M params, ~118.6 GMACs.
    "imagenet256": dict(num_attention_heads=16, attention_head_dim=72, num_layers=28, patch_size=2,
                        num_embeds_ada_norm=1000, learned_sigma=True),
    # 6 blocks, 4 heads x 16 on 16x16 digits (64 tokens); one class, so the label table holds the null row only
    # beside it. Every prunable input dim is a multiple of 8.
    "tiny": dict(num_attention_heads=4, attention_head_dim=16, num_layers=6, patch_size=2,
                 num_embeds_ada_norm=1, learned_sigma=False),
}
VARIANTS: dict[str, dict[str, dict]] = {
    # The DiT paper's S/2, B/2 and XL/2 (Table 4: 33M, 130M, 675M params), for the 2:4 width trend of
    # `benchmark latency --variant`.
    "imagenet256": {
        "dit-s2": {**CONFIGS["imagenet256"], "num_attention_heads": 6, "attention_head_dim": 64, "num_layers": 12},
        "dit-b2": {**CONFIGS["imagenet256"], "num_attention_heads": 12, "attention_head_dim": 64, "num_layers": 12},
        "dit-xl2": CONFIGS["imagenet256"],
    },
}


class DiT(nn.Module):
    """``model(x, t) -> eps`` around a diffusers ``DiTTransformer2DModel`` kept as attribute ``transformer``."""

    def __init__(self, **transformer_config):
        super().__init__()
        from diffusers import DiTTransformer2DModel  # imported here: diffusers takes seconds to import

        self.transformer = DiTTransformer2DModel(**transformer_config)

    @property
    def null_label(self) -> int:
        return self.transformer.config.num_embeds_ada_norm

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        labels = torch.full((x.shape[0],), self.null_label, dtype=torch.long, device=x.device)
        out = self.transformer(x, timestep=t, class_labels=labels).sample
        return out[:, : x.shape[1]]  # learned sigma: the second half is the variance


def transformer_config(preset: Preset, config: dict) -> dict:
    """``DiTTransformer2DModel`` keyword arguments for ``preset`` from one of :data:`CONFIGS`."""
    config = dict(config)
    learned_sigma = config.pop("learned_sigma")
    return dict(
        in_channels=preset.channels,
        out_channels=preset.channels * (2 if learned_sigma else 1),
        sample_size=preset.image_size,
        **config,
    )


def _build(preset: Preset, config: dict) -> DiT:
    return DiT(**transformer_config(preset, config))


class DiTBackbone(Backbone):
    name = "dit"
    version = "1"
    description = "diffusers DiTTransformer2DModel, null label (imagenet256: DiT-XL/2, 675M params; tiny: 0.58M)"
    time_enters_every_block = True  # adaLN-Zero: every block embeds the time step itself
    u_shaped = False  # a flat stack of blocks, no long skips

    def build(self, preset: Preset) -> DiT:
        if preset.name not in CONFIGS:
            raise BenchmarkError(f"dit has no config for preset {preset.name!r}; available: {', '.join(CONFIGS)}")
        return _build(preset, CONFIGS[preset.name])

    def variants(self, preset: Preset) -> dict[str, Callable[[], DiT]]:
        """DiT-S/2, B/2 and XL/2 at imagenet256."""
        return {name: functools.partial(_build, preset, config) for name, config in VARIANTS.get(preset.name, {}).items()}

    def load_checkpoint(self, model: nn.Module, path: str) -> None:
        """Load a diffusers directory (a model, or a pipeline with ``transformer/``) or a state-dict file.

        A state dict may hold the transformer's own keys or this wrapper's ``transformer.``-prefixed ones.
        """
        if os.path.isdir(path):
            path = diffusers_weights(model.transformer, path, "transformer", lambda key: key.startswith("_"))
        state_dict = {key.removeprefix("transformer."): value for key, value in read_state_dict(path).items()}
        load_state_dict_strict(model.transformer, state_dict, path)

    def blocks(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """The transformer blocks: a flat list, every block at the same depth (no long skips)."""
        return [(f"transformer.transformer_blocks.{i}", blk) for i, blk in enumerate(model.transformer.transformer_blocks)]

    def kept_dense(self, model: nn.Module) -> list[str]:
        return ["transformer.pos_embed.proj", "transformer.proj_out_2"]

    def channel_pruning(self, model: nn.Module) -> ChannelPruning:
        """Heads keep their number and lose dims equally (query, key and value alike); the patch stem and the
        output head keep their width, and with them the residual stream and the adaLN modulations of it."""
        heads = {
            f"{name}.attn1.{projection}": block.attn1.heads
            for name, block in self.blocks(model)
            for projection in ("to_q", "to_k", "to_v")
        }
        return ChannelPruning(kept=self.kept_dense(model), heads=heads)


@hookimpl
def register_backbones(register):
    register(DiTBackbone())
