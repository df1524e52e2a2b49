"""Write a benchmark run to disk: JSON log with provenance, a markdown table, a log-log plot.

The JSON holds every record, the per-(method, budget) summary, the sweep's
configuration, package versions and the git revision, so a table or plot can be
regenerated (and a number traced to the code that produced it) later.
Infinite values are written as the strings "inf" / "-inf", as in ``Estimate.to_json``.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from ..result import _encode
from .runner import BAND_LOG10, Record, in_band, median_or_none, summarise

SCHEMA_VERSION = 1
_PACKAGES = ("tailguard", "torch", "numpy", "scipy", "openturns", "ray", "matplotlib",
             "scikit-learn")


def versions() -> dict[str, str | None]:
    """Installed versions of the packages a result depends on (None if absent)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def git_revision() -> dict[str, Any]:
    """HEAD of the repository holding this file, and whether the work tree has changes."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True,
                                 timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    status = git("status", "--porcelain")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}f}"


def summary_table(summary: Sequence[dict[str, Any]]) -> str:
    """Markdown table: one row per (method, budget)."""
    low, high = BAND_LOG10
    lines = [
        f"| method | budget | completed / skipped / errors | median abs log10 error "
        f"(1e{low:g} <= p <= 1e{high:g}) | max abs log10 error | CI coverage "
        "| median model calls | median seconds |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in summary:
        coverage = "–" if row["coverage"] is None else f"{100 * row['coverage']:.0f} %"
        calls = "–" if row["median_model_calls"] is None else f"{row['median_model_calls']:,.0f}"
        lines.append(
            f"| {row['method']} | {row['budget']:,} | {row['completed']} / {row['skipped']} / "
            f"{row['errors']} | {_fmt(row['median_abs_log10_error'])} "
            f"| {_fmt(row['max_abs_log10_error'])} | {coverage} | {calls} "
            f"| {_fmt(row['median_seconds'], 1)} |"
        )
    return "\n".join(lines)


def case_table(records: Sequence[Record]) -> str:
    """Markdown table at the largest budget: per case, each method's estimates over seeds."""
    budget = max(r["budget"] for r in records)
    methods = sorted({r["method"] for r in records})
    cases = sorted({(r["case"], r["true_log10_p"]) for r in records}, key=lambda c: (-c[1], c[0]))
    lines = [f"Estimates of log10 p at budget {budget:,} (one value per seed; s = skipped)\n",
             "| case | true log10 p | " + " | ".join(methods) + " |",
             "|---|---:|" + "---:|" * len(methods)]
    for name, truth in cases:
        cells = []
        for m in methods:
            runs = [r for r in records if r["case"] == name and r["method"] == m
                    and r["budget"] == budget]
            cells.append(", ".join("s" if r["status"] == "skipped" else
                                   "err" if r["status"] == "error" else
                                   _fmt(r["estimate_log10_p"]) for r in runs))
        lines.append(f"| {name} | {truth:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def speed_table(records: Sequence[Record], reference: str = "openturns",
                method: str = "auto") -> str:
    """Markdown table: wall time of ``method`` at each budget against each reference method.

    Over the cases with exact answers (not the trained digits model), per case the median
    seconds over seeds; the ratio is reference seconds / method seconds, summarised by its
    median and its smallest value over cases, next to each side's median error in the band.
    """
    ok = [r for r in records if r["status"] == "ok" and r["family"] != "digits"]
    refs = sorted({r["method"] for r in ok if r["method"].startswith(reference)})
    ours = sorted({r["budget"] for r in ok if r["method"] == method})
    if not refs or not ours:
        return ""

    def per_case(name: str, budget: int) -> dict[str, float]:
        cases: dict[str, list[float]] = {}
        for r in ok:
            if r["method"] == name and r["budget"] == budget:
                cases.setdefault(r["case"], []).append(r["seconds"])
        return {c: float(median_or_none(v) or 0.0) for c, v in cases.items()}

    def band_error(name: str, budget: int) -> float | None:
        return median_or_none([r["abs_log10_error"] for r in ok
                        if r["method"] == name and r["budget"] == budget and in_band(r)])

    lines = [f"Wall time of {method} against {reference} on the cases with exact answers "
             "(ratio = their seconds / ours, per case; median error in the band alongside)\n",
             f"| {method} budget | {method} median s | {method} median error | reference "
             "| reference median s | reference median error | median ratio | smallest ratio |",
             "|---:|---:|---:|---|---:|---:|---:|---:|"]
    for ref in refs:
        ref_budget = max(r["budget"] for r in ok if r["method"] == ref)
        theirs = per_case(ref, ref_budget)
        for budget in ours:
            mine = per_case(method, budget)
            ratios = [theirs[c] / max(mine[c], 1e-9) for c in mine if c in theirs]
            lines.append(
                f"| {budget:,} | {_fmt(median_or_none(list(mine.values())))} | "
                f"{_fmt(band_error(method, budget))} | {ref} at {ref_budget:,} | "
                f"{_fmt(median_or_none(list(theirs.values())))} | {_fmt(band_error(ref, ref_budget))} | "
                f"{_fmt(median_or_none(ratios), 1)} | {_fmt(min(ratios) if ratios else None, 1)} |"
            )
    return "\n".join(lines)


def plot(records: Sequence[Record], path: Path) -> None:
    """Estimate vs truth (log10), one marker per method, CI error bars, the y = x line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if r["status"] == "ok"]
    methods = sorted({r["method"] for r in ok})
    markers = "osD^v<>pP*Xh"
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    truths = [r["true_log10_p"] for r in records] or [0.0]
    lo, hi = min(truths) - 1.5, max(max(truths) + 1.0, 0.0)
    for i, m in enumerate(methods):
        rows = [r for r in ok if r["method"] == m and math.isfinite(r["estimate_log10_p"])]
        missed = sum(1 for r in ok if r["method"] == m) - len(rows)
        x = [r["true_log10_p"] + 0.08 * (i - len(methods) / 2) for r in rows]
        y = [r["estimate_log10_p"] for r in rows]
        below = [max(r["estimate_log10_p"] - max(r["ci_log10"][0], lo), 0.0) for r in rows]
        above = [max(min(r["ci_log10"][1], hi) - r["estimate_log10_p"], 0.0) for r in rows]
        label = m if not missed else f"{m} ({missed} found nothing)"
        ax.errorbar(x, y, yerr=[below, above], fmt=markers[i % len(markers)], ms=4,
                    capsize=2, alpha=0.75, label=label)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="true log10 p", ylabel="estimated log10 p",
           title="Estimates vs ground truth (95 % CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(records: Sequence[Record], out_dir: str | Path,
                 config: dict[str, Any] | None = None,
                 stem: str = "estimation") -> dict[str, Path]:
    """Write ``stem``.json, ``stem``.md and ``stem``.png under out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(records)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md",
             "plot": out / f"{stem}.png"}
    log = {"schema_version": SCHEMA_VERSION, "config": config or {}, "versions": versions(),
           "git": git_revision(), "summary": summary, "records": list(records)}
    paths["json"].write_text(json.dumps(_encode(log), indent=1, allow_nan=False))
    markdown = ["# Estimation benchmark\n", summary_table(summary), "", speed_table(records), "",
                case_table(records), "",
                f"![estimates vs truth]({paths['plot'].name})", ""]
    paths["markdown"].write_text("\n".join(markdown))
    plot(records, paths["plot"])
    return paths
