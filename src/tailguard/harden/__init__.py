"""Hardening: train a model against an adversary that searches a family of distributions."""

from .report import HardenReport
from .trainer import HardenResult, HardenSettings, harden

__all__ = ["HardenReport", "HardenResult", "HardenSettings", "harden"]
