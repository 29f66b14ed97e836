"""Dense starting checkpoints: a given file, a shipped one, a cached one, or one trained on the spot."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from pathlib import Path

import torch
from torch import nn

import backbones
from benchmark.api import Backbone, BenchmarkError, MethodContext, RunOptions
from benchmark.data import batch_stream, cache_dir, load_dataset, write_atomically
from benchmark.diffusion import Diffusion
from benchmark.generation import training_set
from benchmark.presets import Preset
from benchmark.training import Optimisation, TrainingStream, train

SHIPPED_WEIGHTS_DIR = Path(backbones.__file__).parent / "weights"
DENSE_SEED = 0  # seed of dense checkpoints that load_dense has to train itself
CHECKPOINT_EVERY = 500  # steps between the resumable states train_dense saves
LOSS_CURVE_EVERY = 100  # steps averaged into one point of the loss curve in the sidecar


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


def dense_checkpoint(
    backbone: Backbone, preset: Preset, options: RunOptions, device: torch.device | str, progress: bool = True
) -> Path:
    """The dense checkpoint a run starts from: found by :func:`find_dense_checkpoint`, else trained and cached."""
    path = find_dense_checkpoint(backbone, preset, options)
    if path is not None:
        return path
    return train_dense(
        backbone,
        preset,
        preset.dense_train_steps,
        DENSE_SEED,
        cache_dir() / "dense" / checkpoint_filename(backbone, preset),
        progress,
        device=device,
        resume=True,
    )


def load_dense(backbone: Backbone, preset: Preset, path: Path, device: torch.device | str) -> nn.Module:
    """The dense model in ``path`` for ``preset``, in eval mode on ``device``."""
    model = backbone.build(preset)
    backbone.load_checkpoint(model, str(path))
    return model.to(device).eval()


HUB_ID = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[\w./-]+))?(?::(?P<subfolder>[\w./-]+))?$")


def resolve_checkpoint(spec: str) -> Path:
    """A local file or directory, or a Hugging Face Hub id ``ORG/NAME[@REVISION][:SUBFOLDER]`` (e.g.
    ``facebook/DiT-XL-2-256:transformer``) resolved through ``huggingface_hub``'s cache (downloaded unless
    the Hub is offline); :class:`BenchmarkError` with one line naming the id and how to get it otherwise."""
    local = Path(spec).expanduser()
    if local.exists():
        return local
    match = HUB_ID.match(spec)
    if match is None:
        raise BenchmarkError(f"no such file or directory {spec} (nor a Hub id ORG/NAME[@REVISION][:SUBFOLDER])")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo, revision, subfolder = match["repo"], match["revision"], match["subfolder"]
    patterns = [f"{subfolder}/*"] if subfolder else None
    try:
        folder = Path(snapshot_download(repo, revision=revision, allow_patterns=patterns))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as error:
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:200]
        raise BenchmarkError(
            f"Hub id {spec} is not in the Hugging Face cache and cannot be downloaded ({reason}); with internet run "
            f"`huggingface-cli download {repo}{f' --revision {revision}' if revision else ''}`, or give a local path"
        ) from None
    path = folder / subfolder if subfolder else folder
    if not path.exists():
        raise BenchmarkError(f"Hub id {spec}: the snapshot of {repo} has no folder {subfolder!r}")
    return path


def checkpoint_id(path: Path) -> str:
    """What a checkpoint is, by content: ``sha256:`` of the file, or of a directory's files in name order.

    A cell computed from another file of the same name is never taken for current.
    """
    if path.is_file():
        return "sha256:" + sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0" + sha256_file(file).encode())
    return "sha256-dir:" + digest.hexdigest()


def train_dense(
    backbone: Backbone,
    preset: Preset,
    steps: int,
    seed: int,
    out_path: str | os.PathLike,
    progress: bool = True,
    *,
    device: torch.device | str | None = None,
    resume: bool = False,
    checkpoint_every: int = CHECKPOINT_EVERY,
) -> Path:
    """Train a fresh dense model with ``preset.dense`` and save its EMA weights to ``out_path``.

    Every ``checkpoint_every`` steps the whole training state goes to ``OUT.resume`` (atomically);
    ``resume=True`` continues from it, bit for bit as if never stopped. A ``.json`` sidecar records
    the recipe, steps, seed, loss curve, wall time, device, torch version and the sha256 of the ``.pt``.
    ``device`` defaults to CUDA when available.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out_path = Path(out_path)
    resume_path = out_path.with_name(out_path.name + ".resume")
    identity = {
        "backbone": backbone.name,
        "backbone_version": backbone.version,
        "preset": preset.name,
        "recipe": dataclasses.asdict(preset.dense),
        "batch_size": preset.batch_size,
        "steps": steps,
        "seed": seed,
    }
    backbone.prepare(preset, device, progress)  # frozen parts first (a tiny VAE), so build() can use them
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = backbone.build(preset).to(device)
    optimisation = Optimisation(model, preset.dense, steps)
    saved = _read_resume_state(resume_path, identity) if resume_path.exists() else None
    if saved is not None and not resume:
        raise BenchmarkError(f"an unfinished training run is saved at {resume_path}; pass --resume or delete it")
    data = training_set(backbone, preset, load_dataset(preset.dataset))
    start = saved["step"] if saved else 0

    def labels(first: int = 0):
        return None if data.labels is None else batch_stream(data.labels, preset.batch_size, seed, first)

    if saved:
        model.load_state_dict(saved["model"])
        optimisation.load_state_dict(saved["optimisation"])
        stream = TrainingStream.resume(batch_stream(data.x0, preset.batch_size, seed, start), saved["generator"], start,
                                       labels(start))
    else:
        stream = TrainingStream(batch_stream(data.x0, preset.batch_size, seed), torch.Generator().manual_seed(seed),
                                labels=labels())
    ctx = MethodContext(
        backbone=backbone,
        preset=preset,
        options=RunOptions(),
        diffusion=Diffusion.for_backbone(backbone, preset),
        teacher=model,
        batches=lambda start=0: batch_stream(data.x0, preset.batch_size, seed, start),
        train_steps=steps,
        seed=seed,
        device=device,
        progress=progress,
        labels=None if data.labels is None else labels,
    )
    loss_curve: list[list[float]] = saved["loss_curve"] if saved else []  # [step, mean loss of the interval]
    wall = saved["wall_s"] if saved else 0.0
    window: list[float] = saved["window"] if saved else []  # losses since the last curve point
    clock = time.perf_counter()

    def after_step(step: int, loss: float) -> None:
        nonlocal wall, clock
        done = step + 1
        window.append(loss)
        if done % LOSS_CURVE_EVERY == 0 or done == steps:
            loss_curve.append([done, sum(window) / len(window)])
            window.clear()
        if done % checkpoint_every == 0 and done < steps:
            now = time.perf_counter()
            wall, clock = wall + now - clock, now
            state = {
                "identity": identity,
                "step": done,
                "model": model.state_dict(),
                "optimisation": optimisation.state_dict(),
                "generator": stream.generator.get_state(),
                "loss_curve": loss_curve,
                "window": window,
                "wall_s": wall,
            }
            write_atomically(resume_path, lambda f: torch.save(state, f))

    if start < steps:
        train(model, ctx, steps - start, desc=f"dense {backbone.name}", stream=stream, optimisation=optimisation,
              after_step=after_step)
    wall += time.perf_counter() - clock
    # train() leaves the EMA weights in the model once the budget is spent
    state_dict = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    write_atomically(out_path, lambda f: torch.save(state_dict, f))
    meta = {
        **identity,
        "weights": "ema" if preset.dense.ema_decay is not None else "last iterate",
        "final_loss": loss_curve[-1][1] if loss_curve else None,
        "loss_curve": loss_curve,
        "wall_s": round(wall, 1),
        "device": str(device),
        "torch": torch.__version__,
        "sha256": sha256_file(out_path),
    }
    sidecar = out_path.with_name(out_path.name + ".json")
    write_atomically(sidecar, lambda f: f.write(json.dumps(meta, indent=2).encode()))
    resume_path.unlink(missing_ok=True)
    return out_path


def _read_resume_state(path: Path, identity: dict) -> dict:
    """The saved training state at ``path``, refused when it belongs to another run."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise BenchmarkError(f"cannot read the resume state {path}: {type(error).__name__}: {error}") from None
    if state.get("identity") != identity:
        differ = sorted(k for k in identity if state.get("identity", {}).get(k) != identity[k])
        raise BenchmarkError(
            f"the resume state {path} is of another training run (differs in {', '.join(differ)}); delete it"
        )
    return state


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
