"""The estimate and attack reports: what is written for one run, and the page built from it.

An estimate report is estimate.json (title, settings, the case file's text) and
estimate.jsonl (the Estimate, one line); an attack report is attack.json (the
member found, its final Estimate, settings) and attack.jsonl (one line per
refinement step of each restart: the surrogate log10 P it reached).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..result import Estimate
from . import publish
from .page import Block, Figure, Heading, Page, Paragraph, row_table
from .plots import EstimatePlot, figure, png
from .rows import estimate_rows, interval_state

if TYPE_CHECKING:
    from ..attack import AttackResult

MEMBER_CHARS = 4000  # a member's description beyond this is left to attack.json


def write_estimate_report(est: Estimate, folder: str | Path, title: str, settings: dict[str, Any],
                          case_text: str | None = None) -> dict[str, Path]:
    """estimate.{json,jsonl,html} under ``folder``: the Estimate, the run's settings and case file."""
    header = {"title": title, "settings": settings, "case_text": case_text}
    return publish(Path(folder) / "estimate.json", "estimate", header, "estimate.jsonl", [est.to_dict()])


def write_attack_report(result: AttackResult, folder: str | Path, title: str,
                        settings: dict[str, Any]) -> dict[str, Path]:
    """attack.{json,jsonl,html} under ``folder``: the member found, its estimate, the search's traces."""
    header = {**result.summary(), "title": title, "settings": settings,
              "final_estimate": result.estimate.to_dict()}
    rows = [{"restart": r + 1, "step": j, "surrogate_log10_p": value / math.log(10)}
            for r, trace in enumerate(result.history) for j, value in enumerate(trace)]
    return publish(Path(folder) / "attack.json", "attack", header, "attack.jsonl", rows)


def _warnings(est: Estimate) -> list[str]:
    state = interval_state(est)
    return ([state.text] if state.tone != "good" else []) + list(est.warnings)


def _is_estimate(value: Any) -> bool:
    return isinstance(value, dict) and "log10_p" in value and "ci_log10" in value


def _parts(diagnostics: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Estimates the result was made of, found in its diagnostics (methods, pilot, replicates)."""
    found: list[tuple[str, dict[str, Any]]] = []
    for key, value in diagnostics.items():
        if _is_estimate(value):
            found.append((key, value))
        elif isinstance(value, dict):
            found += [(f"{key}: {k}", v) for k, v in value.items() if _is_estimate(v)]
        elif isinstance(value, list):
            found += [(f"{key} {i + 1}", v) for i, v in enumerate(value) if _is_estimate(v)]
    return found


def _estimate_figure(est: Estimate) -> Figure:
    parts = _parts(est.diagnostics)
    fig, (ax,) = figure(figsize=(7.5, 4.0))
    title = "The estimate and the estimates it combines" if parts else "The estimate"
    plot = EstimatePlot(ax, f"{title} (bars: {100 * est.confidence:g}% CI)", "")
    plot.add([0], [est.log10_p], [est.ci_log10], f"{est.method} (the result)")
    if parts:
        plot.add(list(range(1, len(parts) + 1)), [float(p["log10_p"]) for _, p in parts],
                 [p["ci_log10"] for _, p in parts], "parts, from its diagnostics", marker="s")
    ax.set_xticks(range(len(parts) + 1), [est.method] + [name for name, _ in parts], fontsize=8)
    ax.set_xlim(-0.6, len(parts) + 0.6)
    plot.finish(loc="best")
    return Figure("log10 P(catastrophe)", png(fig), "the estimate with its confidence interval")


def estimate_page(header: dict[str, Any], rows: list[dict[str, Any]]) -> Page:
    """The page of an estimate report: headline, warnings, summary table, plot, case file."""
    blocks: list[Block] = []
    warnings: list[str] = []
    estimates = [Estimate.from_dict(row) for row in rows]
    for est in estimates:
        table = row_table(estimate_rows(est, header["settings"].get("seed")))
        blocks += [Heading(f"Estimate by {est.method}"), table, _estimate_figure(est)]
        warnings += _warnings(est)
    if header.get("case_text"):
        blocks += [Heading("Case file"), Paragraph(header["case_text"], preformatted=True)]
    headline = " | ".join(est.headline() for est in estimates)
    used = {f"{est.method} settings (as used)": est.settings for est in estimates}
    settings = {**header["settings"], **used}
    return Page("estimate", header["title"], headline, blocks, warnings, settings)


def _attack_figure(rows: list[dict[str, Any]], est: Estimate) -> Figure:
    fig, (ax,) = figure(figsize=(8, 4.4))
    plot = EstimatePlot(ax, "Attack: surrogate log10 P along each refinement, then the member's estimate",
                        "refinement step")
    for restart in sorted({r["restart"] for r in rows}):
        trace = [r for r in rows if r["restart"] == restart]
        plot.line([r["step"] for r in trace], [r["surrogate_log10_p"] for r in trace],
                  f"restart {restart} (surrogate)")
    last = max((r["step"] for r in rows), default=0)
    plot.add([last + 2], [est.log10_p], [est.ci_log10],
             f"member found, estimated by {est.method} ({100 * est.confidence:g}% CI)", color="black",
             marker="D")
    plot.finish(loc="best")
    return Figure("The search and its result", png(fig),
                  "surrogate traces of each restart and the final estimate")


def attack_page(header: dict[str, Any], rows: list[dict[str, Any]]) -> Page:
    """The page of an attack report: the worst member's estimate, the search traces, the member."""
    est = Estimate.from_dict(header["final_estimate"])
    member = json.dumps(header["member"])
    if len(member) > MEMBER_CHARS:
        member = member[:MEMBER_CHARS] + " ... (truncated; attack.json holds all of it)"
    blocks: list[Block] = [
        Heading("Estimate on the member found"),
        row_table(estimate_rows(est, header["settings"].get("seed"))), _attack_figure(rows, est),
        Heading("Member found"), Paragraph(f"Family: {header['constraint']}"),
        Paragraph(member),
    ]
    headline = f"Worst member found: {est.headline()}; {header['n_model_calls']:,} model calls in all"
    return Page("attack", header["title"], headline, blocks, _warnings(est), header["settings"])
