from dataclasses import replace

import pytest
import torch
from test_skipping import BLOCK_NAMES, IMAGE, STEPS, TinyBackbone

from benchmark.api import MethodContext, NMPattern, Pruned, RunOptions
from benchmark.diffusion import Diffusion
from benchmark.metrics.macs import count_macs, trajectory_macs
from benchmark.presets import get_preset
from benchmark.skipping import cascade
from benchmark.skipping import kept_macs_ratio
from methods.dipgo import DiPGO, PrunerNet, block_major_walk, keep_gates, pruner_loss, ssim
from methods.uniform_skip import UniformSkip, odd_step_schedule, reuse_order, rings_from_centre

PRESET = replace(get_preset("tiny"), name="test", image_size=IMAGE[1], channels=IMAGE[0], sample_steps=STEPS,
                 dipgo_pruner_steps=3)


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


def test_every_gate_starts_kept_at_sigmoid_1_through_its_own_mlp():
    pruner = PrunerNet(STEPS, 5)
    logits = pruner()
    assert logits.shape == (STEPS, 5, 2)  # step 0 has a gate too, as in the release (it never reaches the sampler)
    assert torch.allclose(logits.softmax(-1)[..., 1], torch.full((STEPS, 5), torch.sigmoid(torch.tensor(1.0)).item()))
    assert pruner.queries.shape == (STEPS * 5, 512)
    assert pruner.w1.shape == (STEPS * 5, 512, 128) and pruner.w2.shape == (STEPS * 5, 128, 128)
    assert pruner.w3.shape == (STEPS * 5, 128, 2) and not pruner.w3.any()


def test_keep_gates_are_hard_forward_and_softmax_backward():
    logits = torch.tensor([[0.0, 1.0], [2.0, 0.0]], requires_grad=True)
    gates = keep_gates(logits)
    assert gates.tolist() == [1.0, 0.0]
    (gates * torch.tensor([3.0, 5.0])).sum().backward()
    soft = logits.detach().softmax(-1)[:, 1]
    expected = torch.stack([-soft * (1 - soft), soft * (1 - soft)], dim=-1) * torch.tensor([[3.0], [5.0]])
    assert torch.allclose(logits.grad, expected)


def test_ssim_is_one_for_equal_images_and_falls_with_noise():
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    assert ssim(x, x).item() == pytest.approx(1.0)
    assert ssim(x, x + 0.1 * torch.randn_like(x)).item() < ssim(x, x + 0.01 * torch.randn_like(x)).item() < 1


def test_ssim_on_constant_images_is_below_the_luminance_term_by_its_zero_padded_border():
    a, b = torch.full((1, 1, 16, 16), 0.5), torch.full((1, 1, 16, 16), 0.25)
    c1 = 0.01**2
    centre = (2 * 0.5 * 0.25 + c1) / (0.5**2 + 0.25**2 + c1)
    small = ssim(a, b).item()
    large = ssim(torch.full((1, 1, 64, 64), 0.5), torch.full((1, 1, 64, 64), 0.25)).item()
    assert small < large < centre  # zero padding (as the release pads) lowers the border; less of it, less effect


def test_the_sparsity_term_counts_only_while_the_kept_share_is_at_least_0_2():
    consistency = torch.tensor(0.3)
    assert pruner_loss(consistency, torch.tensor(0.5)).item() == pytest.approx(0.8)
    assert pruner_loss(consistency, torch.tensor(0.19)).item() == pytest.approx(0.3)


def test_walk_keeps_strictly_more_than_the_target_visiting_blocks_last_to_first():
    reuse = torch.full((4, 5), 0.1)
    reuse[1:, 4] = 0.99  # the last block is the most reusable and is visited first
    reuse[1:, 0] = 0.97
    block_macs = torch.tensor([20.0] * 5)  # total 100: a block saves 20 / 400 of the trajectory per step
    # flat list: reusing the last block makes every block unused (100 / 400), which would end at 0.75 <= 0.82,
    # so its pass ends there; block 0 alone saves 20 / 400 per step and is taken at steps 1-3
    schedule, threshold = block_major_walk(reuse, block_macs, 100.0, target=0.82, u_shaped=False)
    assert float(kept_macs_ratio(schedule, block_macs, 100.0)) == pytest.approx(0.85) and threshold == 0.95
    assert schedule.tolist() == [[True] * 5] + [[False, True, True, True, True]] * 3
    # with room for it the last block goes first, taking every block of step 1 (ties: the earlier step)
    schedule, threshold = block_major_walk(reuse, block_macs, 100.0, target=0.72, u_shaped=False)
    assert float(kept_macs_ratio(schedule, block_macs, 100.0)) == pytest.approx(0.75) and threshold == 0.95
    assert (~schedule).sum(dim=1).tolist() == [0, 5, 0, 0]


def test_walk_passes_lower_the_threshold_by_0_05_until_a_block_is_reusable():
    reuse = torch.full((6, 5), 0.42)
    block_macs = torch.tensor([20.0] * 5)
    schedule, threshold = block_major_walk(reuse, block_macs, 100.0, target=0.88)
    assert threshold == pytest.approx(0.40)  # the first pass below 0.42
    # out_blocks.1 would take every block (to 0.83); out_blocks.0 takes the three inner ones at step 1 (0.9)
    assert float(kept_macs_ratio(schedule, block_macs, 100.0)) == pytest.approx(0.9)
    assert schedule[1].tolist() == [True, False, False, False, True] and schedule[2:].all()


def test_dipgo_follows_the_official_recipe_and_keeps_the_masks():
    ctx = make_context(target=0.5)
    model = ctx.backbone.build(PRESET)
    model.load_state_dict(ctx.teacher.state_dict())
    masks = {"head": torch.ones(1, 8, 3, 3, dtype=torch.bool)}
    state = Pruned(model=model, masks=masks, pattern=NMPattern(2, 4), train_steps=7, info={"from": "sparsedm"})
    result = DiPGO().apply(ctx, state)
    info = result.info
    assert info["pruner_steps"] == PRESET.dipgo_pruner_steps and len(info["loss_history"]["lr"]) == PRESET.dipgo_pruner_steps
    assert info["loss_history"]["lr"] == pytest.approx([0.0, 0.02, 0.04])  # diffusers' warm-up: 10 steps to 0.1 x 2
    assert len(info["loss_history"]["consistency"]) == PRESET.dipgo_pruner_steps
    assert result.schedule.shape == (STEPS, 5) and bool(result.schedule[0].all())
    assert torch.equal(cascade(result.schedule), result.schedule)
    assert info["kept_macs_ratio"] > 0.5
    assert info["kept_macs_ratio"] == pytest.approx(schedule_ratio(ctx, result.schedule), rel=1e-5)
    assert info["schedule"] == result.schedule.tolist()
    assert result.model is model and result.masks is masks and result.pattern == NMPattern(2, 4)
    assert result.train_steps == 7 and info["from"] == "sparsedm" and not info["pruner_reused"]
    assert all(p.requires_grad for p in model.parameters())
    assert all("forward" not in block.__dict__ for _, block in ctx.backbone.blocks(model))
    again = DiPGO().apply(make_context(target=0.7), Pruned(model=model))  # no target in training: one pruner
    assert again.info["pruner_reused"] and again.info["reuse_prob"] == info["reuse_prob"]
    assert again.info["kept_macs_ratio"] > 0.7


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
