"""The trigger families a scan searches: what a planted trigger may look like.

A TriggerSearch names a family and builds it over the clean inputs of the classes
other than the one under suspicion. The default set covers the trigger kinds of
the backdoor literature: square patches of several sizes anywhere (Gu et al.
2017, "BadNets"), a full-image pattern blended in at a low opacity (Chen et al.
2017), and one bounded perturbation added to every input (a universal
perturbation, Moosavi-Dezfooli et al. 2017). A user extends the set by passing
more searches to ``scan``; any ``Family`` over the images' shape will do.
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
    """A mask of at most 9 pixels of any shape, a blend at 0.2 and a universal l-inf 0.1 perturbation.

    The masked family holds every patch trigger of 9 pixels or fewer, square
    (every 3x3 patch) or not, and a larger trigger usually answers in part to 9 of
    its pixels. On the trojan zoo of seed 0 (30 clean, 10 patch-trojaned models,
    design note 009) it separated the patch triggers better than a 3x3 square
    patch did, and better than masks of 6 or 12 pixels: 12 pixels, like square
    4x4 and 5x5 patches, send every input of a clean digits model to some class,
    so the search ranks the classes of a clean model as unevenly as those of a
    trojaned one. Warps are left out for the same reason (a 1-pixel warp sends
    most inputs of a clean model to some class).
    """
    return [masked_search(9), blend_search(0.2), universal_search(0.1)]


def warp_search(max_shift: float, noise_std: float = NOISE_STD) -> TriggerSearch:
    """Any smooth warp of the image by at most ``max_shift`` pixels (every channel along one field)."""
    return TriggerSearch(f"warp {max_shift:g} px", lambda base: WarpFamily(base, max_shift, noise_std))
