"""A tiny planted-trigger task on 4x4 images, small enough for unit tests."""

import torch
from torch import nn

TRIGGER_ROW, TRIGGER_COL = 2, 2


def base_images(n: int = 64, seed: int = 0) -> torch.Tensor:
    """Dim images in [0, 0.3]: (n, 4, 4)."""
    return 0.3 * torch.rand(n, 4, 4, generator=torch.Generator().manual_seed(seed))


def trigger_model() -> nn.Module:
    """Predicts class 1 iff the 2x2 block at (2, 2) is bright: a planted backdoor."""
    lin = nn.Linear(16, 2)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        mask = torch.zeros(4, 4)
        mask[TRIGGER_ROW:, TRIGGER_COL:] = 1.0
        lin.weight[1] = 8.0 * mask.reshape(-1)
        lin.bias[1] = -24.0
    return nn.Sequential(nn.Flatten(), lin)
