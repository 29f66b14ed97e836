"""The grid runner on a tiny fake backbone with fake (and two real) methods.

To stay fast these tests replace two things: the dense checkpoint is a freshly seeded fake network
saved to a file (no dense training), and FID features are raw pixels instead of Inception features
(the "real images" are seeded uniform noise). Everything else is the real pipeline:
training, N:M validation, MACs, latency, sampling, cell files and the leaderboard.
"""
from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest
import torch
from torch import nn

from benchmark import checkpoints
from benchmark.grid import plan, run as grid_run
from benchmark.api import Backbone, BenchmarkError, ChannelPruning, Method, MethodContext, Pruned, RunOptions
from benchmark.cli import main
from benchmark.plugins import Registries
from benchmark.presets import PRESETS, Preset
from benchmark.registry import Registry
from benchmark.metrics import fid
from benchmark.metrics.latency import NA_CUDA
from benchmark.grid.store import CellStore
from methods.asp import ASP
from methods.dense import Dense
from methods.diff_pruning import DiffPruning
from methods.dipgo import DiPGO
from methods.l1_channel import L1Channel
from methods.sparsedm import SparseDM
from methods.uniform_skip import UniformSkip

UNIT = dataclasses.replace(
    PRESETS["tiny"], name="unit", batch_size=8, train_steps=2, dense_train_steps=2, sample_steps=4,
    fid_samples=6, sample_batch=6, latency_batch=2, dipgo_pruner_steps=4,
)  # fmt: skip


class TinyNet(nn.Module):
    def __init__(self, channels: int, width: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(channels, width, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(width, width, 1), nn.SiLU()) for _ in range(3))
        self.head = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.stem(x) + (t.float() / 1000.0).view(-1, 1, 1, 1)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


class TinyBackbone(Backbone):
    name = "tiny-net"
    version = "1"

    def build(self, preset: Preset) -> nn.Module:
        return TinyNet(preset.channels)

    def load_checkpoint(self, model: nn.Module, path: str) -> None:
        model.load_state_dict(torch.load(path))

    def blocks(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(f"blocks.{i}", block) for i, block in enumerate(model.blocks)]

    def kept_dense(self, model: nn.Module) -> list[str]:
        return ["stem", "head"]

    def channel_pruning(self, model: nn.Module) -> ChannelPruning:
        return ChannelPruning(kept=["head"])  # the stem's width runs through every block: one prunable group


CALLS: Counter[str] = Counter()


def fake_method(name: str, behaviour):
    def apply(self, ctx: MethodContext, state: Pruned) -> Pruned:
        CALLS[name] += 1
        return behaviour(ctx, state)

    return type(f"Fake_{name}", (Method,), {"name": name, "version": "1", "apply": apply})()


def explode(ctx, state):
    raise RuntimeError("kaboom")


def nan_loss(ctx, state):
    from benchmark.training import train

    train(state.model, ctx, 1, extra_loss=lambda *args: torch.tensor(float("nan")))
    return state


def false_mask_claim(ctx, state):
    from benchmark.api import NMPattern

    blocks = state.model.blocks
    masks = {f"blocks.{i}.0": torch.ones_like(block[0].weight, dtype=torch.bool) for i, block in enumerate(blocks)}
    return dataclasses.replace(state, masks=masks, pattern=NMPattern(2, 4))


def interrupt(ctx, state):
    raise KeyboardInterrupt


FAKES = {
    "counting": lambda ctx, state: state,
    "explode": explode,
    "nan-loss": nan_loss,
    "false-mask": false_mask_claim,
    "interrupt": interrupt,
}


def pixel_features(scorer, images, progress=None):
    return images.flatten(1).double().numpy()


def fake_reference_features(dataset_name, n, images_fn, scorer):
    shape = (n, UNIT.channels, UNIT.image_size, UNIT.image_size)
    return pixel_features(scorer, torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 2 - 1)


@pytest.fixture
def registries(monkeypatch, tmp_path_factory):
    methods: Registry[Method] = Registry("method", Method)
    builtins = (Dense(), ASP(), UniformSkip(), DiPGO(), SparseDM(), DiffPruning(), L1Channel())
    for method in (*builtins, *(fake_method(n, b) for n, b in FAKES.items())):
        methods.add(method, "tests")
    backbones: Registry[Backbone] = Registry("backbone", Backbone)
    backbones.add(TinyBackbone(), "tests")

    def fresh_dense(backbone, preset, options, device, progress=True):
        path = tmp_path_factory.mktemp("dense") / f"{backbone.name}.pt"
        torch.manual_seed(1234)
        torch.save(backbone.build(preset).state_dict(), path)
        return path

    monkeypatch.setattr(checkpoints, "dense_checkpoint", fresh_dense)
    monkeypatch.setattr(fid.FIDScorer, "features", pixel_features)
    monkeypatch.setattr(fid, "reference_features", fake_reference_features)
    monkeypatch.setattr(fid, "ensure_weights_available", lambda: "fake-weights")
    CALLS.clear()
    return Registries(methods, backbones, {"tests": "builtin"})


def run(registries, tmp_path, methods, options=None, seeds=(0,)):
    return grid_run.run_grid(
        registries, methods, ["tiny-net"], UNIT, options or RunOptions(), seeds=list(seeds), device="cpu",
        out_dir=tmp_path, progress=False,
    )  # fmt: skip


def test_failing_cells_are_recorded_and_the_rest_goes_on(registries, tmp_path):
    summary = run(registries, tmp_path, ["explode", "counting", "nan-loss", "false-mask", "asp", "uniform-skip"])
    assert sorted(m for _, m, _, _ in summary.failed) == ["explode", "false-mask", "nan-loss"]
    assert [m for _, m, _, _ in summary.ok] == ["dense", "counting", "asp", "uniform-skip"]  # dense was not requested

    store = CellStore(tmp_path)
    errors = {"explode": "RuntimeError: kaboom", "nan-loss": "NonFiniteLossError", "false-mask": "MaskValidationError"}
    for method, error in errors.items():
        cell = store.read("tiny-net", method, 0)
        assert cell["status"] == "failed" and cell["error"].startswith(error)
        assert cell["traceback"].startswith("Traceback") and error.split(":")[0] in cell["traceback"]

    dense, asp, skip = (store.read("tiny-net", m, 0)["metrics"] for m in ("dense", "asp", "uniform-skip"))
    assert dense["sparsity"] == 0.0 and dense["sparse_macs_g"] == dense["macs_g"] > 0
    assert isinstance(dense["speedup"], float) and dense["fid_samples"] == UNIT.fid_samples
    assert dense["latency_mode"] == f"per evaluation, fp32 eager, cpu, batch {UNIT.latency_batch}"
    assert asp["masked_sparsity"] == pytest.approx(0.5) and asp["sparse_macs_g"] < asp["macs_g"]
    masked = sum(m.weight.numel() for m in TinyNet(UNIT.channels).blocks.modules() if isinstance(m, nn.Conv2d))
    total = sum(p.numel() for p in TinyNet(UNIT.channels).parameters())
    assert asp["sparsity"] == pytest.approx(masked / 2 / total)  # measured over the whole model
    assert asp["latency_ms"] == asp["dense_latency_ms"] == asp["speedup"] == asp["latency_mode"] == NA_CUDA
    assert asp["train_steps"] == UNIT.train_steps
    assert skip["sparse_macs_g"] < skip["macs_g"] and skip["latency_ms"] > 0 and skip["speedup"] > 0
    assert skip["latency_mode"].startswith("sampling per step") and skip["sparsity"] == 0.0
    assert (tmp_path / "samples" / "tiny-net__asp__seed0.png").is_file()

    board = json.loads((tmp_path / "leaderboard.json").read_text())["records"]
    assert [(r["method"], r["status"]) for r in board][0] == ("dense", "ok")
    assert sum(r["status"] == "failed" for r in board) == 3


def test_resume_skips_complete_cells(registries, tmp_path):
    first = run(registries, tmp_path, ["counting", "explode"])
    assert CALLS == {"counting": 1, "explode": 1}
    assert first.skipped == []

    second = run(registries, tmp_path, ["counting", "explode"])
    assert CALLS == {"counting": 1, "explode": 2}  # only the failed cell ran again
    assert second.skipped == [("tiny-net", "dense", 0, None), ("tiny-net", "counting", 0, None)]

    run(registries, tmp_path, ["counting"], RunOptions(srste_decay=1e-3))  # stale config hash
    assert CALLS["counting"] == 2

    path = CellStore(tmp_path).path("tiny-net", "counting", 0, None)
    path.write_text(path.read_text()[:50])  # e.g. killed mid-write by an older, non-atomic writer
    with pytest.warns(UserWarning, match="recomputed"):
        run(registries, tmp_path, ["counting"], RunOptions(srste_decay=1e-3))
    assert CALLS["counting"] == 3


def test_fid_to_dense_compares_with_the_dense_samples_even_on_resume(registries, tmp_path):
    run(registries, tmp_path / "together", ["counting", "uniform-skip"])
    run(registries, tmp_path / "resumed", ["counting"])
    (kept,) = (tmp_path / "resumed" / "features").glob("tiny-net__dense__seed0-*.npy")
    written = kept.stat().st_mtime_ns
    resumed = run(registries, tmp_path / "resumed", ["counting", "uniform-skip"])
    assert resumed.skipped == [("tiny-net", "dense", 0, None), ("tiny-net", "counting", 0, None)]
    assert kept.stat().st_mtime_ns == written  # the dense samples' features were read back, not drawn again

    together, later = (CellStore(tmp_path / d) for d in ("together", "resumed"))
    metrics = {m: together.read("tiny-net", m, 0)["metrics"] for m in ("dense", "counting", "uniform-skip")}
    assert metrics["dense"]["fid_to_dense"] == 0.0
    assert metrics["counting"]["fid_to_dense"] == pytest.approx(0.0, abs=1e-3)  # same model, same noise: 0 up to rounding
    assert metrics["uniform-skip"]["fid_to_dense"] > 1e-3
    assert later.read("tiny-net", "uniform-skip", 0, None)["metrics"]["fid_to_dense"] == metrics["uniform-skip"]["fid_to_dense"]
    assert metrics["uniform-skip"]["fid"] != metrics["uniform-skip"]["fid_to_dense"]  # the other reference


def test_keyboard_interrupt_stops_the_run(registries, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run(registries, tmp_path, ["counting", "interrupt", "explode"])
    assert CALLS == {"counting": 1, "interrupt": 1}
    store = CellStore(tmp_path)
    assert [c["method"] for c in store.all_cells()] == ["counting", "dense"]
    assert not list(store.cells_dir.glob(".*.claim"))  # every claim released


def test_a_second_invocation_skips_cells_another_one_is_computing(registries, tmp_path):
    store = CellStore(tmp_path)
    store.ensure_writable()
    (store.cells_dir / ".tiny-net__counting__seed0.claim").write_text("other-host 42")
    summary = run(registries, tmp_path, ["counting", "asp"])
    assert summary.claimed == [("tiny-net", "counting", 0, None)] and "counting" not in CALLS
    assert sorted(m for _, m, _, _ in summary.ok) == ["asp", "dense"]


def test_2to4_latency_report_where_kernels_exist(registries, tmp_path, monkeypatch):
    """The CUDA sm80+ branch, on CPU: the kernel timing itself is faked, the plumbing is real."""
    from benchmark.metrics import latency

    seen = {}

    def fake_report(model, masks, inputs_fn, batch_sizes, device):
        seen.update(layers=sorted(masks), inputs=inputs_fn(batch_sizes[0])[0].shape)
        entry = {
            "batch": batch_sizes[0],
            "eager": {"dense_ms": 1.0, "sparse_ms": 2.0, "speedup": 0.5},
            "graphed": {"dense_ms": 0.6, "sparse_ms": 0.5, "speedup": 1.2},
            "graphed_fused": {"error": "RuntimeError: capture failed"},
        }
        return {"supported": True, "batches": [entry]}

    monkeypatch.setattr(latency, "semi_structured_supported", lambda device: (True, "fake sm90"))
    monkeypatch.setattr(latency, "sparse_latency_report", fake_report)
    run(registries, tmp_path, ["asp"])
    cell = CellStore(tmp_path).read("tiny-net", "asp", 0, None)
    metrics = cell["metrics"]
    assert (metrics["dense_latency_ms"], metrics["latency_ms"]) == (0.6, 0.5) and metrics["speedup"] == pytest.approx(1.2)
    assert metrics["latency_mode"] == f"per evaluation, fp16 CUDA graph, cpu, batch {UNIT.latency_batch}"
    assert cell["latency_report"]["headline_mode"] == "graphed"  # the fused mode failed to capture
    assert cell["latency_report"]["batches"][0]["batch"] == UNIT.latency_batch
    assert seen == {"layers": ["blocks.0.0", "blocks.1.0", "blocks.2.0"], "inputs": (UNIT.latency_batch, 1, 16, 16)}


def test_cli_exit_code_when_a_cell_failed(registries, tmp_path, monkeypatch, capsys):
    import benchmark.plugins

    monkeypatch.setitem(PRESETS, UNIT.name, UNIT)
    monkeypatch.setattr(benchmark.plugins, "build_registries", lambda: registries)
    code = main(["run", "--methods", "counting,explode", "--preset", "unit", "--out", str(tmp_path), "--quiet",
                 "--jobs", "1"])
    captured = capsys.readouterr()
    assert code == 1
    assert "2 ok, 1 failed, 0 skipped" in captured.out
    assert "failed: tiny-net/explode seed 0" in captured.err


def test_expand_methods(registries):
    methods = registries.methods
    everything = plan.expand_methods(methods, "all")
    assert everything[0] == "dense" and sorted(everything) == sorted(methods.names())
    assert plan.expand_methods(methods, " asp , asp+uniform-skip,asp,") == ["asp", "asp+uniform-skip"]
    assert plan.expand_methods(methods, "all,asp + uniform-skip")[-1] == "asp+uniform-skip"
    with pytest.raises(BenchmarkError, match="no method given"):
        plan.expand_methods(methods, " , ")


def test_invalid_input_fails_before_any_cell(registries, tmp_path):
    with pytest.raises(BenchmarkError, match="unknown method 'nosuch'"):
        run(registries, tmp_path, ["counting", "asp+nosuch"])
    assert not CALLS and not tmp_path.joinpath("cells").exists()


def test_seeds_are_cells_of_their_own_and_the_leaderboard_aggregates_them(registries, tmp_path):
    summary = run(registries, tmp_path, ["counting"], seeds=(0, 1))
    assert summary.ok == [("tiny-net", m, s, None) for s in (0, 1) for m in ("dense", "counting")]
    store = CellStore(tmp_path)
    fids = [store.read("tiny-net", "dense", seed)["metrics"]["fid"] for seed in (0, 1)]
    assert fids[0] != fids[1]  # other noise, other samples
    assert run(registries, tmp_path, ["counting"], seeds=(1, 2)).skipped == [
        ("tiny-net", "dense", 1, None), ("tiny-net", "counting", 1, None)
    ]

    board = json.loads((tmp_path / "leaderboard.json").read_text())["records"]
    dense = next(r for r in board if r["method"] == "dense")
    assert dense["seeds"] == 3 and dense["fid_low"] < dense["fid"] < dense["fid_high"] and dense["fid_std"] > 0
    counting = next(r for r in board if r["method"] == "counting")
    assert counting["vs_reference"].startswith("= tie with dense")  # the same model: no difference
    assert dense["prompt_adherence"] is None  # an unconditional backbone: no such column in the table
    assert "prompt_adherence" not in (tmp_path / "leaderboard.md").read_text()


def test_every_fid_carries_a_bootstrap_interval(registries, tmp_path):
    run(registries, tmp_path, ["uniform-skip"])
    store = CellStore(tmp_path)
    skip, dense = (store.read("tiny-net", m, 0)["metrics"] for m in ("uniform-skip", "dense"))
    for name in ("fid", "fid_to_dense"):
        assert skip[f"{name}_low"] < skip[name] < skip[f"{name}_high"] and skip[f"{name}_sd"] > 0
    assert dense["fid_to_dense"] == dense["fid_to_dense_sd"] == 0.0
    assert store.read("tiny-net", "dense", 0, None)["config"]["fid"] == {"weights": "fake-weights", "bootstrap_resamples": 200}


def test_a_dense_checkpoint_is_known_by_its_content(registries, tmp_path, monkeypatch):
    path = tmp_path / "ckpt" / "tiny-net-unit.pt"
    path.parent.mkdir()
    monkeypatch.setattr(checkpoints, "dense_checkpoint", lambda *args, **kwargs: path)
    for seed in (1, 2):  # other weights under the same file name
        torch.manual_seed(seed)
        torch.save(TinyNet(UNIT.channels).state_dict(), path)
        run(registries, tmp_path / "run", ["counting"])
    assert CALLS["counting"] == 2
    run(registries, tmp_path / "run", ["counting"])
    assert CALLS["counting"] == 2
    ident = CellStore(tmp_path / "run").read("tiny-net", "counting", 0, None)["config"]["dense_checkpoint"]
    assert ident == "sha256:" + checkpoints.sha256_file(path)


def test_too_many_fid_samples_fail_before_any_cell(registries, tmp_path):
    with pytest.raises(BenchmarkError, match=r"--fid-samples 100000 .* has 5000 images \(allowed: 2 to 5000\)"):
        run(registries, tmp_path, ["counting"], RunOptions(fid_samples=100_000))
    assert not CALLS and not tmp_path.joinpath("cells").exists()


def test_missing_inception_weights_fail_before_any_cell(registries, tmp_path, monkeypatch):
    def no_weights():
        raise BenchmarkError("FID needs the Inception weights")

    monkeypatch.setattr(fid, "ensure_weights_available", no_weights)
    with pytest.raises(BenchmarkError, match="Inception weights"):
        run(registries, tmp_path, ["counting"])
    assert not CALLS and not tmp_path.joinpath("cells").exists()


def test_repeated_seeds_are_refused(registries, tmp_path):
    with pytest.raises(BenchmarkError, match="distinct"):
        run(registries, tmp_path, ["counting"], seeds=(0, 0))


def test_a_chain_runs_as_one_cell_with_masks_and_a_schedule(registries, tmp_path):
    run(registries, tmp_path, ["asp", "uniform-skip", "asp+uniform-skip"])
    store = CellStore(tmp_path)
    asp, skip, chain = (store.read("tiny-net", m, 0) for m in ("asp", "uniform-skip", "asp+uniform-skip"))
    assert chain["status"] == "ok" and sorted(chain["info"]) == ["asp", "uniform-skip"]
    metrics = chain["metrics"]
    assert metrics["masked_sparsity"] == pytest.approx(0.5) and chain["mask_digest"] == asp["mask_digest"]  # validated
    assert metrics["sparse_macs_g"] < min(asp["metrics"]["sparse_macs_g"], skip["metrics"]["sparse_macs_g"])
    assert isinstance(metrics["speedup"], float) and metrics["speedup"] > 0  # the schedule's branch, dense kernels
    assert metrics["train_steps"] == UNIT.train_steps


def test_structural_cells_save_a_smaller_reloadable_model(registries, tmp_path):
    from benchmark import structural

    run(registries, tmp_path, ["diff-pruning", "l1-channel@0.3"])
    store = CellStore(tmp_path)
    dense = store.read("tiny-net", "dense", 0, None)["metrics"]
    for method, target in (("diff-pruning", RunOptions().structural_target.value), ("l1-channel@0.3", 0.3)):
        cell = store.read("tiny-net", method, 0)
        metrics, info = cell["metrics"], cell["info"][method]
        assert cell["status"] == "ok" and info["target"] == target and info["kept_layers"] == ["head"]
        assert metrics["macs_g"] / dense["macs_g"] == pytest.approx(info["macs_ratio"])  # counted on the pruned model
        assert metrics["params_m"] < dense["params_m"] and metrics["sparsity"] == pytest.approx(
            1 - metrics["params_m"] / dense["params_m"], abs=1e-6)  # removed parameters, measured
        assert metrics["latency_mode"].startswith("per evaluation") and metrics["speedup"] > 0
        model = structural.load_pruned(TinyBackbone(), UNIT, tmp_path / cell["pruned_model"])
        assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(metrics["params_m"])
    assert store.read("tiny-net", "dense", 0, None)["pruned_model"] is None
    assert cell["info"]["l1-channel@0.3"].keys() >= {"channel_ratio", "macs_ratio"}
    assert store.read("tiny-net", "diff-pruning", 0, None)["info"]["diff-pruning"]["gradient_timesteps"] > 0


def test_each_operating_point_is_its_own_cell(registries, tmp_path):
    assert plan.expand_methods(registries.methods, "uniform-skip@0.30,uniform-skip@0.7,uniform-skip") == [
        "uniform-skip@0.3", "uniform-skip@0.7", "uniform-skip",
    ]
    run(registries, tmp_path, ["l1-channel@0.3", "l1-channel@0.7"])
    store = CellStore(tmp_path)
    low, high = (store.read("tiny-net", f"l1-channel@{x}", 0) for x in ("0.3", "0.7"))
    assert low["config_hash"] != high["config_hash"]
    assert low["config"]["method_versions"] == {"l1-channel": "1"}
    assert low["info"]["l1-channel@0.3"]["target"] == 0.3 and high["info"]["l1-channel@0.7"]["target"] == 0.7
    assert low["metrics"]["macs_g"] < high["metrics"]["macs_g"]
    assert low["config"]["options"]["structural_target"] == RunOptions().structural_target.value  # the point is in the name


@pytest.mark.parametrize(
    "spec, message",
    [
        ("dense@0.5", "method 'dense' has no operating point to set .* methods with one: asp"),
        ("dipgo@1.5", r"bad operating point 'dipgo@1.5' \(dipgo_target\): '1.5' is not a fraction in \(0, 1\]"),
        ("asp@2-4", r"bad operating point 'asp@2-4' \(pattern\): malformed N:M pattern"),
        ("dipgo@", "bad operating point"),
    ],
)
def test_bad_operating_points_are_refused_before_any_cell(registries, tmp_path, spec, message):
    with pytest.raises(BenchmarkError, match=message):
        plan.expand_methods(registries.methods, spec)
    with pytest.raises(BenchmarkError, match=message):
        run(registries, tmp_path, [spec])
    assert not tmp_path.joinpath("cells").exists()


def test_structural_then_skip_schedule_chain(registries, tmp_path):
    """diff-pruning+dipgo: the schedule is searched and costed on the pruned model."""
    run(registries, tmp_path, ["diff-pruning", "diff-pruning+dipgo@0.5"])
    store = CellStore(tmp_path)
    pruned, chain = (store.read("tiny-net", m, 0) for m in ("diff-pruning", "diff-pruning+dipgo@0.5"))
    metrics = chain["metrics"]
    assert chain["status"] == "ok" and sorted(chain["info"]) == ["diff-pruning", "dipgo@0.5"]
    assert metrics["macs_g"] == pytest.approx(pruned["metrics"]["macs_g"])  # one evaluation of the pruned model
    assert metrics["sparse_macs_g"] < metrics["macs_g"]  # ... of which the schedule skips some
    assert metrics["sparse_macs_g"] / metrics["macs_g"] == pytest.approx(chain["info"]["dipgo@0.5"]["kept_macs_ratio"])
    assert metrics["latency_mode"].startswith("sampling per step") and metrics["speedup"] > 0
    assert chain["pruned_model"] == "models/tiny-net__diff-pruning+dipgo@0.5__seed0.pt"
    assert metrics["params_m"] == pytest.approx(pruned["metrics"]["params_m"])


def test_masks_then_skip_schedule_chain(registries, tmp_path):
    """sparsedm+dipgo: N:M masks validated, MACs with masks and a schedule, the schedule's latency branch."""
    run(registries, tmp_path, ["sparsedm", "sparsedm+dipgo"])
    store = CellStore(tmp_path)
    masked, chain = (store.read("tiny-net", m, 0) for m in ("sparsedm", "sparsedm+dipgo"))
    metrics = chain["metrics"]
    assert chain["status"] == "ok" and sorted(chain["info"]) == ["dipgo", "sparsedm"]
    assert metrics["masked_sparsity"] == pytest.approx(0.5) and chain["mask_digest"] == masked["mask_digest"]
    assert metrics["sparse_macs_g"] < masked["metrics"]["sparse_macs_g"] < metrics["macs_g"]
    assert metrics["latency_mode"].startswith("sampling per step") and metrics["speedup"] > 0
    assert chain["info"]["sparsedm"]["stages"] and "schedule" in chain["info"]["dipgo"]


def test_structural_pruning_must_come_first_in_a_chain(registries, tmp_path):
    run(registries, tmp_path, ["asp+l1-channel"])
    cell = CellStore(tmp_path).read("tiny-net", "asp+l1-channel", 0)
    assert cell["status"] == "failed" and "must come first in a chain" in cell["error"]
