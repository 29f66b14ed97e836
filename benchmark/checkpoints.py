"""Dense starting checkpoints: a given file, a shipped one, a cached one, or one trained on the spot."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import BinaryIO, Callable

import torch
from torch import nn

import backbones
from benchmark.api import Backbone, BenchmarkError, MethodContext, RunOptions
from benchmark.data import batch_stream, cache_dir, load_dataset
from benchmark.diffusion import Diffusion
from benchmark.presets import Preset
from benchmark.training import train

SHIPPED_WEIGHTS_DIR = Path(backbones.__file__).parent / "weights"
DENSE_SEED = 0  # seed of dense checkpoints that load_dense has to train itself


def checkpoint_filename(backbone: Backbone, preset: Preset) -> str:
    return f"{backbone.name}-{preset.name}.pt"


def find_dense_checkpoint(backbone: Backbone, preset: Preset, options: RunOptions) -> Path | None:
    """The checkpoint :func:`load_dense` would load, or None if it would have to train one.

    Order: ``options.checkpoints[backbone.name]``, the shipped ``backbones/weights`` file, the cache.
    """
    given = options.checkpoints.get(backbone.name)
    if given is not None:
        path = Path(given).expanduser()
        if not path.exists():  # a file, or a directory (diffusers layout) the backbone understands
            raise BenchmarkError(f"dense checkpoint for {backbone.name!r} not found: {path}")
        return path
    for path in (
        SHIPPED_WEIGHTS_DIR / checkpoint_filename(backbone, preset),
        cache_dir() / "dense" / checkpoint_filename(backbone, preset),
    ):
        if path.is_file():
            return path
    return None


def load_dense(
    backbone: Backbone, preset: Preset, options: RunOptions, device: torch.device | str, progress: bool = True
) -> nn.Module:
    """The dense model for ``preset`` in eval mode on ``device``, training and caching it if none exists."""
    path = find_dense_checkpoint(backbone, preset, options)
    if path is None:
        path = train_dense(
            backbone,
            preset,
            preset.dense_train_steps,
            DENSE_SEED,
            cache_dir() / "dense" / checkpoint_filename(backbone, preset),
            progress,
            device=device,
        )
    model = backbone.build(preset)
    backbone.load_checkpoint(model, str(path))
    return model.to(device).eval()


def train_dense(
    backbone: Backbone,
    preset: Preset,
    steps: int,
    seed: int,
    out_path: str | os.PathLike,
    progress: bool = True,
    *,
    device: torch.device | str | None = None,
) -> Path:
    """Train a fresh dense model and save its state dict to ``out_path`` (plus a ``.json`` sidecar).

    The sidecar holds the backbone, preset, steps, seed, final loss, torch version and the sha256 of
    the ``.pt``. ``device`` defaults to CUDA when available.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = backbone.build(preset).to(device)
    images = load_dataset(preset.dataset)
    ctx = MethodContext(
        backbone=backbone,
        preset=dataclasses.replace(preset, lr=preset.dense_lr),
        options=RunOptions(),
        diffusion=Diffusion.for_preset(preset),
        teacher=model,
        batches=lambda: batch_stream(images, preset.batch_size, seed),
        train_steps=steps,
        seed=seed,
        device=device,
        progress=progress,
    )
    losses = train(model, ctx, steps, desc=f"dense {backbone.name}")
    out_path = Path(out_path)
    state_dict = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    _write_atomically(out_path, lambda f: torch.save(state_dict, f))
    meta = {
        "backbone": backbone.name,
        "backbone_version": backbone.version,
        "preset": preset.name,
        "steps": steps,
        "seed": seed,
        "final_loss": losses[-1],
        "torch": torch.__version__,
        "sha256": sha256_file(out_path),
    }
    sidecar = out_path.with_name(out_path.name + ".json")
    _write_atomically(sidecar, lambda f: f.write(json.dumps(meta, indent=2).encode()))
    return out_path


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
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
