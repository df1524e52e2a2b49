"""Neural Cleanse (Wang et al., IEEE S&P 2019), written from the paper.

For every class t, find the smallest mask (L1) that, with some pattern, sends
the clean images of the other classes to t: minimise
CE(f((1 - m) x + m p), t) + lambda * |m|_1. lambda starts small and adapts: it
grows by ``cost_multiplier`` after ``patience`` epochs in a row in which at least
``success_threshold`` of the images flip, and shrinks by ``cost_multiplier **
1.5`` after ``patience`` epochs in a row in which they do not. A backdoor's
target needs a far smaller mask than the other classes, so the model's score is
the anomaly index of the smallest norm: (median - min) / (1.4826 * MAD); the
paper flags a model above 2.

Settings follow the authors' published defaults (Adam, lr 0.1, betas (0.5, 0.9),
multiplier 1.5, patience 5 epochs, success threshold 0.99, early stop once lambda
has moved both ways), with two changes for 64-pixel images: the initial cost is
1e-2 instead of 1e-3 (a mask's L1 is about 16x smaller than on 32x32 images, so
lambda would spend most epochs climbing), and at most 30 epochs of 64-image
batches with 10 stale epochs to stop. A class whose images never flip reports
the whole image (H * W) as its norm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...errors import InvalidArgumentError
from ...oracle import eval_mode
from .verdict import DetectorInputs, DetectorVerdict, MaskedTrigger, Stopwatch, descend

MAD_CONSISTENCY = 1.4826  # MAD of a normal sample times this estimates its std
FLAG_ABOVE = 2.0


@dataclass(frozen=True)
class NeuralCleanseSettings:
    """The authors' optimiser settings; ``epochs`` passes over the images in ``batch_size`` batches.

    Optimisation for a class stops early once lambda has both risen and fallen
    and the best norm has not shrunk by 1 % for ``early_stop_patience`` epochs,
    as in the authors' code.
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.1
    init_cost: float = 1e-2
    cost_multiplier: float = 1.5
    patience: int = 5
    early_stop_patience: int = 10
    success_threshold: float = 0.99

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience", "early_stop_patience"):
            if getattr(self, name) < 1:
                raise InvalidArgumentError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not (self.lr > 0 and self.init_cost > 0 and self.cost_multiplier > 1):
            raise InvalidArgumentError("lr and init_cost must be > 0 and cost_multiplier > 1")
        if not 0 < self.success_threshold <= 1:
            raise InvalidArgumentError("success_threshold must be in (0, 1]")


@dataclass(frozen=True)
class ClassTrigger:
    """The smallest trigger found for one class."""

    norm: float  # L1 of the mask; H * W when no mask reached the success threshold
    mask: Tensor  # (H, W)
    flip_rate: float  # over the epoch in which this mask was the best


def reverse_engineer(
    inputs: DetectorInputs, target: int, settings: NeuralCleanseSettings, generator: torch.Generator
) -> ClassTrigger:
    """Neural Cleanse's optimisation for one class, keeping the smallest mask that flips enough."""
    x = inputs.not_of(target)
    trigger = MaskedTrigger(tuple(x.shape[1:]), generator)
    opt = torch.optim.Adam(trigger.parameters(), lr=settings.lr, betas=(0.5, 0.9))
    cost, above, below, raised, lowered, stale = settings.init_cost, 0, 0, False, False, 0
    h, w = inputs.mask_shape
    best = ClassTrigger(float(h * w), torch.ones(h, w), 0.0)
    for _ in range(settings.epochs):
        hits = 0
        for batch in torch.randperm(len(x), generator=generator).split(settings.batch_size):
            logits = inputs.logits(trigger(x[batch]))
            goal = torch.full((len(batch),), target, dtype=torch.long)
            descend(opt, nn.functional.cross_entropy(logits, goal) + cost * trigger.mask().sum())
            hits += int((logits.argmax(1) == target).sum())
        success = hits / len(x)
        norm = float(trigger.mask().detach().sum())
        stale += 1
        if success >= settings.success_threshold and norm < best.norm:
            stale = 0 if norm < 0.99 * best.norm else stale
            best = ClassTrigger(norm, trigger.mask().detach().clone(), success)
        above, below = (above + 1, 0) if success >= settings.success_threshold else (0, below + 1)
        if above >= settings.patience:
            cost, above, raised = cost * settings.cost_multiplier, 0, True
        elif below >= settings.patience:
            cost, below, lowered = cost / settings.cost_multiplier**1.5, 0, True
        if raised and lowered and stale >= settings.early_stop_patience:
            break
    return best


def anomaly_index(norms: Tensor) -> float:
    """(median - min) / (1.4826 * MAD) of the per-class norms; 0 when they are all equal.

    Medians of an even count are the mean of the two middle values (torch's
    ``median`` would take the lower one and can make the MAD 0).
    """
    med = torch.quantile(norms, 0.5)
    mad = MAD_CONSISTENCY * torch.quantile((norms - med).abs(), 0.5)
    gap = float(med - norms.min())
    if gap == 0:
        return 0.0
    return gap / float(mad) if mad > 0 else float("inf")


def neural_cleanse(
    model: nn.Module,
    images: Tensor,
    labels: Tensor | None = None,
    seed: int = 0,
    settings: NeuralCleanseSettings | None = None,
) -> DetectorVerdict:
    """Neural Cleanse on a classifier of images (N, H, W) or (N, C, H, W) in [0, 1].

    score: the anomaly index of the smallest class mask norm (> 2: flagged);
    target: that class; trigger_mask: its mask (H, W).
    """
    settings = settings or NeuralCleanseSettings()
    clock = Stopwatch()
    inputs = DetectorInputs(model, images, labels)
    generator = torch.Generator().manual_seed(seed)
    with eval_mode(model):
        found = [reverse_engineer(inputs, t, settings, generator) for t in range(inputs.n_classes)]
    norms = torch.tensor([f.norm for f in found], dtype=torch.float64)
    target = int(norms.argmin())
    score = anomaly_index(norms)
    return DetectorVerdict(
        score=score,
        target=target,
        trigger_mask=found[target].mask,
        seconds=clock.wall(),
        details={
            "norms": norms.tolist(),
            "flip_rates": [f.flip_rate for f in found],
            "flagged": score > FLAG_ABOVE,
            "model_calls": inputs.n_calls,
            "cpu_seconds": clock.cpu(),
            "settings": settings,
        },
    )
