import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.api import Backbone
from benchmark.diffusion import Diffusion
from benchmark.skipping import BlockGates, cascade, kept_macs_ratio, scheduled

STEPS = 6
IMAGE = (1, 8, 8)
BLOCK_NAMES = ["in_blocks.0", "in_blocks.1", "mid_block", "out_blocks.0", "out_blocks.1"]


class TimedConv(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.time = nn.Linear(8, cout)

    def forward(self, h, temb):
        return F.silu(self.conv(h) + self.time(temb)[:, :, None, None])


class TupleBlock(TimedConv):
    """Returns ``(hidden, (skip,))`` like a diffusers down block."""

    def forward(self, h, temb):
        out = super().forward(h, temb)
        return out, (out * 0.5,)


class TinyUNet(nn.Module):
    """Two in-blocks (one returning a tuple), a mid block and two out-blocks with skip concatenation."""

    def __init__(self, channels: int = 1, width: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(channels, width, 3, padding=1)
        self.in_blocks = nn.ModuleList([TimedConv(width, width), TupleBlock(width, width)])
        self.mid_block = TimedConv(width, width)
        self.out_blocks = nn.ModuleList([TimedConv(2 * width, width), TimedConv(2 * width, width)])
        self.head = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x, t):
        freqs = torch.exp(-math.log(1000.0) * torch.arange(4, device=x.device) / 4)
        angles = t.float()[:, None] * freqs[None]
        temb = torch.cat([angles.sin(), angles.cos()], dim=1)
        h = self.in_blocks[0](self.stem(x), temb)
        skips = [h]
        h, (skip,) = self.in_blocks[1](h, temb)
        skips.append(skip)
        h = self.mid_block(h, temb)
        for block in self.out_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), temb)
        return self.head(h)


class TinyBackbone(Backbone):
    name = "tiny-u"
    version = "1"

    def build(self, preset):
        return TinyUNet(preset.channels)

    def load_checkpoint(self, model, path):
        model.load_state_dict(torch.load(path))

    def blocks(self, model):
        return [(name, model.get_submodule(name)) for name in BLOCK_NAMES]


def count_conv_calls(model: nn.Module) -> dict[str, int]:
    calls = {name: 0 for name in BLOCK_NAMES}
    for name in BLOCK_NAMES:
        model.get_submodule(name).conv.register_forward_hook(
            lambda *_, name=name: calls.__setitem__(name, calls[name] + 1)
        )
    return calls


@pytest.fixture
def model():
    return TinyUNet().eval()


def test_reuse_returns_the_cached_output_without_computing(model):
    blocks = TinyBackbone().blocks(model)
    calls = count_conv_calls(model)
    outputs = {}
    for name, block in blocks:
        block.register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out))
    x, t = torch.randn(2, *IMAGE), torch.tensor([900, 900])
    with BlockGates(blocks) as gates:
        gates.set_step(0, [True] * 5)
        model(x, t)
        first = dict(outputs)
        gates.set_step(1, [True, False, True, False, True])
        model(torch.randn(2, *IMAGE), t - 100)
    assert calls == {"in_blocks.0": 2, "in_blocks.1": 1, "mid_block": 2, "out_blocks.0": 1, "out_blocks.1": 2}
    assert outputs["in_blocks.1"] is first["in_blocks.1"]  # the tuple output, as cached
    assert outputs["out_blocks.0"] is first["out_blocks.0"]
    assert not torch.equal(outputs["mid_block"], first["mid_block"])


def test_soft_gate_mixes_new_and_cached_outputs_with_gradient(model):
    blocks = TinyBackbone().blocks(model)
    block = model.in_blocks[1]
    x, t = torch.randn(2, *IMAGE), torch.tensor([900, 900])
    h, temb = torch.randn(2, 8, 8, 8), torch.randn(2, 8)
    gate = torch.tensor(0.25, requires_grad=True)
    plain = model(x, t)
    with BlockGates(blocks) as gates:
        gates.set_step(0, [gate] * 5)
        assert torch.equal(model(x, t), plain)  # step 0 always computes: no cache to mix with
        old = gates.cache[1]
        gates.set_step(1, [gate] * 5)
        mixed = block(h, temb)
    new = block(h, temb)
    torch.testing.assert_close(mixed[0], 0.25 * new[0] + 0.75 * old[0])
    torch.testing.assert_close(mixed[1][0], 0.25 * new[1][0] + 0.75 * old[1][0])
    mixed[0].sum().backward()
    assert gate.grad is not None and gate.grad != 0


def test_all_true_schedule_reproduces_the_full_sampler(model):
    diffusion = Diffusion(IMAGE, STEPS)
    blocks = TinyBackbone().blocks(model)
    full = diffusion.sample(model, 5, 3, torch.Generator().manual_seed(1))
    with scheduled(model, blocks, torch.ones(STEPS, 5, dtype=torch.bool)) as on_step:
        gated = diffusion.sample(model, 5, 3, torch.Generator().manual_seed(1), on_step=on_step)
    assert torch.equal(full, gated)


def test_schedule_skips_blocks_on_the_steps_it_says(model):
    diffusion = Diffusion(IMAGE, STEPS)
    blocks = TinyBackbone().blocks(model)
    schedule = torch.ones(STEPS, 5, dtype=torch.bool)
    schedule[1::2, 2] = False
    schedule[3:, 3] = False
    calls = count_conv_calls(model)
    with scheduled(model, blocks, schedule) as on_step:
        skipped = diffusion.sample(model, 4, 2, torch.Generator().manual_seed(1), on_step=on_step)
    full = diffusion.sample(model, 4, 2, torch.Generator().manual_seed(1))
    runs = {name: 2 * (int(schedule[:, j].sum()) + STEPS) for j, name in enumerate(BLOCK_NAMES)}
    assert calls == runs  # two batches gated, then the same two batches in full
    assert not torch.equal(skipped, full)


def test_context_restores_forward_even_after_an_error(model):
    blocks = TinyBackbone().blocks(model)
    own_forward = model.mid_block.forward
    model.out_blocks[0].forward = own = lambda h, temb: h[:, :8]
    with pytest.raises(RuntimeError, match="boom"):
        with scheduled(model, blocks, torch.ones(STEPS, 5, dtype=torch.bool)):
            assert model.mid_block.forward != own_forward
            raise RuntimeError("boom")
    assert "forward" not in model.mid_block.__dict__
    assert model.mid_block.forward == own_forward
    assert model.out_blocks[0].forward is own


def test_invalid_schedules_are_rejected(model):
    blocks = TinyBackbone().blocks(model)
    first_step_skips = torch.ones(STEPS, 5, dtype=torch.bool)
    first_step_skips[0, 2] = False
    bad = [first_step_skips, torch.ones(STEPS, 4, dtype=torch.bool), torch.ones(STEPS, 5)]
    for schedule in bad:
        with pytest.raises(ValueError):
            with scheduled(model, blocks, schedule):
                pass
    with pytest.raises(ValueError, match="not part of the model"):
        with scheduled(TinyUNet(), blocks, torch.ones(STEPS, 5, dtype=torch.bool)):
            pass
    assert all("forward" not in block.__dict__ for _, block in blocks)


def test_no_schedule_yields_no_callback(model):
    with scheduled(model, TinyBackbone().blocks(model), None) as on_step:
        assert on_step is None


def test_kept_macs_ratio_counts_non_block_macs_at_every_step():
    keep = torch.tensor([[True, True], [False, True]])
    ratio = kept_macs_ratio(keep, torch.tensor([30.0, 50.0]), total_macs=100.0)
    assert ratio.item() == pytest.approx((2 * 20 + 30 + 100) / 200)


class UNetEps(nn.Module):
    def __init__(self):
        super().__init__()
        from diffusers import UNet2DModel

        self.unet = UNet2DModel(
            sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
            norm_num_groups=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8,
        )

    def forward(self, x, t):
        return self.unet(x, t).sample


def off(*indices: int, n: int = 5, both_sides: bool = False) -> list[bool]:
    """The cascaded keep row of ``n`` blocks whose ``indices`` reuse."""
    keep = torch.ones(n, dtype=torch.bool)
    keep[list(indices)] = False
    return cascade(keep, both_sides).tolist()


def test_cascade_takes_every_deeper_block_with_a_reusing_output_side_block():
    assert off(3) == [True, False, False, False, True]  # out_blocks.0 reuses: mid and in_blocks.1 are unused
    assert off(4) == [False] * 5  # the outermost output block reuses: nothing else is needed
    assert off(2) == [True, True, False, True, True]  # the middle alone
    assert off(1) == [True, False, True, True, True]  # an input-side block takes nothing with it
    assert off(2, n=4) == [True, False, False, True]  # no middle block: 2 pairs with 1
    soft = cascade(torch.tensor([[0.5, 0.9, 0.8, 0.7, 0.6]]))
    torch.testing.assert_close(soft, torch.tensor([[0.5 * 0.6, 0.9 * 0.7 * 0.6, 0.8 * 0.7 * 0.6, 0.7 * 0.6, 0.6]]))


def test_cascade_on_both_sides_takes_every_deeper_block_with_any_reusing_block():
    # in_blocks.1 reuses: mid and out_blocks.0 see stale inputs
    assert off(1, both_sides=True) == [True, False, False, False, True]
    assert off(0, both_sides=True) == [False] * 5
    assert off(3, both_sides=True) == [True, False, False, False, True]  # the output side cascades as before
    assert off(2, both_sides=True) == [True, True, False, True, True]
    soft = cascade(torch.tensor([[0.5, 0.9, 0.8, 0.7, 0.6]]), both_sides=True)
    torch.testing.assert_close(soft[0, 1], torch.tensor(0.9 * 0.5 * 0.7 * 0.6))


def test_cascade_on_a_flat_block_list_runs_a_suffix():
    keep = torch.ones(5, dtype=torch.bool)
    keep[2] = False  # block 2 hands on its cached output: blocks 0 and 1 would only feed it
    assert cascade(keep, u_shaped=False).tolist() == [False, False, False, True, True]
    keep[:] = True
    keep[0] = False  # the first block alone takes nothing with it
    assert cascade(keep, u_shaped=False).tolist() == [False, True, True, True, True]
    assert cascade(keep, both_sides=True, u_shaped=False).tolist() == [False, True, True, True, True]
    soft = cascade(torch.tensor([[0.5, 0.9, 0.8]]), u_shaped=False)
    torch.testing.assert_close(soft, torch.tensor([[0.5 * 0.9 * 0.8, 0.9 * 0.8, 0.8]]))


def test_diffusers_unet_blocks_can_be_skipped():
    model = UNetEps().eval()
    unet = model.unet
    blocks = [(f"unet.down_blocks.{i}", b) for i, b in enumerate(unet.down_blocks)]
    blocks += [("unet.mid_block", unet.mid_block)] + [(f"unet.up_blocks.{i}", b) for i, b in enumerate(unet.up_blocks)]
    diffusion = Diffusion(IMAGE, STEPS)
    keys = list(model.state_dict())
    full = diffusion.sample(model, 2, 2, torch.Generator().manual_seed(0))
    with scheduled(model, blocks, torch.ones(STEPS, 5, dtype=torch.bool)) as on_step:
        same = diffusion.sample(model, 2, 2, torch.Generator().manual_seed(0), on_step=on_step)
        assert list(model.state_dict()) == keys
    schedule = torch.ones(STEPS, 5, dtype=torch.bool)
    schedule[1::2, 1:4] = False  # the inner down block (tuple output), the mid block and the inner up block
    with scheduled(model, blocks, schedule) as on_step:
        skipped = diffusion.sample(model, 2, 2, torch.Generator().manual_seed(0), on_step=on_step)
    assert torch.equal(full, same)
    assert not torch.equal(full, skipped) and torch.isfinite(skipped).all()
