"""The trigger families a scan searches: what a planted trigger may look like.

A TriggerSearch names a family and builds it over the clean inputs of the classes
other than the one under suspicion. The searches cover the trigger kinds of the
backdoor literature: patches anywhere (Gu et al. 2017, "BadNets"), as square
patches or as a pattern through a mask of bounded area (Neural Cleanse's trigger
model, Wang et al. 2019), inside a small window or not; a full-image pattern
blended in at a low opacity (Chen et al. 2017); one bounded perturbation added to
every input (a universal perturbation, Moosavi-Dezfooli et al. 2017); a smooth
warp (WaNet). The default set is ``default_searches``. A user extends the set by
passing more searches to ``scan``; any ``Family`` over the images' shape will do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from ..errors import InvalidArgumentError
from ..families.ball import PerturbationBall
from ..families.base import Family
from ..families.blend import BlendFamily
from ..families.channel_patch import ChannelPatchFamily
from ..families.masked import MaskedPatternFamily
from ..families.masked_window import WindowedMaskFamily
from ..families.patch import PatchFamily
from ..families.warp import WarpFamily

#: noise added to every family member: small beside the 1/16 steps of the digits' pixels
NOISE_STD = 0.03


@dataclass(frozen=True)
class TriggerSearch:
    """A named way of building a trigger family over clean images (N, *shape) of other classes."""

    name: str
    build: Callable[[Tensor], Family]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidArgumentError(f"a trigger search needs a non-empty name, got {self.name!r}")
        if not callable(self.build):
            raise InvalidArgumentError(f"search {self.name!r}: build must be callable")


def patch_family(base: Tensor, size: int, noise_std: float) -> PatchFamily:
    """The size x size patch family over base images (N, H, W), or (N, C, H, W) with a colour patch."""
    if base.dim() == 4:
        return ChannelPatchFamily(base, size, noise_std)
    return PatchFamily(base, size, noise_std)


def patch_search(size: int, noise_std: float = NOISE_STD) -> TriggerSearch:
    """Any size x size patch of any values at any place, in every channel of images that have channels."""
    return TriggerSearch(f"patch {size}x{size}", lambda base: patch_family(base, size, noise_std))


def masked_search(area: float, noise_std: float = NOISE_STD) -> TriggerSearch:
    """Any pattern written through a mask of any shape whose area is at most ``area`` pixels."""
    return TriggerSearch(f"mask {area:g} px", lambda base: MaskedPatternFamily(base, area, noise_std))


def windowed_search(area: float, window: int, noise_std: float = NOISE_STD) -> TriggerSearch:
    """Any pattern through a mask of area <= ``area`` pixels inside one ``window`` x ``window`` square.

    On images smaller than the window, the window is the whole image's shorter side.
    """
    def build(base: Tensor) -> WindowedMaskFamily:
        return WindowedMaskFamily(base, area, min(window, *base.shape[-2:]), noise_std)

    return TriggerSearch(f"mask {area:g} px in {window}x{window}", build)


def blend_search(alpha: float, noise_std: float = NOISE_STD) -> TriggerSearch:
    """Any full-image pattern blended in at opacity ``alpha``."""
    return TriggerSearch(f"blend {alpha:g}", lambda base: BlendFamily(base, alpha, noise_std))


def universal_search(epsilon: float, noise_std: float = NOISE_STD) -> TriggerSearch:
    """Any one perturbation of l-inf norm <= ``epsilon`` added to every image, clipped to [0, 1]."""
    return TriggerSearch(
        f"universal linf {epsilon:g}",
        lambda base: PerturbationBall(base, epsilon, noise_std, norm="linf", clamp=(0.0, 1.0)),
    )


def default_searches() -> list[TriggerSearch]:
    """Masks of at most 9 pixels inside a 5x5 and inside a 4x4 window, and a blend at 0.2.

    A planted patch trigger is one pattern in one small region; the mask of
    bounded area holds every square patch of 9 pixels or fewer and the most
    telling 9 pixels of a 4x4 or 5x5 trigger, and the window keeps it from
    drawing a stroke across the digit, which is how a free 9-pixel mask sent
    every input of a clean MLP to a natural class (design note 009). Two windows,
    because the local search finds a trigger in one and misses it in the other
    often enough to matter. On the zoos of seeds 0 and 1 (design note 009) these
    separated patch and warp triggers better than the free 9-pixel mask, the 3x3
    square, and the universal perturbation, which never gave a model its score.
    Warps are left out (a 1-pixel warp sends most inputs of a clean model to
    some class); warp-trained models answer to the windowed masks.
    """
    return [windowed_search(9, 5), windowed_search(9, 4), blend_search(0.2)]


def warp_search(max_shift: float, noise_std: float = NOISE_STD) -> TriggerSearch:
    """Any smooth warp of the image by at most ``max_shift`` pixels (every channel along one field)."""
    return TriggerSearch(f"warp {max_shift:g} px", lambda base: WarpFamily(base, max_shift, noise_std))
