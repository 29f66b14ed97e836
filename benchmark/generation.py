"""What a backbone trains on at a preset: the data set's images in the space it denoises, with their labels
where it is told prompts."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from benchmark.data import load_labels, to_model_range

if TYPE_CHECKING:
    from benchmark.api import Backbone
    from benchmark.presets import Preset

ENCODE_BATCH = 500


@dataclass
class TrainingSet:
    """``x0``: uint8 pixels, or float latents (the VAE posterior's mean, scaled); ``labels``: the prompt of each
    image for a conditional backbone, else None."""

    x0: torch.Tensor
    labels: torch.Tensor | None = None


@torch.no_grad()
def training_set(backbone: Backbone, preset: Preset, images: torch.Tensor) -> TrainingSet:
    """``images`` (the preset's data set) as ``backbone`` trains on them."""
    latents = backbone.latent_space(preset)
    x0 = images
    if latents is not None:
        x0 = torch.cat([latents.encode(to_model_range(chunk)) for chunk in images.split(ENCODE_BATCH)])
    labels = load_labels(preset.dataset) if backbone.conditional else None
    return TrainingSet(x0, labels)
