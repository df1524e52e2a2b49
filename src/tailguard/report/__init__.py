"""Reports a person reads: one static HTML page per run, rebuilt from the run's JSON and JSONL alone.

``publish`` writes a run's JSON header and JSONL log (``report.log``) and then
renders the page from those files, so what the page shows is exactly what the
files hold; ``render`` rebuilds pages later without a model call. A page builder
per kind of run turns (header, rows) into a ``Page`` (``report.page``), and
``report.html`` writes it; every plot of estimates is drawn by
``report.plots.EstimatePlot``.

    tailguard.report.render("runs/digits")       # -> [Path("runs/digits/report.html")]
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError
from .html import write_html
from .log import read_log, write_log
from .page import Page

#: kind of run -> "module:function" building its page from (header, rows); imported when rendered,
#: so that the modules that write reports can import this one
PAGES = {
    "estimate": "tailguard.report.pages:estimate_page",
    "attack": "tailguard.report.pages:attack_page",
    "harden": "tailguard.harden.report:harden_page",
    "bench-estimation": "tailguard.bench.report:estimation_page",
    "bench-suite": "tailguard.bench.report:suite_page",
    "bench-harden": "tailguard.bench.harden_report:harden_bench_page",
}
Builder = Callable[[dict[str, Any], list[dict[str, Any]]], Page]


def _builder(kind: str) -> Builder:
    module, name = PAGES[kind].split(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def render_file(header_path: str | Path) -> Path:
    """Rebuild the page of one report from its JSON header and JSONL log; returns the HTML's path."""
    header_path = Path(header_path)
    header, rows = read_log(header_path)
    if header.get("kind") not in PAGES:
        raise InvalidArgumentError(f"{header_path} is not a tailguard report (no known 'kind')")
    page = _builder(header["kind"])(header, rows)
    git = header.get("git") or {}
    provenance = {**header.get("versions", {}), "git commit": git.get("commit"),
                  "uncommitted changes": git.get("dirty")}
    page = dataclasses.replace(page, provenance=provenance, sources=(header_path.name, header["log"]))
    return write_html(page, header_path.with_suffix(".html"))


def _is_report(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("kind") in PAGES and "log" in data


def render(path: str | Path) -> list[Path]:
    """Rebuild every report's HTML under ``path`` (a folder, or one report's JSON), without model calls."""
    path = Path(path)
    if path.is_file():
        return [render_file(path)]
    if not path.is_dir():
        raise InvalidArgumentError(f"path {path} is neither a report's JSON nor a folder")
    headers = sorted(p for p in path.glob("*.json") if _is_report(p))
    if not headers:
        raise InvalidArgumentError(f"path {path} holds no tailguard report (a JSON with a kind and a log)")
    return [render_file(p) for p in headers]


def publish(header_path: Path, kind: str, header: dict[str, Any], log_name: str,
            rows: Iterable[dict[str, Any]]) -> dict[str, Path]:
    """Write the run's JSON header and JSONL log, then its HTML page from them: {json, log, html}."""
    log = write_log(header_path, kind, header, log_name, rows)
    return {"json": header_path, "log": log, "html": render_file(header_path)}


__all__ = ["PAGES", "publish", "render", "render_file"]
