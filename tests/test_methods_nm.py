import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.api import Backbone, MethodContext, NMPattern, Pruned, RunOptions
from benchmark.diffusion import Diffusion
from benchmark.presets import Recipe, get_preset
from benchmark.sparsity import nm_mask, validate_nm
from methods import asp, progressive, sparsedm, ste
from methods.asp import ASP
from methods.dense_ft import DenseFineTuned
from methods.progressive import Progressive, ladder, stage_boundaries
from methods.sparsedm import SparseDM, SparseDMChained, chain_patterns, teacher_term
from methods.ste import STE

BUDGET = 10
P24 = NMPattern(2, 4)


class TinyEps(nn.Module):
    """A conv + linear noise predictor with one layer of each kind that N:M must handle."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)  # input dim 1: a recorded skip
        self.narrow = nn.Conv2d(4, 8, 3, padding=1)  # input dim 4: fits 2:4 but not the x:8 stages
        self.wide = nn.Conv2d(8, 8, 3, padding=1)
        self.time = nn.Linear(16, 8)
        self.head = nn.Conv2d(8, 1, 1)  # kept dense by the backbone

    def forward(self, x, t):
        freqs = torch.exp(-torch.arange(8) / 2.0)
        angles = t[:, None].float() * freqs[None]
        emb = self.time(torch.cat([angles.sin(), angles.cos()], dim=1))
        h = F.silu(self.narrow(F.silu(self.stem(x))) + emb[:, :, None, None])
        return self.head(F.silu(self.wide(h)))


class TinyBackbone(Backbone):
    name = "tiny-test"
    version = "0"

    def build(self, preset):
        return TinyEps()

    def load_checkpoint(self, model, path):
        model.load_state_dict(torch.load(path))

    def blocks(self, model):
        return [("narrow", model.narrow), ("wide", model.wide)]

    def kept_dense(self, model):
        return ["head"]


def make_context(teacher: nn.Module) -> MethodContext:
    def batches():
        generator = torch.Generator().manual_seed(1)
        while True:
            yield torch.rand(4, 1, 8, 8, generator=generator) * 2 - 1

    preset = dataclasses.replace(
        get_preset("tiny"), image_size=8, batch_size=4, finetune=Recipe(lr=1e-3), train_steps=BUDGET
    )
    return MethodContext(
        backbone=TinyBackbone(),
        preset=preset,
        options=RunOptions(),
        diffusion=Diffusion((1, 8, 8), sample_steps=2),
        teacher=teacher,
        batches=batches,
        train_steps=BUDGET,
        seed=0,
        device=torch.device("cpu"),
        progress=False,
    )


@pytest.fixture
def dense():
    torch.manual_seed(0)
    return TinyEps().eval()


def test_plugins_register_the_nm_methods():
    registered = []
    for module in (asp, ste, progressive, sparsedm):
        module.register_methods(registered.append)
    assert [m.name for m in registered] == ["asp", "ste", "progressive", "sparsedm", "sparsedm-chained"]


def test_ladder_for_2_4_and_other_patterns():
    assert [str(p) for p in ladder(P24)] == ["7:8", "6:8", "5:8", "4:8", "2:4"]
    assert [str(p) for p in ladder(NMPattern(1, 2))] == ["3:4", "2:4", "1:2"]
    assert [str(p) for p in ladder(NMPattern(1, 4))] == ["7:8", "6:8", "5:8", "4:8", "3:8", "2:8", "1:4"]


@pytest.mark.parametrize("steps,n_stages", [(10, 5), (13, 5), (300, 5), (3, 5), (7, 1)])
def test_stage_boundaries_cover_the_budget(steps, n_stages):
    bounds = stage_boundaries(steps, n_stages)
    assert len(bounds) == n_stages and bounds[0][0] == 0 and bounds[-1][1] == steps
    assert all(prev[1] == nxt[0] for prev, nxt in zip(bounds, bounds[1:]))
    assert sum(end - start for start, end in bounds) == steps
    lengths = [end - start for start, end in bounds]
    assert len(set(lengths[:-1])) <= 1 and lengths[-1] >= lengths[0]


def test_teacher_term_depends_on_the_teacher(dense):
    x_t, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 900])
    pred = torch.randn(2, 1, 8, 8, requires_grad=True)
    other = TinyEps()
    loss = teacher_term(dense, 0.1)(None, x_t, t, None, pred)
    with torch.no_grad():
        expected = 0.1 * F.mse_loss(pred, dense(x_t, t))
    assert torch.allclose(loss, expected)
    assert not torch.allclose(loss, teacher_term(other, 0.1)(None, x_t, t, None, pred))
    loss.backward()
    assert pred.grad is not None and all(p.grad is None for p in dense.parameters())


def record_training_inputs(model: TinyEps) -> list[tuple[float, list[int]]]:
    """Per student forward in train mode: (zero fraction of ``wide``'s weight, timesteps)."""
    seen = []

    def hook(module, args):
        if module.training:
            seen.append((float((module.wide.weight == 0).float().mean()), args[1].tolist()))

    model.register_forward_pre_hook(hook)
    return seen


@pytest.mark.parametrize("method", [ASP(), STE(), Progressive(), SparseDM(), SparseDMChained()],
                         ids=lambda m: m.name)
def test_method_yields_valid_2_4_model_within_budget(method, dense):
    ctx = make_context(teacher=dense)
    model = copy.deepcopy(dense).train()
    seen = record_training_inputs(model)
    pruned = method.apply(ctx, Pruned(model))

    assert pruned.train_steps == BUDGET and len(seen) == BUDGET
    assert pruned.pattern == P24
    assert set(pruned.masks) == {"narrow", "wide", "time"}
    assert pruned.skipped_layers == {"stem": "input dim 1 not divisible by M=4"}
    masked = sum(mask.numel() for mask in pruned.masks.values())
    assert validate_nm(pruned.model, pruned) == pytest.approx(0.5 * masked / (masked + model.stem.weight.numel()))
    assert validate_nm(pruned.model, dataclasses.replace(pruned, skipped_layers={})) == 0.5
    assert not any("parametrizations" in name for name, _ in pruned.model.named_parameters())
    assert not torch.equal(pruned.model.head.weight, dense.head.weight)  # it was trained
    assert [t for _, t in seen] == expected_timesteps(make_context(teacher=dense))


def expected_timesteps(ctx: MethodContext) -> list[list[int]]:
    """The timesteps of one uninterrupted training run: what every method must see, step by step."""
    generator = torch.Generator().manual_seed(ctx.seed)
    batches = ctx.batches()
    return [ctx.diffusion.training_inputs(next(batches), generator)[1].tolist() for _ in range(ctx.train_steps)]


def test_dense_ft_trains_the_same_budget_without_a_mask(dense):
    ctx = make_context(teacher=dense)
    model = copy.deepcopy(dense).train()
    seen = record_training_inputs(model)
    pruned = DenseFineTuned().apply(ctx, Pruned(model))

    assert pruned.train_steps == BUDGET and not pruned.masks and pruned.pattern is None
    assert [t for _, t in seen] == expected_timesteps(make_context(teacher=dense))  # the same inputs as 2:4 methods
    assert not torch.equal(pruned.model.wide.weight, dense.wide.weight)
    assert (pruned.model.wide.weight != 0).all()


def test_progressive_raises_sparsity_in_stages(dense):
    model = copy.deepcopy(dense).train()
    seen = record_training_inputs(model)
    pruned = Progressive().apply(make_context(teacher=dense), Pruned(model))
    assert [zeros for zeros, _ in seen] == [1 / 8] * 2 + [2 / 8] * 2 + [3 / 8] * 2 + [4 / 8] * 4
    stages = pruned.info["stages"]
    assert [(s["pattern"], s["start"], s["end"]) for s in stages] == [
        ("7:8", 0, 2), ("6:8", 2, 4), ("5:8", 4, 6), ("4:8", 6, 8), ("2:4", 8, 10)
    ]
    assert stages[0]["dense_layers"] == {"narrow": "input dim 4 not divisible by M=8"}
    assert stages[-1]["dense_layers"] == {}


def test_sparsedm_is_one_2_4_stage_from_dense_taught_by_the_dense_model(dense):
    model = copy.deepcopy(dense).train()
    seen = record_training_inputs(model)
    teachers = []
    ctx = make_context(teacher=dense)
    ctx.teacher.register_forward_pre_hook(lambda module, args: teachers.append(module))
    pruned = SparseDM().apply(ctx, Pruned(model))
    assert [zeros for zeros, _ in seen] == [2 / 4] * BUDGET  # 2:4 from the first step (the official recipe)
    assert pruned.info["stages"] == [
        {"pattern": "2:4", "start": 0, "end": BUDGET, "teacher": "dense", "final_loss": pytest.approx(
            pruned.info["stages"][0]["final_loss"])}
    ]
    assert len(teachers) == BUDGET and all(t is ctx.teacher for t in teachers)


def test_sparsedm_loss_is_noise_mse_plus_0_1_teacher_mse(dense):
    """One step of SparseDM equals one step of STE whose loss adds 0.1 x the teacher MSE."""
    from benchmark.sparsity import attach
    from benchmark.training import train

    ctx = dataclasses.replace(make_context(teacher=dense), train_steps=1)
    mine = SparseDM().apply(ctx, Pruned(copy.deepcopy(dense).train())).model
    reference = copy.deepcopy(dense).train()
    attach(reference, TinyBackbone().prunable_layers(reference), P24, mode="ste", decay=ctx.options.srste_decay)
    train(reference, ctx, 1, extra_loss=teacher_term(dense, 0.1))
    from benchmark.sparsity import finalize

    finalize(reference)
    for a, b in zip(mine.parameters(), reference.parameters()):
        assert torch.equal(a, b)


def test_sparsedm_chained_runs_7_8_3_4_2_4_each_taught_by_the_run_before(dense):
    assert [str(p) for p in chain_patterns(P24)] == ["7:8", "3:4", "2:4"]
    assert [str(p) for p in chain_patterns(NMPattern(1, 8))] == ["7:8", "3:4", "2:4", "1:4", "1:8"]
    model = copy.deepcopy(dense).train()
    seen = record_training_inputs(model)
    pruned = SparseDMChained().apply(make_context(teacher=dense), Pruned(model))
    assert [zeros for zeros, _ in seen] == [1 / 8] * 3 + [1 / 4] * 3 + [2 / 4] * 4
    runs = pruned.info["stages"]
    assert [(r["pattern"], r["start"], r["end"], r["teacher"]) for r in runs] == [
        ("7:8", 0, 3, "dense"), ("3:4", 3, 6, "run 7:8"), ("2:4", 6, 10, "run 3:4")
    ]
    assert pruned.info["budget_split"] == [3, 3, 4]
    assert [t for _, t in seen] == expected_timesteps(make_context(teacher=dense))  # one stream across runs


def test_asp_keeps_the_one_shot_mask_of_the_dense_weights(dense):
    pruned = ASP().apply(make_context(teacher=dense), Pruned(copy.deepcopy(dense).train()))
    for name, mask in pruned.masks.items():
        assert torch.equal(mask, nm_mask(getattr(dense, name).weight, P24))
