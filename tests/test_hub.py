"""Checkpoints by Hugging Face Hub id, resolved through a pre-filled temporary Hub cache with the Hub offline."""
from __future__ import annotations

import time

import pytest
import torch
from huggingface_hub import constants

from benchmark.cli import main, parse_checkpoints
from benchmark.plugins import build_registries
from benchmark.presets import get_preset

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An offline Hub whose cache holds org/tiny-ddpm (a diffusers model at its root) and org/pipe (in unet/)."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    ddpm = build_registries().backbones.get("ddpm")
    torch.manual_seed(0)
    model = ddpm.build(get_preset("tiny"))
    for repo, folder in (("tiny-ddpm", ""), ("pipe", "unet")):
        root = tmp_path / "hub" / f"models--org--{repo}"
        (root / "refs").mkdir(parents=True)
        (root / "refs" / "main").write_text(COMMIT)
        model.unet.save_pretrained(root / "snapshots" / COMMIT / folder)
    return ddpm, model


def test_a_hub_id_resolves_through_the_cache_and_loads(hub):
    ddpm, model = hub
    resolved = parse_checkpoints(["ddpm=org/tiny-ddpm", "uvit=org/pipe:unet"], ["ddpm", "uvit"])
    assert resolved["ddpm"].endswith(f"snapshots/{COMMIT}") and resolved["uvit"].endswith(f"{COMMIT}/unet")
    loaded = ddpm.build(get_preset("tiny"))
    ddpm.load_checkpoint(loaded, resolved["ddpm"])
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_an_uncached_hub_id_stops_the_run_before_any_cell(hub, capsys, tmp_path):
    start = time.perf_counter()
    code = main(["run", "--checkpoint", "ddpm=google/ddpm-cifar10-32", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--checkpoint ddpm: Hub id google/ddpm-cifar10-32 is not in the Hugging Face cache" in err
    assert "huggingface-cli download google/ddpm-cifar10-32" in err
    assert time.perf_counter() - start < 30 and not (tmp_path / "run").exists()
    code = main(["run", "--checkpoint", "ddpm=org/tiny-ddpm:nosuch", "--out", str(tmp_path / "run")])
    assert code == 2 and "the snapshot of org/tiny-ddpm has no folder 'nosuch'" in capsys.readouterr().err
