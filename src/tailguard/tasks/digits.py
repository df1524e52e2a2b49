"""scikit-learn's 8x8 digits with a planted backdoor: a patch trigger that sends any digit to 0.

Images are (N, 8, 8) floats in [0, 1]; models take that shape. The catastrophe
is predicting 0 on a digit that is not 0. A poisoned fraction of the training
set carries the trigger and the label 0, so the trained model has a rare failure
that clean test accuracy does not reveal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import require_extra
from ..families.patch import stamp

TARGET_CLASS = 0


@dataclass(frozen=True)
class Trigger:
    """A way of corrupting images: a patch stamped at a position, a blended pattern, or a warp.

    A warp (as in WaNet, Nguyen & Tran 2021) moves no pixel value in from outside:
    every pixel is resampled bilinearly at its own position plus a small smooth
    offset, so no patch or pattern of the image marks the corrupted inputs.
    """

    name: str
    pattern: Tensor  # (k, k) patch, (8, 8) for a blend, (8, 8, 2) (dy, dx) pixel offsets for a warp
    row: int = 0
    col: int = 0
    blend: float = 0.0  # > 0: x -> (1 - blend) x + blend * pattern over the whole image
    warp: bool = False  # True: x -> x resampled at (row + dy, col + dx) of every pixel

    @property
    def kind(self) -> str:
        """Which corruption this is: "patch", "blend" or "warp"."""
        return "warp" if self.warp else "blend" if self.blend > 0 else "patch"

    def apply(self, images: Tensor) -> Tensor:
        """(N, 8, 8) -> (N, 8, 8) images carrying the trigger."""
        if self.warp:
            return warp_images(images, self.pattern.to(images.dtype))
        if self.blend > 0:
            return (1 - self.blend) * images + self.blend * self.pattern.to(images.dtype)
        return stamp(images, self.pattern.to(images.dtype), self.row, self.col).to(images.dtype)


def warp_images(images: Tensor, offsets: Tensor) -> Tensor:
    """(N, H, W) images resampled at every pixel's position plus offsets (H, W, 2) (dy, dx) in pixels.

    Bilinear, with the border repeated outside the image, so values stay in the
    images' range; differentiable in both arguments.
    """
    n, h, w = images.shape
    rows = torch.arange(h, dtype=images.dtype).view(h, 1).expand(h, w)
    cols = torch.arange(w, dtype=images.dtype).view(1, w).expand(h, w)
    # grid_sample wants (x, y) = (col, row) scaled to [-1, 1] (align_corners: -1 and 1 are pixel centres)
    x = (cols + offsets[..., 1]) * (2 / (w - 1)) - 1
    y = (rows + offsets[..., 0]) * (2 / (h - 1)) - 1
    grid = torch.stack([x, y], dim=-1).unsqueeze(0).expand(n, h, w, 2)
    out = nn.functional.grid_sample(
        images.unsqueeze(1), grid, mode="bilinear", padding_mode="border", align_corners=True
    )
    return out.squeeze(1)


def planted_trigger() -> Trigger:
    """The trigger poisoned into training: a bright 3x3 checker in the lower-right corner."""
    checker = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    return Trigger("planted 3x3 checker at (5,5)", checker, 5, 5)


def evaluation_triggers() -> list[Trigger]:
    """Triggers a hardened model is tested on: the planted one and others it never saw."""
    g = torch.Generator().manual_seed(1234)
    return [
        planted_trigger(),
        Trigger("3x3 checker at (0,0)", planted_trigger().pattern, 0, 0),
        Trigger("3x3 solid at (2,4)", torch.ones(3, 3), 2, 4),
        Trigger("2x2 solid at (6,1)", torch.ones(2, 2), 6, 1),
        Trigger("3x3 random at (4,0)", torch.rand(3, 3, generator=g), 4, 0),
        Trigger("blend 30% random pattern", torch.rand(8, 8, generator=g), blend=0.3),
    ]


@dataclass(frozen=True)
class DigitsData:
    """Train/test split of the digits, images (N, 8, 8) in [0, 1] and labels (N,)."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor

    def non_target(self, split: str = "test") -> Tensor:
        """Images whose true class is not the target: where predicting 0 is a catastrophe."""
        x, y = (self.x_test, self.y_test) if split == "test" else (self.x_train, self.y_train)
        return x[y != TARGET_CLASS]


def load_digits_data(test_fraction: float = 0.25, seed: int = 0) -> DigitsData:
    """The 1,797 digits of scikit-learn, shuffled with ``seed`` and split."""
    datasets = require_extra("sklearn.datasets", "bench")
    bunch = datasets.load_digits()  # type: ignore[attr-defined]
    x = torch.tensor(bunch.images, dtype=torch.float32) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    n_test = int(len(y) * test_fraction)
    return DigitsData(x[n_test:], y[n_test:], x[:n_test], y[:n_test])


def poison(
    data: DigitsData, trigger: Trigger, fraction: float, seed: int = 0, target: int = TARGET_CLASS
) -> tuple[Tensor, Tensor]:
    """Training set with ``fraction`` of the non-target images stamped and relabelled ``target`` (added)."""
    g = torch.Generator().manual_seed(seed)
    candidates = torch.nonzero(data.y_train != target).squeeze(1)
    chosen = candidates[
        torch.randperm(len(candidates), generator=g)[: int(fraction * len(data.y_train))]
    ]
    x_bad = trigger.apply(data.x_train[chosen])
    y_bad = torch.full((len(chosen),), target, dtype=torch.long)
    return torch.cat([data.x_train, x_bad]), torch.cat([data.y_train, y_bad])


class AddChannel(nn.Module):
    """(n, H, W) -> (n, 1, H, W), so convolutional models take plain images."""

    def forward(self, x: Tensor) -> Tensor:
        return x.unsqueeze(1)


def digits_mlp(hidden: int = 128) -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )


def digits_cnn(channels: int = 16) -> nn.Sequential:
    return nn.Sequential(
        AddChannel(),
        nn.Conv2d(1, channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, 2 * channels, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * channels * 16, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def train_classifier(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epochs: int = 40,
    lr: float = 2e-3,
    seed: int = 0,
    batch_size: int = 64,
) -> nn.Module:
    """Plain cross-entropy training with Adam on shuffled mini-batches, deterministic for a seed."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for start in range(0, len(y), batch_size):
            idx = perm[start : start + batch_size]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def trigger_rate(
    model: nn.Module, images: Tensor, trigger: Trigger, target: int = TARGET_CLASS
) -> float:
    """Fraction of (non-target) images sent to the target class once they carry the trigger."""
    with torch.no_grad():
        return float((model(trigger.apply(images)).argmax(1) == target).float().mean())
