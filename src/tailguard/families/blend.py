"""Images blended with one full-image pattern at a fixed opacity, plus Gaussian noise.

This is where a blended trigger lives (Chen et al. 2017, "Targeted backdoor
attacks on deep learning systems using data poisoning"): every input x becomes
(1 - alpha) x + alpha P for one pattern P over the whole image. Unlike a patch it
touches every pixel a little; unlike a universal perturbation its change depends
on the image (it pulls every pixel towards P). A member is a NoisyEmpirical
distribution centred on the blended base images, so it has an exact density and
every estimator that handles mixtures applies to it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..dists._checks import as_float_tensor, positive
from ..dists.empirical import NoisyEmpirical
from ..errors import InvalidArgumentError, ShapeMismatchError
from .base import Family, Params


class BlendFamily(Family):
    """Members: base images (N, *shape) blended with one pattern (*shape) of values in [0, 1].

    Parameter ``logits`` (*shape); the pattern is sigmoid(logits), so blended
    pixels stay in the base images' [0, 1] range. ``alpha`` is the opacity, fixed
    for the family: it is the plausibility bound (how visible the pattern may be).
    """

    def __init__(self, base: Tensor, alpha: float, noise_std: float):
        self.base = as_float_tensor(base, "base").detach().double()
        if self.base.dim() < 2 or self.base.shape[0] == 0:
            raise ShapeMismatchError(
                f"base must have shape (N, *shape) with N >= 1, got {tuple(self.base.shape)}"
            )
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 1:
            raise InvalidArgumentError(f"alpha must be a number in (0, 1), got {alpha!r}")
        self.alpha = float(alpha)
        self.noise_std = float(positive(as_float_tensor(noise_std, "noise_std"), "noise_std"))
        self.event_shape = tuple(self.base.shape[1:])

    def params_at(self, pattern: Tensor) -> Params:
        """Parameters (a leaf requiring grad) for a pattern of values in [0, 1] (*shape)."""
        v = pattern.detach().double().reshape(self.event_shape).clamp(1e-4, 1 - 1e-4)
        return {"logits": (torch.log(v) - torch.log1p(-v)).requires_grad_(True)}

    def candidates(self, n: int, generator: torch.Generator) -> list[Params]:
        """Patterns of independent uniform pixels."""
        return [
            self.params_at(torch.rand(self.event_shape, generator=generator, dtype=torch.float64))
            for _ in range(n)
        ]

    def pattern(self, params: Params) -> Tensor:
        """The blended pattern (*shape), differentiable in the logits."""
        return torch.sigmoid(params["logits"].double())

    def member(self, params: Params) -> NoisyEmpirical:
        blended = (1 - self.alpha) * self.base + self.alpha * self.pattern(params)
        return NoisyEmpirical(blended, self.noise_std)

    def constraint(self) -> str:
        shape = "x".join(str(d) for d in self.event_shape)
        return (
            f"the {self.base.shape[0]} base images blended at opacity {self.alpha:g} with one "
            f"{shape} pattern of values in [0, 1], plus N(0, {self.noise_std:g}^2) noise"
        )

    def describe(self, params: Params) -> dict[str, object]:
        return {"alpha": self.alpha, "pattern": self.pattern(params).detach().tolist()}
