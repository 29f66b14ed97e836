"""Prompt adherence: the share of samples a classifier assigns to the class their prompt names.

On the digits (``mnist16``) the classifier is a small CNN the suite trains (``python -m benchmark
train-classifier``) and ships in ``benchmark/metrics/weights``; it is the offline stand-in for the CLIP score
that text-to-image papers report on COCO (which needs a CLIP model a user provides; not loaded yet).
"""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.errors import BenchmarkError
from benchmark.significance import Z95

WEIGHTS_DIR = Path(__file__).parent / "weights"
CLASSIFIERS = {"mnist16": "mnist16-classifier.pt"}
HELD_OUT = 1000  # the last images of a seed-0 permutation: never trained on, the accuracy the sidecar states


class DigitClassifier(nn.Module):
    """Two conv blocks and a linear head on 16x16 images in [-1, 1]: 10 logits."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(0.3),
        )
        self.head = nn.Linear(64 * 4 * 4, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def held_out_split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, held_out)`` of a data set of ``n`` images: a seed-0 permutation's last :data:`HELD_OUT`."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    return order[:-HELD_OUT], order[-HELD_OUT:]


def train_classifier(images: torch.Tensor, labels: torch.Tensor, steps: int, seed: int = 0) -> tuple[nn.Module, float]:
    """A :class:`DigitClassifier` trained on all but the held-out images (uint8) with small random shifts, and
    its held-out accuracy."""
    from benchmark.data import batch_stream, to_model_range

    train_idx, held_idx = held_out_split(len(images))
    torch.manual_seed(seed)
    model = DigitClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    x_stream = batch_stream(images[train_idx], 128, seed)
    y_stream = batch_stream(labels[train_idx], 128, seed)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        x, y = _shifted(next(x_stream), generator), next(y_stream)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        predicted = model(to_model_range(images[held_idx])).argmax(1)
    return model, (predicted == labels[held_idx]).float().mean().item()


def _shifted(images: torch.Tensor, generator: torch.Generator, pixels: int = 1) -> torch.Tensor:
    """Each image moved by up to ``pixels`` in x and y (background fill): the classifier's only augmentation."""
    padded = F.pad(images, (pixels,) * 4, value=-1.0)
    size = images.shape[-1]
    offsets = torch.randint(0, 2 * pixels + 1, (len(images), 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy:dy + size, dx:dx + size] for i, (dy, dx) in enumerate(offsets)])


@functools.lru_cache(maxsize=2)
def classifier(dataset: str) -> nn.Module:
    """The shipped classifier of ``dataset``, in eval mode."""
    if dataset not in CLASSIFIERS:
        raise BenchmarkError(
            f"no prompt-adherence classifier for data set {dataset!r}; available: {', '.join(CLASSIFIERS)} "
            "(at paper scale the column is a CLIP score, not loaded yet)"
        )
    path = WEIGHTS_DIR / CLASSIFIERS[dataset]
    if not path.is_file():
        raise BenchmarkError(f"the {dataset} classifier {path} is missing; train it with "
                             f"`python -m benchmark train-classifier --out {path}`")
    model = DigitClassifier()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def wilson_interval(hits: int, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of a share ``hits / n``."""
    if n == 0:
        return 0.0, 1.0
    share = hits / n
    centre = (share + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(share * (1 - share) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@torch.no_grad()
def prompt_adherence(dataset: str, samples: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """``prompt_adherence`` (the share of ``samples``, images in [-1, 1], classified as their ``labels``) with
    its 95% Wilson interval as ``_low`` and ``_high``."""
    net = classifier(dataset)
    predicted = torch.cat([net(chunk).argmax(1) for chunk in samples.split(500)])
    hits, n = int((predicted == labels).sum()), len(labels)
    low, high = wilson_interval(hits, n)
    return {"prompt_adherence": hits / n, "prompt_adherence_low": low, "prompt_adherence_high": high}


def write_classifier(model: nn.Module, accuracy: float, steps: int, path: Path) -> None:
    """The weights and a sidecar stating the held-out accuracy and how they were trained."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    sidecar = {"held_out_accuracy": round(accuracy, 4), "held_out_images": HELD_OUT, "steps": steps,
               "torch": torch.__version__}
    path.with_name(path.name + ".json").write_text(json.dumps(sidecar, indent=2) + "\n")
