"""``python -m benchmark prune``: one method or chain on one dense model, no fine-tuning, shown and saved."""
import json

import pytest
import torch

from benchmark.cli import main
from benchmark.plugins import build_registries
from benchmark.presets import get_preset
from benchmark.structural import load_pruned


def prune_json(capsys, *args: str) -> dict:
    assert main(["prune", *args, "--json", "--quiet"]) == 0
    return json.loads(capsys.readouterr().out)


def test_nm_method_reports_every_masked_layer_and_saves_the_masks(capsys, tmp_path):
    out = tmp_path / "asp.pt"
    result = prune_json(capsys, "--method", "asp", "--backbone", "uvit", "--out", str(out))
    assert result["weights"].startswith("checkpoint ") and result["method"] == "asp"
    assert len(result["nm_layers"]) == 7 * 4  # qkv, proj, fc1, fc2 of each of the 7 blocks
    assert {layer["pattern"] for layer in result["nm_layers"].values()} == {"2:4"}
    assert all(layer["masked_share"] == 0.5 for layer in result["nm_layers"].values())
    assert result["params"]["after"] == result["params"]["before"]  # masks keep the shapes
    assert result["effective_macs"]["after"] < result["effective_macs"]["before"]
    saved = torch.load(out, weights_only=True)
    assert saved["pattern"] == "2:4" and set(saved["masks"]) == set(result["nm_layers"])


def test_structural_method_reports_kept_fractions_and_reloads(capsys, tmp_path):
    out = tmp_path / "l1.pt"
    result = prune_json(capsys, "--method", "l1-channel@layer=0.3", "--backbone", "dit", "--out", str(out))
    assert result["params"]["after"] < result["params"]["before"]
    assert result["macs"]["after"] / result["macs"]["before"] == pytest.approx(0.7, abs=0.05)
    assert result["kept_fraction"]["transformer.proj_out_2"] == 1.0
    backbone = build_registries().backbones.get("dit")
    model = load_pruned(backbone, get_preset("tiny"), out)
    assert sum(p.numel() for p in model.parameters()) == result["params"]["after"]


def test_skip_schedule_prints_one_row_per_step(capsys, tmp_path):
    assert main(["prune", "--method", "uniform-skip@0.7", "--backbone", "ddpm", "--quiet",
                 "--out", str(tmp_path / "skip.pt")]) == 0
    text = capsys.readouterr().out
    assert "schedule (1 = the block runs" in text and "step  49" in text
    rows = [line.split()[-1] for line in text.splitlines() if line.startswith("step ")]
    assert len(rows) == get_preset("tiny").sample_steps and rows[0] == "1" * 7 and "." in rows[1]


@pytest.mark.parametrize("args, message", [
    (["--method", "asp,ste", "--backbone", "ddpm"], "prune takes one method or chain"),
    (["--method", "all", "--backbone", "ddpm"], "prune takes one method or chain"),
    (["--method", "diff-pruning@layer=1.2", "--backbone", "ddpm"], r"channel ratio in \[0, 1\)"),
    (["--method", "asp", "--backbone", "ddpn"], "unknown backbone 'ddpn'"),
])
def test_bad_input_is_one_line_before_any_work(capsys, args, message):
    import re

    assert main(["prune", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err)
