"""Families of plausible input distributions for the adversary."""

from .ball import PerturbationBall
from .base import Family, Params, detach_params
from .blend import BlendFamily
from .channel_patch import ChannelPatchFamily
from .flow import FlowDistribution, FlowFamily
from .masked import MaskedPatternFamily
from .patch import PatchFamily, stamp
from .shift import GaussianShift
from .warp import WarpFamily

__all__ = [
    "BlendFamily",
    "ChannelPatchFamily",
    "WarpFamily",
    "Family",
    "MaskedPatternFamily",
    "Params",
    "PatchFamily",
    "detach_params",
    "stamp",
    "FlowDistribution",
    "FlowFamily",
    "GaussianShift",
    "PerturbationBall",
]
