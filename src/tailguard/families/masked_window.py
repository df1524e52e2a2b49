"""A pattern written through a mask of bounded area that lies inside one small window.

A planted patch trigger is one fixed pattern in one small region of the image;
a natural class that an optimised mask reaches on a clean model (a stroke that
turns any digit into a 3) needs pixels spread over the digit's extent. This
family keeps MaskedPatternFamily's trigger model, x -> (1 - m) x + m p with the
mask's area bounded, and adds a bound on its extent: the mask is zero outside a
``window`` x ``window`` square at any place. So it holds every square patch of
side <= ``window`` whose area is within the bound, and the most telling
``area`` pixels of a larger square trigger, but not a stroke across the image.
The window's place is discrete and screened like a patch's position
(PatchFamily); the mask inside it and the pattern are optimised by gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InvalidArgumentError
from .base import Params
from .masked import MaskedPatternFamily


class WindowedMaskFamily(MaskedPatternFamily):
    """Members: base images (N, H, W) or (N, C, H, W), a pattern through a mask of area <= ``area``
    that is zero outside one ``window`` x ``window`` square.

    Parameters ``row``, ``col`` (long scalars: the window's top left corner),
    ``mask_logits`` (window, window) and ``pattern_logits`` (the image shape;
    only its pixels inside the window matter).
    """

    def __init__(self, base: Tensor, area: float, window: int, noise_std: float):
        super().__init__(base, area, noise_std)
        h, w = self.plane_shape
        if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= min(h, w):
            raise InvalidArgumentError(f"window must be an int in [1, {min(h, w)}], got {window!r}")
        if self.area > window * window:
            raise InvalidArgumentError(
                f"area {self.area:g} exceeds the {window}x{window} window's {window * window} pixels"
            )
        self.window = window

    @property
    def positions(self) -> list[tuple[int, int]]:
        h, w = self.plane_shape
        k = self.window
        return [(r, c) for r in range(h - k + 1) for c in range(w - k + 1)]

    def candidates(self, n: int, generator: torch.Generator) -> list[Params]:
        """Every window place in turn (cycling), each with a random mask inside it and a random pattern."""
        positions = self.positions
        out = []
        for i in range(n):
            row, col = positions[i % len(positions)]
            mask = torch.randn((self.window, self.window), generator=generator, dtype=torch.float64)
            pattern = torch.randn(self.event_shape, generator=generator, dtype=torch.float64)
            out.append({"row": torch.tensor(row), "col": torch.tensor(col),
                        "mask_logits": mask.requires_grad_(True),
                        "pattern_logits": pattern.requires_grad_(True)})
        return out

    def mask(self, params: Params) -> Tensor:
        """The mask (H, W): values in [0, 1] summing to at most ``area``, zero outside the window."""
        k = self.window
        inside = torch.sigmoid(params["mask_logits"].double())
        inside = inside * (self.area / inside.sum()).clamp(max=1.0)
        row, col = int(params["row"]), int(params["col"])
        h, w = self.plane_shape
        return F.pad(inside, (col, w - k - col, row, h - k - row))

    def constraint(self) -> str:
        shape = "x".join(str(d) for d in self.event_shape)
        return (
            f"the {self.base.shape[0]} base images ({shape}) overwritten by one pattern through one mask "
            f"of area at most {self.area:g} pixels inside one {self.window}x{self.window} window at any "
            f"of {len(self.positions)} places, plus N(0, {self.noise_std:g}^2) noise"
        )

    def describe(self, params: Params) -> dict[str, object]:
        return {**super().describe(params), "window": self.window,
                "row": int(params["row"]), "col": int(params["col"])}
