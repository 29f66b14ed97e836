import copy
import dataclasses
import json

import pytest
import torch
from torch import nn

from benchmark import checkpoints
from benchmark.api import Backbone, BenchmarkError, MethodContext, RunOptions
from benchmark.checkpoints import load_dense, sha256_file, train_dense
from benchmark.data import batch_stream, load_dataset
from benchmark.diffusion import Diffusion
from benchmark.presets import get_preset
from benchmark.training import NonFiniteLossError, train
from nets import TwoConv

PRESET = dataclasses.replace(get_preset("tiny"), batch_size=16, lr=3e-3, dense_train_steps=3)


class FakeBackbone(Backbone):
    name = "fake"
    version = "1"

    def build(self, preset):
        return TwoConv(preset.channels)

    def load_checkpoint(self, model, path):
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    def blocks(self, model):
        return [("inp", model.inp), ("out", model.out)]


def make_ctx(model: nn.Module, seed: int = 0) -> MethodContext:
    images = load_dataset(PRESET.dataset)
    return MethodContext(
        backbone=FakeBackbone(),
        preset=PRESET,
        options=RunOptions(),
        diffusion=Diffusion.for_preset(PRESET),
        teacher=model,
        batches=lambda: batch_stream(images, PRESET.batch_size, seed),
        train_steps=10,
        seed=seed,
        device=torch.device("cpu"),
        progress=False,
    )


def test_train_lowers_the_loss():
    model = TwoConv()
    losses = train(model, make_ctx(model), 60)
    assert len(losses) == 60
    assert sum(losses[-15:]) / 15 < 0.7 * sum(losses[:5]) / 5


def test_same_seed_gives_identical_losses_and_weights():
    first = TwoConv()
    second = copy.deepcopy(first)
    third = copy.deepcopy(first)
    losses = train(first, make_ctx(first), 5)
    assert train(second, make_ctx(second), 5) == losses
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))
    assert train(third, make_ctx(third, seed=1), 5) != losses


def test_hooks_run_around_each_step_and_extra_loss_is_added():
    model = TwoConv()
    events = []

    def extra_loss(model_, x_t, t, noise, pred):
        events.append("loss")
        assert model_ is model and x_t.shape == noise.shape == pred.shape and t.shape == (PRESET.batch_size,)
        return torch.tensor(10.0)

    losses = train(
        model,
        make_ctx(model),
        2,
        extra_loss=extra_loss,
        before_step=lambda step: events.append(f"before {step}"),
        after_step=lambda step: events.append(f"after {step}"),
    )
    assert events == ["before 0", "loss", "after 0", "before 1", "loss", "after 1"]
    assert all(loss > 10.0 for loss in losses)


def test_only_trainable_parameters_change_and_mode_is_restored():
    model = TwoConv().eval()
    model.inp.requires_grad_(False)
    frozen = model.inp.weight.clone()
    train(model, make_ctx(model), 3)
    assert torch.equal(model.inp.weight, frozen)
    assert not model.training


def test_non_finite_loss_raises_before_the_update():
    model = TwoConv()
    step_now = {}
    before = copy.deepcopy(model.state_dict())

    def nan_from_step_2(model_, x_t, t, noise, pred):
        return torch.tensor(float("nan") if step_now["step"] >= 2 else 0.0)

    with pytest.raises(NonFiniteLossError, match="step 3 of 10"):
        train(model, make_ctx(model), 10, extra_loss=nan_from_step_2, before_step=lambda s: step_now.update(step=s))
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())  # steps 0 and 1 ran
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_non_positive_steps_are_rejected():
    model = TwoConv()
    with pytest.raises(BenchmarkError, match="positive"):
        train(model, make_ctx(model), 0)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFPRUNE_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(checkpoints, "SHIPPED_WEIGHTS_DIR", tmp_path / "shipped")
    return tmp_path


def _forbid_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("load_dense trained although a checkpoint exists")

    monkeypatch.setattr(checkpoints, "train_dense", fail)


def test_train_dense_writes_state_dict_and_sidecar(cache):
    out = train_dense(FakeBackbone(), PRESET, 2, 4, cache / "out" / "fake.pt", progress=False)
    assert out == cache / "out" / "fake.pt"
    meta = json.loads((cache / "out" / "fake.pt.json").read_text())
    assert meta["sha256"] == sha256_file(out)
    assert (meta["backbone"], meta["preset"], meta["steps"], meta["seed"]) == ("fake", "tiny", 2, 4)
    assert meta["final_loss"] > 0 and meta["torch"] == torch.__version__
    model = TwoConv()
    FakeBackbone().load_checkpoint(model, str(out))
    assert sorted(p.name for p in out.parent.iterdir()) == ["fake.pt", "fake.pt.json"]  # no temp files left


def test_load_dense_trains_once_then_reuses_the_cache(cache, monkeypatch):
    first = load_dense(FakeBackbone(), PRESET, RunOptions(), "cpu", progress=False)
    cached = cache / "cache" / "dense" / "fake-tiny.pt"
    assert cached.is_file() and not first.training
    assert json.loads(cached.with_name("fake-tiny.pt.json").read_text())["steps"] == PRESET.dense_train_steps

    _forbid_training(monkeypatch)
    second = load_dense(FakeBackbone(), PRESET, RunOptions(), "cpu", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_load_dense_prefers_the_given_then_the_shipped_checkpoint(cache, monkeypatch):
    given = train_dense(FakeBackbone(), PRESET, 1, 1, cache / "given.pt", progress=False)
    shipped = train_dense(FakeBackbone(), PRESET, 1, 2, cache / "shipped" / "fake-tiny.pt", progress=False)
    train_dense(FakeBackbone(), PRESET, 1, 3, cache / "cache" / "dense" / "fake-tiny.pt", progress=False)
    _forbid_training(monkeypatch)

    def loads(options, path):
        model = load_dense(FakeBackbone(), PRESET, options, "cpu", progress=False)
        saved = torch.load(path, weights_only=True)
        return all(torch.equal(value, saved[name]) for name, value in model.state_dict().items())

    assert loads(RunOptions(checkpoints={"fake": str(given)}), given)
    assert loads(RunOptions(), shipped)
    assert not loads(RunOptions(), given)


def test_missing_given_checkpoint_names_the_path(cache):
    missing = cache / "nope.pt"
    with pytest.raises(BenchmarkError, match="nope.pt"):
        load_dense(FakeBackbone(), PRESET, RunOptions(checkpoints={"fake": str(missing)}), "cpu", progress=False)
