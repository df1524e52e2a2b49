"""The immutable result of an estimate, in log space, with a lossless JSON form."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import InvalidArgumentError

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


#: the fields without which a JSON object is not an estimate
REQUIRED_FIELDS = frozenset({"log10_p", "ci_log10", "n_model_calls", "method"})


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


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
    ``trusted`` is False when the interval rests on an assumption that a check in
    this run found broken (or could not make); ``warnings`` then say which.
    ``assumes`` states in a sentence what the interval relies on.
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
    trusted: bool = True
    assumes: str = ""

    @property
    def p(self) -> float:
        """The estimate as a plain probability (underflows to 0 below ~1e-308)."""
        return 10.0**self.log10_p

    def to_json(self) -> str:
        """Standard JSON (no NaN or Infinity literals), read back exactly by ``from_json``.

        JSON has no infinities, so non-finite floats anywhere in the result are
        written as the strings ``"-inf"``, ``"inf"`` and ``"nan"``: a zero-hit
        estimate has ``"log10_p": "-inf"`` and ``"ci_log10": ["-inf", <upper bound>]``.
        """
        return json.dumps(self.to_dict(), allow_nan=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict of ``to_json`` (non-finite floats as strings)."""
        data = asdict(self)
        data["schema_version"] = SCHEMA_VERSION
        return _encode(data)  # type: ignore[no-any-return]

    @classmethod
    def from_json(cls, text: str) -> Estimate:
        """An estimate from the text of ``to_json``; anything else is refused with the reason."""
        try:
            data = json.loads(text)
        except (TypeError, json.JSONDecodeError) as exc:
            raise InvalidArgumentError(f"not an estimate's JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Estimate:
        """From the parsed JSON of ``to_json`` (infinities as strings or floats), checked field by field."""
        if not isinstance(data, dict):
            raise InvalidArgumentError(f"an estimate must be a JSON object, got {type(data).__name__}")
        data = _decode(data)
        data.pop("schema_version", None)
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(REQUIRED_FIELDS - data.keys())
        unknown = sorted(data.keys() - fields)
        if missing or unknown:
            raise InvalidArgumentError(f"not an estimate: missing fields {missing}, unknown fields {unknown}")
        ci = data["ci_log10"]
        if not (isinstance(ci, list | tuple) and len(ci) == 2 and all(_is_number(c) for c in ci)):
            raise InvalidArgumentError(f"ci_log10 must be two numbers, got {ci!r}")
        if not _is_number(data["log10_p"]):
            raise InvalidArgumentError(f"log10_p must be a number, got {data['log10_p']!r}")
        calls = data["n_model_calls"]
        if isinstance(calls, bool) or not isinstance(calls, int) or calls < 0:
            raise InvalidArgumentError(f"n_model_calls must be an int >= 0, got {calls!r}")
        if not isinstance(data["method"], str):
            raise InvalidArgumentError(f"method must be a string, got {data['method']!r}")
        data["ci_log10"] = tuple(float(c) for c in ci)
        data["warnings"] = tuple(str(w) for w in data.get("warnings", ()))
        return cls(**data)

    @property
    def reliable(self) -> bool:
        """Whether the interval may be read at its nominal confidence: trusted and not heuristic."""
        return self.trusted and not self.heuristic

    def headline(self) -> str:
        """One line: the estimate (or the bound, when nothing was seen) and its interval."""
        low, high = self.ci_log10
        pct = f"{100 * self.confidence:g}%"
        if math.isinf(self.log10_p):
            value = f"no catastrophe seen: p <= 10^{high:.2f} ({pct} upper bound)"
        else:
            value = f"log10 p = {self.log10_p:.2f}  {pct} CI [{_log10_text(low)}, {high:.2f}]"
        if self.heuristic:
            state = "heuristic: the interval is no guarantee"
        elif not self.trusted:
            state = "interval NOT trusted"
        else:
            state = "interval trusted"
        return f"{value}  ({state})"

    def __str__(self) -> str:
        seed = "a caller's generator" if self.seed is None else str(self.seed)
        lines = [
            self.headline(),
            f"  {self.method}, {self.n_model_calls:,} model calls, {self.seconds:.1f} s, seed {seed}",
        ]
        if self.assumes:
            lines.append(f"  assumes: {self.assumes}")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _log10_text(value: float) -> str:
    return "-inf" if math.isinf(value) else f"{value:.2f}"
