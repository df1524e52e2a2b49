"""Images with channels (N, C, H, W) with one square patch of any colour stamped anywhere, plus noise.

The same family as ``PatchFamily`` for images that have channels: a trigger
patch on a colour image has a value of its own in every channel, so the patch
parameters are (C, k, k) instead of (k, k). Positions, patch values, the
parametrisation through sigmoid(logits) and the description are PatchFamily's;
what differs is only the patch's shape and where it is written, which goes
through ``stamp`` on the channels-last view of the images.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..dists._checks import as_float_tensor
from ..dists.empirical import NoisyEmpirical
from ..errors import ShapeMismatchError
from .base import Params
from .patch import PatchFamily, stamp


class ChannelPatchFamily(PatchFamily):
    """Members: base images (N, C, H, W) with one k x k patch of values in [0, 1] (C, k, k) at one place."""

    def __init__(self, base: Tensor, patch_size: int, noise_std: float):
        images = as_float_tensor(base, "base").detach().double()
        if images.dim() != 4 or images.shape[0] == 0:
            raise ShapeMismatchError(f"base must have shape (N, C, H, W), got {tuple(images.shape)}")
        # PatchFamily checks the patch size against (H, W) and the noise on one channel's images
        super().__init__(images[:, 0], patch_size, noise_std)
        self.plane_shape = self.event_shape  # (H, W)
        self.base = images
        self.event_shape = tuple(images.shape[1:])

    @property
    def positions(self) -> list[tuple[int, int]]:
        h, w = self.plane_shape
        k = self.patch_size
        return [(r, c) for r in range(h - k + 1) for c in range(w - k + 1)]

    def candidates(self, n: int, generator: torch.Generator) -> list[Params]:
        """Every position in turn (cycling), each with random patch values in every channel."""
        positions, k, channels = self.positions, self.patch_size, self.event_shape[0]
        return [
            self.params_at(*positions[i % len(positions)],
                           torch.rand(channels, k, k, generator=generator, dtype=torch.float64))
            for i in range(n)
        ]

    def member(self, params: Params) -> NoisyEmpirical:
        # channels last: (N, H, W, C) takes a (k, k, C) patch at (row, col) through stamp
        patch = self.patch_values(params).permute(1, 2, 0)
        stamped = stamp(self.base.permute(0, 2, 3, 1), patch, int(params["row"]), int(params["col"]))
        return NoisyEmpirical(stamped.permute(0, 3, 1, 2).contiguous(), self.noise_std)

    def constraint(self) -> str:
        c, h, w = self.event_shape
        k = self.patch_size
        return (
            f"base images with one {k}x{k} patch of values in [0, 1] in each of {c} channels at any of "
            f"{len(self.positions)} positions in {h}x{w}, plus N(0, {self.noise_std:g}^2) noise"
        )
