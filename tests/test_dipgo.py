from dataclasses import replace

import pytest
import torch
from test_skipping import BLOCK_NAMES, IMAGE, STEPS, TinyBackbone

from benchmark.api import MethodContext, NMPattern, Pruned, RunOptions
from benchmark.diffusion import Diffusion
from benchmark.metrics.macs import count_macs, trajectory_macs
from benchmark.presets import get_preset
from benchmark.skipping import cascade
from methods.dipgo import DiPGO, PrunerNet, straight_through, threshold_schedule
from methods.uniform_skip import UniformSkip, odd_step_schedule, reuse_order, rings_from_centre

PRESET = replace(get_preset("tiny"), name="test", image_size=IMAGE[1], channels=IMAGE[0], sample_steps=STEPS)


def make_context(target: float = 0.5) -> MethodContext:
    backbone = TinyBackbone()
    teacher = backbone.build(PRESET).eval()
    return MethodContext(
        backbone=backbone, preset=PRESET, options=RunOptions(dipgo_target=target),
        diffusion=Diffusion.for_preset(PRESET), teacher=teacher, batches=lambda: iter(()),
        train_steps=1, seed=0, device=torch.device("cpu"), progress=False,
    )


def schedule_ratio(ctx: MethodContext, schedule: torch.Tensor) -> float:
    """The trajectory MACs ratio as the metrics module computes it."""
    report = count_macs(ctx.teacher, ctx.backbone.example_inputs(PRESET))
    return trajectory_macs(report, BLOCK_NAMES, schedule) / report.total


def test_pruner_starts_with_every_block_kept():
    keep_prob = PrunerNet(STEPS, 5)()
    assert keep_prob.shape == (STEPS - 1, 5)
    assert bool((keep_prob > 0.5).all())


def test_straight_through_is_hard_forward_and_soft_backward():
    prob = torch.tensor([0.2, 0.7], requires_grad=True)
    gate = straight_through(prob)
    (gate * torch.tensor([3.0, 5.0])).sum().backward()
    assert gate.tolist() == [0.0, 1.0]
    assert prob.grad.tolist() == [3.0, 5.0]


def test_threshold_prunes_the_least_needed_pairs_first_with_their_cascade():
    keep_prob = torch.tensor([[0.9, 0.9, 0.9, 0.2, 0.9], [0.9, 0.3, 0.9, 0.9, 0.9]])
    block_macs = torch.tensor([20.0] * 5)  # total 100: each pruned pair saves 20 / 300 of the trajectory
    # (step 1, out_blocks.0) goes first and takes mid_block and in_blocks.1 with it: 240 / 300 = 0.8
    schedule, tau = threshold_schedule(keep_prob, block_macs, 100.0, target=0.8)
    assert schedule.tolist() == [[True] * 5, [True, False, False, False, True], [True] * 5]
    assert tau == pytest.approx(0.2)
    # then (step 2, in_blocks.1), alone: 220 / 300
    schedule, tau = threshold_schedule(keep_prob, block_macs, 100.0, target=0.74)
    assert schedule[2].tolist() == [True, False, True, True, True] and tau == pytest.approx(0.3)
    # where time enters only through the first block, (step 2, in_blocks.1) takes mid and out_blocks.0 too
    schedule, _ = threshold_schedule(keep_prob[:, [0, 1, 2, 4, 4]], block_macs, 100.0, target=0.8, both_sides=True)
    assert schedule.tolist() == [[True] * 5, [True] * 5, [True, False, False, False, True]]


def test_dipgo_meets_the_macs_target_and_keeps_the_masks():
    ctx = make_context(target=0.5)
    model = ctx.backbone.build(PRESET)
    model.load_state_dict(ctx.teacher.state_dict())
    masks = {"head": torch.ones(1, 8, 3, 3, dtype=torch.bool)}
    state = Pruned(model=model, masks=masks, pattern=NMPattern(2, 4), train_steps=7, info={"from": "sparsedm"})
    result = DiPGO().apply(ctx, state)
    sparsity = result.info["loss_history"]["sparsity"]
    assert sparsity[-1] < sparsity[0]
    assert result.schedule.shape == (STEPS, 5) and bool(result.schedule[0].all())
    assert torch.equal(cascade(result.schedule), result.schedule)
    assert abs(result.info["kept_macs_ratio"] - 0.5) <= 0.05
    assert result.info["kept_macs_ratio"] == pytest.approx(schedule_ratio(ctx, result.schedule), rel=1e-5)
    assert result.info["schedule"] == result.schedule.tolist()
    assert result.model is model and result.masks is masks and result.pattern == NMPattern(2, 4)
    assert result.train_steps == 7 and result.info["from"] == "sparsedm"
    assert all(p.requires_grad for p in model.parameters())
    assert all("forward" not in block.__dict__ for _, block in ctx.backbone.blocks(model))


def test_rings_go_from_the_middle_of_the_u_outward():
    assert rings_from_centre(5) == [[2], [1, 3], [0, 4]]
    assert rings_from_centre(4) == [[1, 2], [0, 3]]
    assert reuse_order(5, u_shaped=True) == rings_from_centre(5)


def test_a_flat_block_list_reuses_a_growing_prefix():
    assert reuse_order(4, u_shaped=False) == [[0], [1], [2], [3]]
    for skipped in ([0], [0, 1], [0, 1, 2]):  # uniform-skip's schedules are in DiP-GO's flat search space
        schedule = odd_step_schedule(6, 4, skipped)
        assert torch.equal(cascade(schedule, u_shaped=False), schedule)


def test_uniform_skip_skips_deepest_blocks_on_odd_steps_near_target():
    ctx = make_context(target=0.5)
    result = UniformSkip().apply(ctx, Pruned(model=ctx.teacher))
    schedule = result.schedule
    assert bool(schedule[0::2].all())
    assert not bool(schedule[1::2].any())  # the tiny net needs every block skipped to approach 0.5
    assert abs(result.info["kept_macs_ratio"] - 0.5) <= 0.05
    assert result.info["kept_macs_ratio"] == pytest.approx(schedule_ratio(ctx, schedule), rel=1e-5)
    assert torch.equal(cascade(schedule), schedule)  # DiP-GO's search space holds it

    mid_only = UniformSkip().apply(make_context(target=0.9), Pruned(model=ctx.teacher))
    assert mid_only.info["skipped_blocks"] == ["mid_block"]
    assert mid_only.schedule[1::2].sum(dim=1).tolist() == [4] * (STEPS // 2)
