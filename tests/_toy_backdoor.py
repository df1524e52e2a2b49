"""A tiny planted-trigger task on 4x4 images, small enough for unit tests."""

import torch
from torch import nn

import tailguard as tg

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


def toy_task():
    """((x (128, 4, 4), y (128,) all class 0), a 2x2 PatchFamily over dim images)."""
    x = base_images(128, seed=1)
    y = torch.zeros(128, dtype=torch.long)
    family = tg.PatchFamily(base_images(64), patch_size=2, noise_std=0.05)
    return (x, y), family


def flat_params(model: nn.Module) -> torch.Tensor:
    """All parameters of a model as one flat tensor (for exact-equality checks)."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])
