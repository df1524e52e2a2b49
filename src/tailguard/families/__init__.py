"""Families of plausible input distributions for the adversary."""

from .ball import PerturbationBall
from .base import Family, Params, detach_params
from .blend import BlendFamily
from .channel_patch import ChannelPatchFamily
from .flow import FlowDistribution, FlowFamily
from .patch import PatchFamily, stamp
from .shift import GaussianShift
from .warp import WarpFamily

__all__ = [
    "BlendFamily",
    "ChannelPatchFamily",
    "WarpFamily",
    "Family",
    "Params",
    "PatchFamily",
    "detach_params",
    "stamp",
    "FlowDistribution",
    "FlowFamily",
    "GaussianShift",
    "PerturbationBall",
]
