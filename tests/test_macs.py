import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch.nn.utils import parametrize

from benchmark.api import NMPattern
from benchmark.metrics.macs import block_macs, count_macs, sparse_macs, trajectory_macs

TOKENS, HEADS, HEAD_DIM = 6, 2, 8


class ToyAttention(nn.Module):
    """Linear(8, 16) -> 2-head self-attention over 6 tokens -> 1x1 conv over the heads."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, HEADS * HEAD_DIM, bias=False)
        self.conv = nn.Conv2d(HEADS, 4, kernel_size=1)

    def forward(self, x):
        heads = self.proj(x).view(len(x), TOKENS, HEADS, HEAD_DIM).transpose(1, 2)
        mixed = F.scaled_dot_product_attention(heads, heads, heads)
        return self.conv(mixed)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = ToyAttention()
        self.head = nn.Linear(HEAD_DIM, 1, bias=False)

    def forward(self, x):
        return self.head(self.attn(x))


# Per sample, by hand:
PROJ = TOKENS * 8 * 16  # 768
SDPA = HEADS * TOKENS * TOKENS * (HEAD_DIM + HEAD_DIM)  # QK^T + AV = 1152
CONV = (HEADS * 4 + 4) * TOKENS * HEAD_DIM  # weights + bias at 48 output positions = 576
HEAD = 4 * TOKENS * HEAD_DIM * 1  # 192


def toy_inputs(batch=2):
    return (torch.randn(batch, TOKENS, 8),)


def test_toy_model_matches_hand_count():
    report = count_macs(Toy(), toy_inputs())
    assert report.per_module == {"attn": SDPA, "attn.proj": PROJ, "attn.conv": CONV, "head": HEAD}
    assert report.total == PROJ + SDPA + CONV + HEAD
    assert report.params == sum(p.numel() for p in Toy().parameters())
    assert block_macs(report, ["attn", "head"]) == [PROJ + SDPA + CONV, HEAD]


def test_parametrized_layers_are_counted_like_their_base_class():
    class Halve(nn.Module):
        def forward(self, weight):
            return weight / 2

    model = Toy()
    parametrize.register_parametrization(model.attn.proj, "weight", Halve())
    assert type(model.attn.proj) is not nn.Linear
    assert count_macs(model, toy_inputs()).per_module["attn.proj"] == PROJ


def test_count_leaves_the_model_unchanged():
    model = Toy().train()
    count_macs(model, toy_inputs())
    assert model.training
    assert not model._forward_hooks and not model.attn.proj._forward_pre_hooks


def test_sparse_macs_halves_masked_layers():
    report = count_macs(Toy(), toy_inputs())
    masks = {"attn.proj": torch.ones(16, 8, dtype=torch.bool), "attn.conv": torch.ones(4, 2, 1, 1, dtype=torch.bool)}
    assert sparse_macs(report, masks, NMPattern(2, 4)) == report.total - (PROJ + CONV) / 2
    assert sparse_macs(report, {}, None) == report.total
    with pytest.raises(ValueError, match="nope"):
        sparse_macs(report, {"nope": torch.ones(1)}, NMPattern(2, 4))


def test_trajectory_macs_removes_skipped_blocks():
    report = count_macs(Toy(), toy_inputs())
    blocks = ["attn", "head"]
    attn_cost, head_cost = block_macs(report, blocks)
    always = torch.ones(4, 2, dtype=torch.bool)
    assert trajectory_macs(report, blocks, always) == report.total
    half_skipped = always.clone()
    half_skipped[::2, 0] = False
    assert trajectory_macs(report, blocks, half_skipped) == pytest.approx(report.total - attn_cost / 2)
    masks = {"head": torch.ones(1, 8, dtype=torch.bool)}
    expected = report.total - attn_cost / 2 - head_cost / 2
    assert trajectory_macs(report, blocks, half_skipped, masks, NMPattern(2, 4)) == pytest.approx(expected)
    with pytest.raises(ValueError, match="3 blocks"):
        trajectory_macs(report, blocks + ["attn.conv"], always)


class DDPMWrapper(nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, t):
        return self.unet(x, t).sample


@pytest.fixture(scope="module")
def ddpm_cifar10():
    from diffusers import UNet2DModel

    unet = UNet2DModel(  # the google/ddpm-cifar10-32 architecture; attention at 16x16 (and in the mid block)
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        norm_eps=1e-6,
        downsample_padding=0,
        flip_sin_to_cos=False,
        freq_shift=1,
    )
    return DDPMWrapper(unet).eval()


def test_ddpm_cifar10_macs(ddpm_cifar10):
    inputs = (torch.randn(2, 3, 32, 32), torch.tensor([10, 500]))
    report = count_macs(ddpm_cifar10, inputs)
    torch_pruning_macs, params = tp.utils.count_ops_and_params(ddpm_cifar10, inputs)
    assert torch_pruning_macs == pytest.approx(6.064e9, rel=1e-3)
    assert params == report.params == 35_746_307

    attention_layers = [name for name, m in ddpm_cifar10.named_modules() if type(m).__name__ == "Attention"]
    assert len(attention_layers) == 6  # 2 down + 3 up at 16x16, 1 in the mid block at 4x4
    channels = 256
    at_16 = (16 * 16) ** 2 * 2 * channels  # QK^T + AV over 256 tokens
    at_4 = (4 * 4) ** 2 * 2 * channels
    attention = sum(report.per_module[name] for name in attention_layers)
    assert attention == 5 * at_16 + at_4
    assert report.total == pytest.approx(torch_pruning_macs + attention, rel=1e-12)

    blocks = [f"unet.down_blocks.{i}" for i in range(4)] + ["unet.mid_block"]
    blocks += [f"unet.up_blocks.{i}" for i in range(4)]
    per_block = block_macs(report, blocks)
    assert all(cost > 0 for cost in per_block)
    assert sum(per_block) <= report.total
    assert per_block[1] > per_block[0]  # the 16x16 attention block costs more than the 32x32 plain one
