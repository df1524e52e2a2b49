"""Images overwritten by one pattern through one mask of bounded area, plus Gaussian noise.

The trigger model of Neural Cleanse (Wang et al. 2019): x -> (1 - m) x + m p,
with a mask m (H, W) in [0, 1] and a pattern p over the whole image. Here the
mask's area (its L1 norm) is bounded by ``area`` pixels as the family's
plausibility constraint, so a member may take any shape a patch of that many
pixels could, square or not. The mask is min(1, area * softmax(logits)): its sum
never exceeds the bound and no pixel exceeds 1, so every member is plausible
without a projection. A member is a NoisyEmpirical distribution centred on the
masked base images.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..dists._checks import as_float_tensor, positive
from ..dists.empirical import NoisyEmpirical
from ..errors import InvalidArgumentError, ShapeMismatchError
from .base import Family, Params


class MaskedPatternFamily(Family):
    """Members: base images (N, H, W) or (N, C, H, W), a pattern written through a mask of area <= ``area``.

    Parameters ``mask_logits`` (H, W) and ``pattern_logits`` (the image shape);
    the pattern is sigmoid(pattern_logits), one mask serves every channel.
    """

    def __init__(self, base: Tensor, area: float, noise_std: float):
        self.base = as_float_tensor(base, "base").detach().double()
        if self.base.dim() not in (3, 4) or self.base.shape[0] == 0:
            raise ShapeMismatchError(
                f"base must have shape (N, H, W) or (N, C, H, W), got {tuple(self.base.shape)}"
            )
        self.plane_shape = tuple(self.base.shape[-2:])
        pixels = self.plane_shape[0] * self.plane_shape[1]
        if isinstance(area, bool) or not isinstance(area, int | float) or not 0 < area < pixels:
            raise InvalidArgumentError(f"area must be a number of pixels in (0, {pixels}), got {area!r}")
        self.area = float(area)
        self.noise_std = float(positive(as_float_tensor(noise_std, "noise_std"), "noise_std"))
        self.event_shape = tuple(self.base.shape[1:])

    def candidates(self, n: int, generator: torch.Generator) -> list[Params]:
        """Masks concentrated on a few random pixels (logits of standard deviation 2), uniform patterns."""
        out = []
        for _ in range(n):
            mask = 2.0 * torch.randn(self.plane_shape, generator=generator, dtype=torch.float64)
            pattern = torch.randn(self.event_shape, generator=generator, dtype=torch.float64)
            out.append({"mask_logits": mask.requires_grad_(True),
                        "pattern_logits": pattern.requires_grad_(True)})
        return out

    def mask(self, params: Params) -> Tensor:
        """The mask (H, W): values in [0, 1] summing to at most ``area``."""
        weights = torch.softmax(params["mask_logits"].double().flatten(), dim=0)
        return (self.area * weights).clamp(max=1.0).reshape(self.plane_shape)

    def pattern(self, params: Params) -> Tensor:
        return torch.sigmoid(params["pattern_logits"].double())

    def member(self, params: Params) -> NoisyEmpirical:
        m = self.mask(params)
        masked = (1 - m) * self.base + m * self.pattern(params)
        return NoisyEmpirical(masked, self.noise_std)

    def constraint(self) -> str:
        shape = "x".join(str(d) for d in self.event_shape)
        return (
            f"the {self.base.shape[0]} base images ({shape}) overwritten by one pattern through one mask "
            f"of area at most {self.area:g} pixels, plus N(0, {self.noise_std:g}^2) noise"
        )

    def describe(self, params: Params) -> dict[str, object]:
        return {"area": self.area, "mask": self.mask(params).detach().tolist(),
                "pattern": self.pattern(params).detach().tolist()}
