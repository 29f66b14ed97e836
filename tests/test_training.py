import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark import checkpoints, training
from benchmark.api import Backbone, BenchmarkError, MethodContext, RunOptions
from benchmark.checkpoints import dense_checkpoint, load_dense, sha256_file, train_dense
from benchmark.data import batch_stream, load_dataset
from benchmark.diffusion import Diffusion
from benchmark.presets import Recipe, get_preset
from benchmark.training import NonFiniteLossError, Optimisation, TrainingStream, lr_factor, train
from nets import TwoConv

PRESET = dataclasses.replace(
    get_preset("tiny"), batch_size=16, finetune=Recipe(lr=3e-3), dense_train_steps=3,
    dense=Recipe(lr=3e-3, warmup_steps=2, decay="cosine", ema_decay=0.9),
)  # fmt: skip


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
        batches=lambda start=0: batch_stream(images, PRESET.batch_size, seed, start),
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
        after_step=lambda step, loss: events.append(f"after {step}"),
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


def test_negative_steps_are_rejected_and_zero_steps_train_nothing():
    model = TwoConv()
    with pytest.raises(BenchmarkError, match="non-negative"):
        train(model, make_ctx(model), -1)
    before = [p.clone() for p in model.parameters()]
    assert train(model, make_ctx(model), 0) == []  # `benchmark prune`: no fine-tuning budget
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


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
    assert meta["final_loss"] > 0 and meta["torch"] == torch.__version__ and meta["wall_s"] >= 0
    assert meta["recipe"] == dataclasses.asdict(PRESET.dense) and meta["weights"] == "ema"
    assert meta["loss_curve"][-1][0] == 2
    model = TwoConv()
    FakeBackbone().load_checkpoint(model, str(out))
    assert sorted(p.name for p in out.parent.iterdir()) == ["fake.pt", "fake.pt.json"]  # no temp files left


def dense_model(options: RunOptions) -> nn.Module:
    path = dense_checkpoint(FakeBackbone(), PRESET, options, "cpu", progress=False)
    return load_dense(FakeBackbone(), PRESET, path, "cpu")


def test_load_dense_trains_once_then_reuses_the_cache(cache, monkeypatch):
    first = dense_model(RunOptions())
    cached = cache / "cache" / "dense" / "fake-tiny.pt"
    assert cached.is_file() and not first.training
    assert json.loads(cached.with_name("fake-tiny.pt.json").read_text())["steps"] == PRESET.dense_train_steps

    _forbid_training(monkeypatch)
    second = dense_model(RunOptions())
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_load_dense_prefers_the_given_then_the_shipped_checkpoint(cache, monkeypatch):
    given = train_dense(FakeBackbone(), PRESET, 1, 1, cache / "given.pt", progress=False)
    shipped = train_dense(FakeBackbone(), PRESET, 1, 2, cache / "shipped" / "fake-tiny.pt", progress=False)
    train_dense(FakeBackbone(), PRESET, 1, 3, cache / "cache" / "dense" / "fake-tiny.pt", progress=False)
    _forbid_training(monkeypatch)

    def loads(options, path):
        model = dense_model(options)
        saved = torch.load(path, weights_only=True)
        return all(torch.equal(value, saved[name]) for name, value in model.state_dict().items())

    assert loads(RunOptions(checkpoints={"fake": str(given)}), given)
    assert loads(RunOptions(), shipped)
    assert not loads(RunOptions(), given)


def test_missing_given_checkpoint_names_the_path(cache):
    missing = cache / "nope.pt"
    with pytest.raises(BenchmarkError, match="nope.pt"):
        dense_model(RunOptions(checkpoints={"fake": str(missing)}))


def test_learning_rate_warms_up_then_decays_to_zero():
    recipe = Recipe(lr=1.0, warmup_steps=4, decay="cosine")
    factors = [lr_factor(recipe, step, 12) for step in range(13)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0] and factors[8] == pytest.approx(0.5) and factors[12] == 0.0
    assert all(a >= b for a, b in zip(factors[3:], factors[4:]))
    assert [lr_factor(Recipe(lr=1.0), step, 12) for step in (0, 11)] == [1.0, 1.0]


def test_with_an_ema_the_model_ends_up_holding_the_average():
    model = TwoConv()
    ctx = make_ctx(model)
    ctx.preset = dataclasses.replace(PRESET, finetune=Recipe(lr=3e-3, ema_decay=0.5))
    ctx.train_steps = 3  # the budget: the average replaces the weights once it is spent
    seen = []
    train(model, ctx, 3, after_step=lambda step, loss: seen.append(copy.deepcopy(model.state_dict())))
    expected = {k: 0.25 * seen[0][k] + 0.25 * seen[1][k] + 0.5 * seen[2][k] for k in seen[0]}
    # torch's EMA starts from the first update's weights: w1, then 0.5 w1 + 0.5 w2, then 0.5 (...) + 0.5 w3
    assert all(torch.allclose(model.state_dict()[k], expected[k]) for k in expected)


def test_optimisation_state_round_trips():
    model = TwoConv()
    optimisation = Optimisation(model, PRESET.dense, 10)
    train(model, make_ctx(model), 2, optimisation=optimisation)
    again = Optimisation(copy.deepcopy(model), PRESET.dense, 10)
    again.load_state_dict(optimisation.state_dict())
    assert again.scheduler.last_epoch == 2 and again.ema.n_averaged == optimisation.ema.n_averaged == 2


def test_train_dense_resumes_bit_for_bit(cache, monkeypatch):
    straight = train_dense(FakeBackbone(), PRESET, 6, 0, cache / "a" / "fake.pt", progress=False, checkpoint_every=2)
    out = cache / "b" / "fake.pt"
    calls = {"n": 0}
    step = Optimisation.step

    def die_at_step_5(self, model):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        step(self, model)

    monkeypatch.setattr(Optimisation, "step", die_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train_dense(FakeBackbone(), PRESET, 6, 0, out, progress=False, checkpoint_every=2)
    monkeypatch.setattr(Optimisation, "step", step)
    resume_file = out.with_name("fake.pt.resume")
    assert torch.load(resume_file, weights_only=True)["step"] == 4 and not out.exists()
    with pytest.raises(BenchmarkError, match="--resume"):
        train_dense(FakeBackbone(), PRESET, 6, 0, out, progress=False, checkpoint_every=2)
    with pytest.raises(BenchmarkError, match=r"another training run \(differs in seed\)"):
        train_dense(FakeBackbone(), PRESET, 6, 1, out, progress=False, checkpoint_every=2, resume=True)

    train_dense(FakeBackbone(), PRESET, 6, 0, out, progress=False, checkpoint_every=2, resume=True)
    assert sha256_file(out) == sha256_file(straight) and not resume_file.exists()
    metas = [json.loads(p.with_name("fake.pt.json").read_text()) for p in (straight, out)]
    assert metas[0]["loss_curve"] == metas[1]["loss_curve"]


def test_a_stage_with_a_fresh_optimizer_continues_the_budgets_schedule():
    model = TwoConv()
    ctx = make_ctx(model)
    ctx.preset = dataclasses.replace(PRESET, finetune=Recipe(lr=1.0, warmup_steps=2, decay="cosine"))
    stream = TrainingStream.start(ctx)
    train(model, ctx, 4, stream=stream)
    later = Optimisation(model, ctx.preset.finetune, ctx.train_steps, stream.step)
    assert later.optimizer.param_groups[0]["lr"] == pytest.approx(lr_factor(ctx.preset.finetune, 4, 10))


class DropoutConv(TwoConv):
    """Draws from torch's global generator while it trains, as dropout in a real backbone does."""

    def forward(self, x, t):
        return F.dropout(super().forward(x, t), 0.2, self.training)


def train_budget(model: nn.Module, recipe: Recipe, budget: int, continuation: str | None, saved_in: Path | None = None):
    ctx = make_ctx(model)
    ctx.preset, ctx.train_steps, ctx.continuation = dataclasses.replace(PRESET, finetune=recipe), budget, continuation
    ctx.continuation_dir = None if saved_in is None else str(saved_in)
    torch.manual_seed(0)  # as every cell seeds itself before pruning
    return ctx, train(model, ctx, budget)


@pytest.mark.parametrize("recipe", [Recipe(lr=3e-3), Recipe(lr=3e-3, warmup_steps=3, ema_decay=0.5)])
def test_a_larger_budget_continues_a_smaller_ones_training_and_ends_as_a_separate_run(recipe, request):
    start = DropoutConv()
    separate = copy.deepcopy(start)
    _, expected = train_budget(separate, recipe, 7, None)
    key = request.node.name
    small, large = copy.deepcopy(start), copy.deepcopy(start)
    small_ctx, _ = train_budget(small, recipe, 3, key)
    ctx, losses = train_budget(large, recipe, 7, key)
    assert "continued_from_step" not in small_ctx.measured and ctx.measured["continued_from_step"] == 3
    assert losses == expected  # the same inputs at every step, the same global draws (dropout)
    assert all(torch.equal(a, b) for a, b in zip(large.state_dict().values(), separate.state_dict().values()))


@pytest.mark.parametrize("recipe", [Recipe(lr=3e-3), Recipe(lr=3e-3, warmup_steps=3, ema_decay=0.5)])
def test_a_later_process_continues_the_saved_training_and_ends_as_a_separate_run(recipe, request, tmp_path):
    start = DropoutConv()
    separate = copy.deepcopy(start)
    _, expected = train_budget(separate, recipe, 7, None)
    key = request.node.name
    train_budget(copy.deepcopy(start), recipe, 3, key, tmp_path)
    training._CONTINUATIONS.clear()  # what another process (a later invocation) has not got in memory
    assert [p.name for p in tmp_path.iterdir()] == [f"{key}.pt"]
    large = copy.deepcopy(start)
    ctx, losses = train_budget(large, recipe, 7, key, tmp_path)
    assert ctx.measured["continued_from_step"] == 3 and losses == expected
    assert all(torch.equal(a, b) for a, b in zip(large.state_dict().values(), separate.state_dict().values()))


def test_unreadable_saved_training_warns_and_trains_from_the_start(request, tmp_path):
    key = request.node.name
    (tmp_path / f"{key}.pt").write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="unreadable saved training"):
        ctx, _ = train_budget(TwoConv(), Recipe(lr=3e-3), 3, key, tmp_path)
    assert "continued_from_step" not in ctx.measured


def test_only_a_whole_budget_at_a_constant_rate_continues(request):
    key = request.node.name
    cosine = Recipe(lr=3e-3, decay="cosine")  # the rate at a step depends on the budget's length
    train_budget(TwoConv(), cosine, 3, key)
    assert "continued_from_step" not in train_budget(TwoConv(), cosine, 7, key)[0].measured
    model = TwoConv()
    ctx = make_ctx(model)
    ctx.continuation = key
    train(model, ctx, 4, stream=TrainingStream.start(ctx))  # a stage of a staged method
    train_budget(TwoConv(), Recipe(lr=3e-3), 3, None)
    assert "continued_from_step" not in train_budget(TwoConv(), Recipe(lr=3e-3), 7, key)[0].measured


def test_a_checkpoint_is_identified_by_its_content(cache):
    path = train_dense(FakeBackbone(), PRESET, 1, 0, cache / "cache" / "dense" / "fake-tiny.pt", progress=False)
    first = checkpoints.checkpoint_id(path)
    assert first == "sha256:" + sha256_file(path)
    train_dense(FakeBackbone(), PRESET, 2, 0, path, progress=False)  # retrained under the same name
    assert checkpoints.checkpoint_id(path) != first

    folder = cache / "diffusers"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    ident = checkpoints.checkpoint_id(folder)
    (folder / "config.json").write_text('{"changed": 1}')
    assert ident.startswith("sha256-dir:") and checkpoints.checkpoint_id(folder) != ident


def test_shipped_checkpoints_match_their_recorded_hash():
    for sidecar in checkpoints.SHIPPED_WEIGHTS_DIR.glob("*.pt.json"):
        meta = json.loads(sidecar.read_text())
        weights = sidecar.with_name(sidecar.name.removesuffix(".json"))
        assert meta["sha256"] == sha256_file(weights), weights.name
        assert weights.stat().st_size <= 5 * 2**20, weights.name
