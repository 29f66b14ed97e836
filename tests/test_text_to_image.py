"""Text-to-image latent diffusion: the SD-1.5 layout, the condition beside ``model(x, t)``, classifier-free
guidance, the tiny preset's frozen parts and the prompt-adherence metric."""
from __future__ import annotations

import json

import pytest
import torch
import torch_pruning as tp
from torch import nn

from backbones.sd import CONFIGS, SDBackbone, tokenize
from benchmark import conditioning
from benchmark.api import CheckpointMismatchError, Prompts, RunOptions
from benchmark.cli import main
from benchmark.data import load_dataset, load_labels, to_model_range
from benchmark.diffusion import Diffusion, Guidance
from benchmark.metrics import adherence
from benchmark.metrics.macs import count_macs
from benchmark.pruning import method_context
from benchmark.presets import get_preset
from benchmark.training import train

SD, TINY, SD15 = SDBackbone(), get_preset("tiny"), get_preset("sd15")


# -- the SD-1.5 layout ---------------------------------------------------------------------------


def test_sd15_unet_has_the_official_size_and_dipgo_logs_macs():
    """859.52M parameters; per UNet evaluation at batch 1, torch-pruning's count is the DiP-GO logs' 338.83
    GMACs (no attention matmuls) and the suite's count with them about 401.9 G. Counted on the meta device."""
    with torch.device("meta"):
        model = SD.build(SD15)
        inputs = SD.example_inputs(SD15, 1)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(859.5e6, rel=0.005)
    assert inputs[0].shape == (1, 4, 64, 64) and model.empty_context.shape == (1, 77, 768)
    macs, _ = tp.utils.count_ops_and_params(model, inputs)
    assert macs == pytest.approx(338.83e9, rel=0.005)
    assert count_macs(model, inputs).total == pytest.approx(401.86e9, rel=0.005)
    assert [name for name, _ in SD.blocks(model)] == [
        *(f"unet.down_blocks.{i}" for i in range(4)), "unet.mid_block", *(f"unet.up_blocks.{i}" for i in range(4))
    ]  # DiP-GO's nine blocks


@pytest.mark.parametrize("layout", ["pipeline_dir", "state_dict"])
def test_the_unet_loads_strictly_by_key_from_a_diffusers_directory(layout, tmp_path):
    """The same code reads an SD-1.5 directory's unet/ (shown here on the tiny layout, which fits a test)."""
    source = SD.build(TINY)
    if layout == "pipeline_dir":
        source.unet.save_pretrained(tmp_path / "unet")
        path = tmp_path
    else:
        path = tmp_path / "unet.pt"
        torch.save(source.state_dict(), path)
    model = SD.build(TINY)
    SD.load_checkpoint(model, str(path))
    x, t = SD.example_inputs(TINY, 2)
    with torch.no_grad():
        assert torch.equal(model(x, t), source(x, t))
    state = {k: v for k, v in source.unet.state_dict().items() if "attn2" not in k}
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(\d+\): .*attn2"):
        SD.load_checkpoint(SD.build(TINY), str(tmp_path / "partial.pt"))


def test_sd15_runs_are_refused_in_one_line_before_any_cell(tmp_path, capsys):
    code = main(["run", "--preset", "sd15", "--backbones", "sd", "--methods", "dense", "--out", str(tmp_path / "r"),
                 "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "coco2017-captions" in err and "CLIP" in err
    assert not (tmp_path / "r" / "cells").exists() or not any((tmp_path / "r" / "cells").iterdir())


# -- the condition and guidance ----------------------------------------------------------------------


def test_given_makes_a_context_current_inside_its_block_only():
    outer, inner = torch.zeros(1), torch.ones(1)
    assert conditioning.current() is None
    with conditioning.given(outer):
        with conditioning.given(inner):
            assert conditioning.current() is inner
        assert conditioning.current() is outer
    assert conditioning.current() is None


def test_dropped_labels_and_sample_prompts():
    labels = torch.arange(10).repeat(100)
    dropped = conditioning.drop_labels(labels, 0.1, torch.Generator().manual_seed(0))
    share = (dropped == conditioning.EMPTY_PROMPT).float().mean().item()
    assert 0.07 < share < 0.13 and torch.equal(dropped[dropped >= 0], labels[dropped >= 0])
    assert torch.equal(conditioning.drop_labels(labels, 0.0, torch.Generator()), labels)
    assert conditioning.sample_labels(8, 4, 10).tolist() == [8, 9, 0, 1]


class _Prompts(Prompts):
    classes = 3

    def text(self, label: int) -> str:
        return str(label)

    def encode(self, labels: torch.Tensor) -> torch.Tensor:
        return (labels.float() + 2).view(-1, 1, 1)  # the empty prompt (-1) encodes to 1


class _Conditional(nn.Module):
    """eps = x * the current context (1: the empty prompt), to check what guidance combines."""

    def __init__(self):
        super().__init__()
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        context = conditioning.current()
        self.calls.append(len(x))
        return x * (1.0 if context is None else context.view(-1, 1, 1, 1))


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_guidance_runs_both_branches_as_one_batch_and_extrapolates(scale):
    model = _Conditional()
    guided = Diffusion((1, 2, 2), 1, guidance=Guidance(_Prompts(), scale))
    x_T = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 0])
    out = guided.denoise(model, x_T, labels=labels)
    assert model.calls == [4 * guided.guidance.branches]
    factor = 1 + scale * (labels.float() + 2 - 1)  # empty + scale * (prompt - empty), with eps = x * context
    expected = guided._ddim_update(x_T, x_T * factor.view(-1, 1, 1, 1), 0)
    torch.testing.assert_close(out, expected)


# -- the tiny text-to-image backbone --------------------------------------------------------------


def test_tiny_prompts_are_tokens_of_a_word_vocabulary():
    prompts = SD.prompts(TINY)
    assert prompts.text(7) == "a handwritten 7" and prompts.text(conditioning.EMPTY_PROMPT) == ""
    assert len(tokenize(7)) == len(tokenize(-1)) == 8
    contexts = prompts.encode(torch.tensor([-1, 0, 7, 7]))
    assert contexts.shape == (4, 8, CONFIGS["tiny"]["cross_attention_dim"])
    assert torch.equal(contexts[2], contexts[3]) and not torch.equal(contexts[1], contexts[2])
    assert torch.equal(SD.build(TINY).empty_context[0], contexts[0])


def test_tiny_vae_reconstructs_the_digits():
    latents = SD.latent_space(TINY)
    images = to_model_range(load_dataset("mnist16")[:256])
    with torch.no_grad():
        z = latents.encode(images)
        error = (latents.decode(z) - images).abs().mean().item()
    assert z.shape == (256, 4, 8, 8)
    assert 0.6 < z.std().item() < 1.6  # scaled to about unit variance
    assert error < 0.08, error


def test_training_makes_the_batch_prompts_current_for_every_forward_pass():
    """The student's and the teacher's passes (an extra loss) see the step's prompts, a dropout share empty."""
    dense = SD.build(TINY)
    ctx = method_context(SD, TINY, RunOptions(), dense, load_dataset("mnist16"), 0, torch.device("cpu"), 2, False)
    seen = []

    def extra_loss(model, x_t, t, noise, pred):
        seen.append(conditioning.current())
        return pred.sum() * 0.0

    train(SD.build(TINY), ctx, 2, extra_loss=extra_loss)
    labels = next(ctx.labels())
    generator = torch.Generator().manual_seed(0)
    ctx.diffusion.training_inputs(next(ctx.batches()), generator)  # the step's draws come first, as in train()
    dropped = conditioning.drop_labels(labels, TINY.condition_dropout, generator)
    assert len(seen) == 2 and seen[0].shape[0] == TINY.batch_size
    torch.testing.assert_close(seen[0], SD.prompts(TINY).encode(dropped))


# -- prompt adherence --------------------------------------------------------------------------------


def test_wilson_interval():
    low, high = adherence.wilson_interval(90, 100)
    assert low == pytest.approx(0.8256, abs=1e-3) and high == pytest.approx(0.9448, abs=1e-3)
    assert adherence.wilson_interval(0, 10)[0] == 0.0 and adherence.wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_the_shipped_classifier_reaches_98_percent_on_held_out_digits():
    sidecar = json.loads((adherence.WEIGHTS_DIR / "mnist16-classifier.pt.json").read_text())
    _, held_out = adherence.held_out_split(5000)
    images, labels = to_model_range(load_dataset("mnist16")[held_out]), load_labels("mnist16")[held_out]
    result = adherence.prompt_adherence("mnist16", images, labels)  # real digits "adhere" to their labels
    assert result["prompt_adherence"] >= 0.98
    assert result["prompt_adherence"] == pytest.approx(sidecar["held_out_accuracy"], abs=1e-4)
    assert result["prompt_adherence_low"] < result["prompt_adherence"] < result["prompt_adherence_high"]


# -- every method on it, end to end -----------------------------------------------------------------


@pytest.mark.slow
def test_every_method_runs_on_the_text_to_image_backbone(tmp_path, monkeypatch):
    """``run --methods all --backbones sd`` and the chains: ok cells with FID, prompt adherence and both guidance
    branches in MACs (random UNet weights and tiny budgets: the path, not the numbers)."""
    import dataclasses

    from benchmark import data
    from benchmark.grid.store import CellStore
    from benchmark.presets import PRESETS

    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setitem(PRESETS, "tiny", dataclasses.replace(TINY, batch_size=8, sample_batch=10, latency_batch=2,
                                                            dipgo_pruner_steps=2))
    checkpoint = tmp_path / "sd.pt"
    torch.manual_seed(0)
    torch.save(SD.build(TINY).state_dict(), checkpoint)
    out = tmp_path / "run"
    arguments = ["run", "--backbones", "sd", "--methods", "all,sparsedm+dipgo,diff-pruning+dipgo,diff-pruning@layer=0.25",
                 "--train-steps", "2", "--fid-samples", "10", "--sample-steps", "4", "--checkpoint", f"sd={checkpoint}",
                 "--out", str(out), "--quiet", "--jobs", "1"]
    assert main(arguments) == 0
    cells = {c["method"]: c for c in CellStore(out).all_cells()}
    assert len(cells) == 14 and all(c["status"] == "ok" for c in cells.values()), {
        m: c["error"] for m, c in cells.items() if c["status"] != "ok"}
    for cell in cells.values():
        metrics = cell["metrics"]
        assert 0 <= metrics["prompt_adherence_low"] <= metrics["prompt_adherence"] <= metrics["prompt_adherence_high"]
        assert "guidance 2" in metrics["sampler"]
    dense = cells["dense"]["metrics"]
    unet_macs = count_macs(SD.build(TINY), SD.example_inputs(TINY, 1)).total
    assert dense["macs_g"] == pytest.approx(2 * unet_macs / 1e9)  # both branches per image and step
    assert "x 2 guidance branches" in dense["latency_mode"]
    assert cells["dipgo"]["metrics"]["sparse_macs_g"] < dense["macs_g"]
    assert cells["diff-pruning"]["metrics"]["params_m"] < dense["params_m"]
    board = {r["method"]: r for r in json.loads((out / "leaderboard.json").read_text())["records"]}
    assert board["dense"]["prompt_adherence"] == pytest.approx(dense["prompt_adherence"])  # one seed: the cell's
    assert "prompt_adherence ↑" in (out / "leaderboard.md").read_text()


def test_all_backbones_leave_the_text_to_image_one_out_unless_named():
    from benchmark.plugins import build_registries

    backbones = build_registries().backbones
    assert "sd" not in backbones.select("all") and {"uvit", "ddpm", "dit"} <= set(backbones.select("all"))
    assert backbones.select("sd") == ["sd"]
