"""Suites of problems the estimators were not designed around: the stress suite and otbenchmark's.

Each suite is a list of ``Case`` with verified truth (``bench.stress``, ``bench.reliability``);
this module runs methods over them at several budgets and seeds and summarises what an
honest interval must deliver: coverage, accuracy, how often a run is off by more than
SILENT_MISS decades while claiming to be trusted and warning of nothing, and how wide
the intervals are (honesty is not to be bought with width).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError
from .cases import Case
from .runner import Record, run_one

#: a run this far off in log10 must carry a warning or be marked not trusted
SILENT_MISS = 0.5
SUITE_METHODS: dict[str, tuple[str, ...]] = {
    "stress": ("auto", "is", "splitting"),
    "reliability": ("auto", "openturns-subset", "openturns-ce", "openturns-form"),
}


def suite_cases(name: str) -> list[Case]:
    """The cases of suite ``name`` ("stress" or "reliability")."""
    if name == "stress":
        from .stress import stress_cases

        return stress_cases()
    if name == "reliability":
        from .reliability import reliability_cases

        return reliability_cases()
    raise InvalidArgumentError(f"suite must be 'stress' or 'reliability', got {name!r}")


def _run(suite: str, method: str, case: Case, budget: int, seed: int) -> Record:
    if suite == "reliability" and method.startswith("openturns"):
        from .reliability import run_openturns_reliability

        record = run_openturns_reliability(case.name.removeprefix("reliability/"), method, budget, seed)
        record.setdefault("trusted", None)
        return record
    return run_one(method, case, budget, seed)


def run_suite(suite: str, methods: Sequence[str] | None = None, budgets: Sequence[int] = (10_000, 100_000),
              seeds: Sequence[int] = tuple(range(5)),
              progress: Callable[[Record, int, int], None] | None = None,
              cases: Sequence[Case] | None = None) -> list[Record]:
    """One record per (method, case, budget, seed), in that nesting order (cases: default the suite's)."""
    cases = suite_cases(suite) if cases is None else cases
    methods = SUITE_METHODS[suite] if methods is None else tuple(methods)
    tasks = [(m, c, b, s) for c in cases for m in methods for b in budgets for s in seeds]
    records: list[Record] = []
    for method, case, budget, seed in tasks:
        records.append(_run(suite, method, case, budget, seed))
        if progress is not None:
            progress(records[-1], len(records), len(tasks))
    return records


def is_silent_miss(record: Record) -> bool:
    """Off by more than SILENT_MISS decades while trusted and warning of nothing."""
    err = record.get("abs_log10_error")
    if err is None or not err > SILENT_MISS:
        return False
    return bool(record.get("trusted", True)) and not record.get("heuristic") and not record.get("warnings")


def _width(record: Record) -> float | None:
    low, high = record["ci_log10"]
    return high - low if math.isfinite(low) and math.isfinite(high) else None


def summarise_suite(records: Sequence[Record]) -> list[dict[str, Any]]:
    """Per (method, budget): coverage, median and worst |log10 error|, silent misses, CI width."""
    keys = sorted({(r["method"], r["budget"]) for r in records})
    rows = []
    for method, budget in keys:
        group = [r for r in records if r["method"] == method and r["budget"] == budget]
        ok = [r for r in group if r["status"] == "ok"]
        errors = [r["abs_log10_error"] for r in ok if r["abs_log10_error"] is not None]
        widths = [w for w in map(_width, ok) if w is not None]
        rows.append({
            "method": method, "budget": budget, "runs": len(group), "completed": len(ok),
            "coverage": sum(bool(r["covered"]) for r in ok) / len(ok) if ok else None,
            "median_abs_log10_error": statistics.median(errors) if errors else None,
            "max_abs_log10_error": max(errors) if errors else None,
            "silent_misses": sum(is_silent_miss(r) for r in ok),
            "untrusted": sum(r.get("trusted") is False for r in ok),
            "median_ci_width": statistics.median(widths) if widths else None,
            "infinite_width": len(ok) - len(widths),
            "median_model_calls": statistics.median([r["model_calls"] for r in ok]) if ok else None,
        })
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else f"{value:.3f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown(suite: str, records: Sequence[Record], config: dict[str, Any]) -> str:
    """The summary table, then one line per case and method with its runs' errors and coverage."""
    head = ("| method | budget | runs | coverage | median \\|log10 err\\| | worst | silent misses "
            "| not trusted | median CI width | infinite width |")
    lines = [f"# {suite} suite", "", f"Configuration: {config}", "", head, "|" + "---|" * 10]
    for row in summarise_suite(records):
        cov = "–" if row["coverage"] is None else f"{100 * row['coverage']:.0f} %"
        lines.append(
            f"| {row['method']} | {row['budget']:,} | {row['completed']}/{row['runs']} | {cov} | "
            f"{_cell(row['median_abs_log10_error'])} | {_cell(row['max_abs_log10_error'])} | "
            f"{row['silent_misses']} | {row['untrusted']} | {_cell(row['median_ci_width'])} | "
            f"{row['infinite_width']} |")
    lines += ["", "## Per case", "", "| case | true log10 p | method | budget | estimates | covered |",
              "|---|---:|---|---:|---|---:|"]
    keys = sorted({(r["case"], r["method"], r["budget"]) for r in records})
    for case, method, budget in keys:
        runs = [r for r in records if (r["case"], r["method"], r["budget"]) == (case, method, budget)]
        est = ", ".join(_cell(r["estimate_log10_p"]) if r["status"] == "ok" else r["status"] for r in runs)
        covered = sum(bool(r["covered"]) for r in runs)
        lines.append(f"| {case} | {runs[0]['true_log10_p']:.2f} | {method} | {budget:,} | {est} | "
                     f"{covered}/{len(runs)} |")
    return "\n".join(lines) + "\n"


def write_suite_report(suite: str, records: Sequence[Record], folder: str | Path,
                       config: dict[str, Any]) -> dict[str, Path]:
    """``<suite>``.{json,jsonl,md,html} under ``folder``: every record, summary, provenance, tables, page."""
    from ..report import publish

    out = Path(folder)
    header = {"suite": suite, "config": config, "summary": summarise_suite(records), "records": list(records)}
    paths = publish(out / f"{suite}.json", "bench-suite", header, f"{suite}.jsonl", records)
    paths["markdown"] = out / f"{suite}.md"
    paths["markdown"].write_text(markdown(suite, records, config))
    return paths
