"""What every baseline trojan detector returns, and the parts they share.

Neural Cleanse and ABS both reverse-engineer a trigger of the same shape, a mask
m (H, W) and a pattern p: x' = (1 - m) x + m p, with m and p kept in [0, 1]
through (tanh + 1) / 2 as in Wang et al. (2019). ``MaskedTrigger`` is that one
parametrisation; ``DetectorInputs`` checks the model and the clean images once
with the same checks as ``tg.scan`` and pushes every batch through the project's
ScoreOracle, so NaN outputs and shape mistakes get tailguard's errors and model
calls are counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ...oracle import ScoreOracle, eval_mode
from ...scan.inputs import check_images, check_labels, clean_outputs
from ...specs import ClassIs


@dataclass(frozen=True)
class DetectorVerdict:
    """One detector's judgement of one model."""

    score: float  # larger = more likely trojaned
    target: int | None  # suspected target class
    trigger_mask: Tensor | None  # (H, W) recovered trigger area, values in [0, 1]
    seconds: float
    details: dict[str, object] = field(default_factory=dict)


class Stopwatch:
    """Wall and CPU seconds since it was made: on a shared machine the two differ a lot."""

    def __init__(self) -> None:
        self.wall_start, self.cpu_start = time.perf_counter(), time.process_time()

    def wall(self) -> float:
        return time.perf_counter() - self.wall_start

    def cpu(self) -> float:
        return time.process_time() - self.cpu_start


class DetectorInputs:
    """A model and its clean images, checked, with the labels each image counts as.

    ``labels`` default to the model's own predictions on the clean images (a
    detector that is given none cannot do better).
    """

    def __init__(self, model: nn.Module, images: object, labels: object = None):
        self.model = model
        clean = check_images(images)
        logits, self.n_classes = clean_outputs(model, clean)
        self.images = clean.float()
        self.labels = logits.argmax(1) if labels is None else check_labels(labels, len(clean), self.n_classes)
        self.oracle = ScoreOracle.for_model(model, ClassIs(0))

    def logits(self, x: Tensor) -> Tensor:
        """Model outputs (n, classes) for x (n, *image shape), with autograd left on."""
        return self.oracle.outputs(x)

    @property
    def mask_shape(self) -> tuple[int, int]:
        return (int(self.images.shape[-2]), int(self.images.shape[-1]))

    @property
    def n_calls(self) -> int:
        """Model calls of the search, the clean images' first pass included."""
        return self.oracle.n_calls + len(self.images)

    def not_of(self, target: int) -> Tensor:
        """The clean images whose label is not ``target``: those a trigger for it must flip."""
        return self.images[self.labels != target]


class MaskedTrigger(nn.Module):
    """x -> (1 - m) x + m p with mask m (H, W) and pattern p (image shape) in [0, 1] via tanh."""

    def __init__(self, image_shape: tuple[int, ...], generator: torch.Generator):
        super().__init__()
        h, w = image_shape[-2:]
        self.mask_logits = nn.Parameter(0.1 * torch.randn(h, w, generator=generator) - 1.0)
        self.pattern_logits = nn.Parameter(0.5 * torch.randn(*image_shape, generator=generator))

    def mask(self) -> Tensor:
        return (torch.tanh(self.mask_logits) + 1) / 2

    def pattern(self) -> Tensor:
        return (torch.tanh(self.pattern_logits) + 1) / 2

    def forward(self, x: Tensor) -> Tensor:
        m = self.mask()
        if x.dim() == 4:  # (N, C, H, W): one mask for every channel
            m = m.unsqueeze(0)
        return (1 - m) * x + m * self.pattern()


def descend(optimizer: torch.optim.Optimizer, loss: Tensor) -> None:
    """One step on the optimizer's own parameters; the model's gradients are never touched."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for p, g in zip(params, torch.autograd.grad(loss, params), strict=True):
        p.grad = g
    optimizer.step()


def flip_rate(inputs: DetectorInputs, trigger: MaskedTrigger, target: int) -> float:
    """Fraction of the non-target clean images the trigger sends to ``target``."""
    with torch.no_grad(), eval_mode(inputs.model):
        x = inputs.not_of(target)
        return float((inputs.logits(trigger(x)).argmax(1) == target).float().mean())
