"""An Estimate as labelled rows of text, shared by the terminal summary and the HTML report.

Numbers are rounded, long lists summarised, nested dicts flattened into pairs, a
zero-hit result shows its upper bound (never "1e-inf"), and each row carries a
tone (good, warn, bad, dim) that the terminal and the page each turn into colour.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

from ..result import Estimate

LONG_LIST = 4  # lists longer than this are summarised (count, range), not printed
Tone = Literal["", "good", "warn", "bad", "dim"]


class Row(NamedTuple):
    label: str
    text: str
    tone: Tone = ""


def number(value: float | int) -> str:
    """An int with thousands separators, a float to 4 significant digits, inf and nan as words."""
    if isinstance(value, int):
        return f"{value:,}"
    return str(value) if not math.isfinite(value) else f"{value:.4g}"


def format_value(value: Any) -> str:
    """One readable line for a diagnostic: numbers rounded, long lists summarised, dicts as pairs."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return number(value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {format_value(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return _format_list(list(value))
    return str(value)


def _format_list(items: list[Any]) -> str:
    if not items:
        return "none"
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in items)
    if len(items) <= LONG_LIST:
        return "; ".join(format_value(v) for v in items) if not numeric else ", ".join(map(number, items))
    if numeric:
        return f"{len(items)} values from {number(min(items))} to {number(max(items))}"
    return f"{len(items)} entries, first: {format_value(items[0])}"


def _diagnostic_rows(key: str, value: Any) -> list[Row]:
    """A dict, or a short list of dicts (per-replicate details), gets a row per entry."""
    if isinstance(value, dict) and value:
        return [Row(key, "", "dim")] + [Row(f"  {k}", format_value(v), "dim") for k, v in value.items()]
    if isinstance(value, list) and 0 < len(value) <= LONG_LIST and all(isinstance(v, dict) for v in value):
        return [Row(f"{key} {i + 1}", format_value(v), "dim") for i, v in enumerate(value)]
    return [Row(key, format_value(value), "dim")]


def log10_text(value: float) -> str:
    return "-inf" if value == -math.inf else f"{value:.3f}"


def probability(log10_p: float) -> str:
    """10**log10_p in e-notation, or as a power of ten where a float would underflow."""
    return f"{10.0**log10_p:.3e}" if log10_p > -300 else f"10^{log10_p:.2f}"


def interval_state(est: Estimate) -> Row:
    if est.heuristic:
        return Row("state", "heuristic: the interval reflects no sampling error; no guarantee", "warn")
    if not est.trusted:
        return Row("state", "interval NOT trusted: a check of its assumptions failed (warnings)", "bad")
    return Row("state", "interval trusted", "good")


def estimate_rows(est: Estimate, seed: int | None = None) -> list[Row]:
    """Estimate (or bound), CI, whether to trust it, cost, seed, diagnostics, then every warning.

    ``seed``: the run's seed, shown when the estimate itself drew from a generator it was handed.
    """
    low, high = est.ci_log10
    pct = f"{100 * est.confidence:g}%"
    chosen = est.settings.get("chosen_by")
    seen = math.isfinite(est.log10_p)
    bound = f"0 seen; p <= {probability(high)} ({pct} upper bound)"
    shown_seed = est.seed if est.seed is not None else seed
    rows = [
        Row("log10 p", log10_text(est.log10_p) + ("" if seen else " (no catastrophe seen)")),
        Row(f"{pct} CI (log10)", f"[{log10_text(low)}, {log10_text(high)}]"),
        Row("p", probability(est.log10_p) if seen else bound),
        interval_state(est),
    ]
    if est.assumes:
        rows.append(Row("assumes", est.assumes))
    rows += [
        Row("method", est.method + (f" (chosen by {chosen})" if chosen else "")),
        Row("model calls", f"{est.n_model_calls:,}"),
        Row("seconds", f"{est.seconds:.2f}"),
        Row("seed", "a caller's generator" if shown_seed is None else str(shown_seed)),
    ]
    for key, value in est.diagnostics.items():
        rows += _diagnostic_rows(key, value)
    rows += [Row("warning", warning, "warn") for warning in est.warnings]
    return rows


def interval_text(log10_p: float, ci: Sequence[float], digits: int = 2) -> str:
    """'-3.87 [-3.91, -3.83]', or '<= -3.00 (none seen)' when nothing was seen: a bound, not a value."""
    low, high = ci
    if not math.isfinite(log10_p):
        return f"<= {high:.{digits}f} (none seen)"
    shown_low = "-inf" if not math.isfinite(low) else f"{low:.{digits}f}"
    return f"{log10_p:.{digits}f} [{shown_low}, {high:.{digits}f}]"
