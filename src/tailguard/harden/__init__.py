"""Hardening: the game between a policy and the adversaries that search for its failures.

The names below load on first use: ``tailguard.attack`` builds on this package's
objective, and the trainer builds on ``attack``, so importing them eagerly here
would make the two packages import each other half-way.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .report import HardenReport
    from .trainer import HardenResult, HardenSettings, harden

_HOMES = {"HardenReport": ".report", "HardenResult": ".trainer", "HardenSettings": ".trainer",
          "harden": ".trainer"}

__all__ = ["HardenReport", "HardenResult", "HardenSettings", "harden"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name], __name__), name)
