"""Scan a model for planted catastrophes: per-class worst cases over trigger families -> one score."""

from .run import ScanCell, ScanReport, ScanSettings, ScanWitness, scan
from .searches import (
    TriggerSearch,
    blend_search,
    default_searches,
    masked_search,
    patch_search,
    universal_search,
    warp_search,
    windowed_search,
)

__all__ = [
    "ScanCell",
    "ScanReport",
    "ScanSettings",
    "ScanWitness",
    "TriggerSearch",
    "blend_search",
    "default_searches",
    "masked_search",
    "patch_search",
    "scan",
    "universal_search",
    "warp_search",
    "windowed_search",
]
