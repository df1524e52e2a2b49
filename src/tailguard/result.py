"""The immutable result of an estimate, in log space, with a lossless JSON form."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1


def _encode(value: Any) -> Any:
    """JSON has no inf/nan: write them as the strings "inf", "-inf", "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if value in ("inf", "-inf", "nan"):
        return float(value)
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


@dataclass(frozen=True)
class Estimate:
    """log10 P[C] with a confidence interval, its cost, and how it was obtained.

    ``log10_p`` is -inf when no catastrophe was seen; ``ci_log10`` then still has
    a finite upper end. ``heuristic`` estimates (moment propagation) carry a CI
    that reflects no sampling error and must not be read as a guarantee.
    """

    log10_p: float
    ci_log10: tuple[float, float]
    n_model_calls: int
    method: str
    seconds: float = 0.0
    confidence: float = 0.95
    seed: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    heuristic: bool = False

    @property
    def p(self) -> float:
        """The estimate as a plain probability (underflows to 0 below ~1e-308)."""
        return 10.0**self.log10_p

    def to_json(self) -> str:
        data = asdict(self)
        data["schema_version"] = SCHEMA_VERSION
        return json.dumps(_encode(data), allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> Estimate:
        data = _decode(json.loads(text))
        data.pop("schema_version", None)
        data["ci_log10"] = tuple(data["ci_log10"])
        data["warnings"] = tuple(data.get("warnings", ()))
        return cls(**data)

    def __str__(self) -> str:
        low, high = self.ci_log10
        pct = f"{100 * self.confidence:g}%"
        tag = " (heuristic)" if self.heuristic else ""
        return (
            f"log10 p = {self.log10_p:.2f}  {pct} CI [{low:.2f}, {high:.2f}]  "
            f"{self.method}{tag}, {self.n_model_calls:,} model calls, {self.seconds:.1f} s"
        )
