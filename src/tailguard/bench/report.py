"""Write a benchmark run to disk: JSON log with provenance, JSONL records, markdown, plot and HTML.

The JSON holds every record, the per-(method, budget) summary, the sweep's
configuration, package versions and the git revision, so a table or plot can be
regenerated (and a number traced to the code that produced it) later; the JSONL
beside it holds one record a line, and the HTML page is rendered from the two
(``tailguard.report.render``). The suites' pages (``bench.suites``) are built here
too, from the same plot. Infinite values are written as the strings "inf" / "-inf",
as in ``Estimate.to_json``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..report import publish
from ..report.page import Figure, Page, Paragraph, group_warnings, markdown_blocks
from ..report.plots import EstimatePlot, figure, png, save_png
from . import suites
from .runner import BAND_LOG10, Record, in_band, median_or_none, summarise


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


def estimates_figure(records: Sequence[Record], title: str = "Estimates vs ground truth") -> Any:
    """Estimate vs truth (log10), one series per method (bounds as bounds), with the y = x line."""
    ok = [r for r in records if r["status"] == "ok"]
    methods = sorted({r["method"] for r in ok})
    markers = "osD^v<>pP*Xh"
    fig, (ax,) = figure(figsize=(7.5, 6.5))
    plot = EstimatePlot(ax, f"{title} (bars: 95% CI)", "true log10 p", "estimated log10 p")
    truths = [r["true_log10_p"] for r in records] or [0.0]
    lo, hi = min(truths) - 1.5, max(max(truths) + 1.0, 0.0)
    for i, m in enumerate(methods):
        rows = [r for r in ok if r["method"] == m]
        plot.add([r["true_log10_p"] + 0.08 * (i - len(methods) / 2) for r in rows],
                 [r["estimate_log10_p"] for r in rows], [r["ci_log10"] for r in rows], m,
                 marker=markers[i % len(markers)])
    plot.line([lo, hi], [lo, hi], "y = x (exact)", color="k", ls="--")
    ax.set(xlim=(lo, hi), ylim=(lo, hi))
    plot.finish(loc="upper left")
    return fig


def plot(records: Sequence[Record], path: Path) -> Path:
    """The estimates-vs-truth figure as a PNG file."""
    return save_png(estimates_figure(records), path)


def markdown(records: Sequence[Record]) -> str:
    """The report's markdown: summary, speed and per-case tables."""
    return "\n".join(["# Estimation benchmark\n", summary_table(summarise(records)), "",
                      speed_table(records), "", case_table(records), ""])


def record_warnings(records: Sequence[Record]) -> list[str]:
    """Errors and the estimators' own warnings, grouped by message (where: method, case, budget, seed)."""
    found = []
    for r in records:
        where = f"{r['method']} on {r['case']} at {r['budget']:,} calls, seed {r['seed']}"
        if r["status"] == "error":
            found.append((where, f"error: {r['reason']}"))
        found += [(where, w) for w in r.get("warnings") or []]
    return group_warnings(found)


def _figure(records: Sequence[Record], title: str) -> Figure:
    return Figure(title, png(estimates_figure(records, title)),
                  "estimated against true log10 p, one marker per method, with 95% intervals")


def estimation_page(header: dict[str, Any], rows: list[Record]) -> Page:
    """The HTML page of an estimation benchmark, from estimation.json and estimation.jsonl."""
    blocks = [*markdown_blocks(markdown(rows)), _figure(rows, "Estimates vs ground truth")]
    ok = sum(r["status"] == "ok" for r in rows)
    headline = (f"{len(rows)} runs ({ok} completed) of {len({r['method'] for r in rows})} methods "
                f"on {len({r['case'] for r in rows})} cases with known answers")
    return Page("bench-estimation", "Estimation benchmark", headline, blocks, record_warnings(rows),
                header["config"])


def suite_page(header: dict[str, Any], rows: list[Record]) -> Page:
    """The HTML page of a stress or reliability suite: silent misses first among the warnings."""
    suite = header["suite"]
    misses = [f"silent miss: {r['method']} on {r['case']} at {r['budget']:,} calls, seed {r['seed']}: "
              f"log10 p {r['estimate_log10_p']:.2f} against the truth {r['true_log10_p']:.2f}, trusted and "
              "without a warning" for r in rows if r["status"] == "ok" and suites.is_silent_miss(r)]
    text = suites.markdown(suite, rows, header["config"]).replace(f"Configuration: {header['config']}", "")
    blocks = [*markdown_blocks(text), _figure(rows, f"{suite} suite: estimates vs truth")]
    if not misses:
        blocks.insert(0, Paragraph("No silent miss: every run off by more than the threshold said so."))
    headline = (f"{len(rows)} runs of {', '.join(sorted({r['method'] for r in rows}))} "
                f"on {len({r['case'] for r in rows})} cases; {len(misses)} silent misses")
    return Page("bench-suite", f"{suite} suite", headline, blocks, misses + record_warnings(rows),
                header["config"])


def write_report(records: Sequence[Record], out_dir: str | Path,
                 config: dict[str, Any] | None = None,
                 stem: str = "estimation") -> dict[str, Path]:
    """Write ``stem``.{json,jsonl,md,png,html} under out_dir; returns their paths."""
    out = Path(out_dir)
    header = {"config": config or {}, "summary": summarise(records), "records": list(records)}
    paths = publish(out / f"{stem}.json", "bench-estimation", header, f"{stem}.jsonl", records)
    paths["plot"] = plot(records, out / f"{stem}.png")
    paths["markdown"] = out / f"{stem}.md"
    paths["markdown"].write_text(markdown(records) + f"\n![estimates vs truth]({paths['plot'].name})\n")
    return paths
