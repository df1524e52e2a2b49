"""Images resampled along one smooth displacement field of bounded size, plus Gaussian noise.

This is where a warping trigger lives (WaNet, Nguyen & Tran 2021, "WaNet --
imperceptible warping-based backdoor attack"): nothing is added to the image;
every pixel is read from its own position moved by a small offset, and the
offsets vary smoothly over the image. A member's field is a coarse grid of
offsets, upsampled bicubically to the image size and bounded by ``max_shift``
pixels through a tanh, so every member is plausible and the search is smooth.
A member is a NoisyEmpirical distribution centred on the warped base images.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..dists._checks import as_float_tensor, positive
from ..dists.empirical import NoisyEmpirical
from ..errors import InvalidArgumentError, ShapeMismatchError
from ..tasks.digits import warp_images
from .base import Family, Params


class WarpFamily(Family):
    """Members: base images (N, H, W) or (N, C, H, W) warped by one smooth field of at most ``max_shift`` px.

    Parameter ``coarse`` (2, grid, grid): the unbounded (dy, dx) offsets on a
    coarse grid; the field is max_shift * tanh(upsampled coarse), (H, W, 2). Every
    channel of an image moves along the same field, as in WaNet.
    """

    def __init__(self, base: Tensor, max_shift: float, noise_std: float, grid: int = 4):
        self.base = as_float_tensor(base, "base").detach().double()
        if self.base.dim() not in (3, 4) or self.base.shape[0] == 0 or min(self.base.shape[-2:]) < 2:
            raise ShapeMismatchError(
                f"base must have shape (N, H, W) or (N, C, H, W) with H, W >= 2, "
                f"got {tuple(self.base.shape)}"
            )
        if isinstance(max_shift, bool) or not isinstance(max_shift, int | float) or not 0 < max_shift < 1e3:
            raise InvalidArgumentError(f"max_shift must be a number of pixels > 0, got {max_shift!r}")
        if not isinstance(grid, int) or isinstance(grid, bool) or grid < 2:
            raise InvalidArgumentError(f"grid must be an int >= 2, got {grid!r}")
        self.max_shift = float(max_shift)
        self.grid = grid
        self.noise_std = float(positive(as_float_tensor(noise_std, "noise_std"), "noise_std"))
        self.event_shape = tuple(self.base.shape[1:])
        self.spatial_shape = tuple(self.base.shape[-2:])

    def candidates(self, n: int, generator: torch.Generator) -> list[Params]:
        """Coarse offsets of independent standard normal values (fields of about half the bound)."""
        return [
            {"coarse": torch.randn(2, self.grid, self.grid, generator=generator,
                                   dtype=torch.float64).requires_grad_(True)}
            for _ in range(n)
        ]

    def field(self, params: Params) -> Tensor:
        """The (dy, dx) offsets of every pixel (H, W, 2), differentiable in ``coarse``."""
        fine = nn.functional.interpolate(
            params["coarse"].double().unsqueeze(0), size=self.spatial_shape, mode="bicubic",
            align_corners=True,
        )
        return (self.max_shift * torch.tanh(fine[0])).permute(1, 2, 0)

    def member(self, params: Params) -> NoisyEmpirical:
        # every channel is resampled as an image of its own, along the one field
        flat = self.base.reshape(-1, *self.spatial_shape)
        warped = warp_images(flat, self.field(params)).reshape(self.base.shape)
        return NoisyEmpirical(warped, self.noise_std)

    def constraint(self) -> str:
        shape = "x".join(str(d) for d in self.event_shape)
        return (
            f"the {self.base.shape[0]} base images ({shape}) resampled along one smooth field of "
            f"offsets of at most {self.max_shift:g} pixels ({self.grid}x{self.grid} grid, "
            f"bicubic), plus N(0, {self.noise_std:g}^2) noise"
        )

    def describe(self, params: Params) -> dict[str, object]:
        offsets = self.field(params).detach()
        return {"max_shift": self.max_shift, "largest_offset": float(offsets.norm(dim=-1).max()),
                "field": offsets.tolist()}
