"""Families of plausible input distributions for the adversary."""

from .base import Family, Params, detach_params
from .patch import PatchFamily, stamp

__all__ = ["Family", "Params", "PatchFamily", "detach_params", "stamp"]
