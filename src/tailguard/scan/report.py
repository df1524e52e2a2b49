"""A scan's report files: scan.json (everything, lossless estimates) and scan.md (the table to read)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .run import ScanReport


def markdown(report: ScanReport, title: str) -> str:
    """The verdict, then one row per class: its worst family, estimate, interval and robust z."""
    verdict = (
        "no class stands out" if report.target is None else f"suspected target class **{report.target}**"
    )
    lines = [
        f"# {title}",
        "",
        f"Score {report.score:.2f} (largest robust z of a class's log10 odds among the classes of one "
        f"family): {verdict}. {report.n_model_calls:,} model calls, {report.seconds:.1f} s, "
        f"seed {report.seed}.",
        "",
        "| class | worst family | log10 P | 95 % CI | trusted | largest z |",
        "|---|---|---|---|---|---|",
    ]
    for k in report.ranking:
        cells = [c for c in report.cells if c.target == k]
        est = report.per_class[k]
        family = next(c.search for c in cells if c.estimate is est)
        low, high = est.ci_log10
        lines.append(
            f"| {k} | {family} | {est.log10_p:.2f} | [{low:.2f}, {high:.2f}] | "
            f"{'yes' if est.reliable else 'no'} | {max(c.z for c in cells):.2f} |"
        )
    w = report.witness
    lines += ["", f"Worst member: {w.search} towards class {w.target}: {w.attack.family.constraint()}."]
    return "\n".join(lines) + "\n"


def write_scan_report(
    report: ScanReport, out_dir: Path, title: str, settings: dict[str, Any]
) -> dict[str, Path]:
    """OUT/scan.json and OUT/scan.md; the folder is created."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "scan.json", "markdown": out_dir / "scan.md"}
    data = {"settings": settings, **report.to_dict()}
    paths["json"].write_text(json.dumps(data, indent=1, allow_nan=False))
    paths["markdown"].write_text(markdown(report, title))
    return paths
