"""Images with a square patch of any values stamped anywhere, plus Gaussian noise.

This is the family a backdoor trigger lives in: the planted trigger is one
member, and so is every other k x k patch at every position. A member is a
NoisyEmpirical distribution centred on the stamped base images, so it has an
exact density and every estimator that handles mixtures applies to it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..dists._checks import as_float_tensor, positive
from ..dists.empirical import NoisyEmpirical
from ..errors import InvalidArgumentError, ShapeMismatchError
from .base import Family, Params


def stamp(images: Tensor, patch: Tensor, row: int, col: int) -> Tensor:
    """Copy of images (N, H, W) with patch (k, k) written at (row, col); differentiable in both."""
    k = patch.shape[0]
    out = images.clone().to(patch.dtype)
    out[:, row : row + k, col : col + k] = patch
    return out


class PatchFamily(Family):
    """Members: base images (N, H, W) with one k x k patch of values in [0, 1] at one position.

    Parameters: ``row``, ``col`` (long scalars) and ``logits`` (k, k); the patch
    values are sigmoid(logits), so every pixel stays in the images' [0, 1] range.
    """

    def __init__(self, base: Tensor, patch_size: int, noise_std: float):
        self.base = as_float_tensor(base, "base").detach().double()
        if self.base.dim() != 3 or self.base.shape[0] == 0:
            raise ShapeMismatchError(
                f"base must have shape (N, H, W), got {tuple(self.base.shape)}"
            )
        _, h, w = self.base.shape
        if not isinstance(patch_size, int) or not 1 <= patch_size <= min(h, w):
            raise InvalidArgumentError(
                f"patch_size must be an int in [1, {min(h, w)}], got {patch_size!r}"
            )
        self.patch_size = patch_size
        self.noise_std = float(positive(as_float_tensor(noise_std, "noise_std"), "noise_std"))
        self.event_shape = (h, w)

    @property
    def positions(self) -> list[tuple[int, int]]:
        h, w = self.event_shape
        k = self.patch_size
        return [(r, c) for r in range(h - k + 1) for c in range(w - k + 1)]

    def params_at(self, row: int, col: int, values: Tensor) -> Params:
        """Parameters for a given position and patch values in [0, 1] (k, k)."""
        v = values.double().clamp(1e-4, 1 - 1e-4)
        logits = torch.log(v) - torch.log1p(-v)
        return {
            "row": torch.tensor(row),
            "col": torch.tensor(col),
            "logits": logits.detach().clone().requires_grad_(True),
        }

    def candidates(self, n: int, generator: torch.Generator) -> list[Params]:
        """Every position in turn (cycling), each with random patch values."""
        positions = self.positions
        k = self.patch_size
        out = []
        for i in range(n):
            r, c = positions[i % len(positions)]
            values = torch.rand(k, k, generator=generator, dtype=torch.float64)
            out.append(self.params_at(r, c, values))
        return out

    def patch_values(self, params: Params) -> Tensor:
        return torch.sigmoid(params["logits"])

    def member(self, params: Params) -> NoisyEmpirical:
        row, col = int(params["row"]), int(params["col"])
        stamped = stamp(self.base, self.patch_values(params), row, col)
        return NoisyEmpirical(stamped, self.noise_std)

    def constraint(self) -> str:
        h, w = self.event_shape
        k = self.patch_size
        return (
            f"base images with one {k}x{k} patch of values in [0, 1] at any of "
            f"{len(self.positions)} positions in {h}x{w}, plus N(0, {self.noise_std:g}^2) noise"
        )

    def describe(self, params: Params) -> dict[str, object]:
        return {
            "row": int(params["row"]),
            "col": int(params["col"]),
            "patch": self.patch_values(params).detach().tolist(),
        }
