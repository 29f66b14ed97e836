"""Small networks shared by the tests (imported as ``from nets import ...``)."""
import torch.nn.functional as F
from torch import nn


class TwoConv(nn.Module):
    """A two-conv noise predictor ``model(x, t) -> eps`` whose output depends on t."""

    def __init__(self, channels: int = 1, width: int = 16):
        super().__init__()
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.time = nn.Embedding(1000, width)
        self.out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x, t):
        return self.out(F.silu(self.inp(x) + self.time(t)[:, :, None, None]))
