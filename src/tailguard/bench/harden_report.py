"""Tables and plots for the hardening benchmark (records from ``run_harden_benchmark``)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..result import _encode
from .report import git_revision, versions

FIXED_KEYS = {"task", "method", "seconds", "train_set_size", "family", "test_accuracy", "status", "reason"}


def _targets(record: dict[str, Any]) -> list[str]:
    """The distributions a record was judged on: deployment first, then the triggers."""
    return [k for k in record if k not in FIXED_KEYS]


def _cell(est: dict[str, Any]) -> str:
    low, high = est["ci_log10"]
    if not math.isfinite(est["log10_p"]):
        return f"< {high:.1f}"
    return f"{est['log10_p']:.2f} [{low:.2f}, {high:.2f}]"


def task_table(records: Sequence[dict[str, Any]], task: str) -> str:
    """One markdown table: a row per method, a column per judged distribution (log10 p [95% CI])."""
    rows = [r for r in records if r["task"] == task and r.get("status") != "skipped"]
    if not rows:
        return ""
    targets = _targets(rows[0])
    head = ["method", "test acc", "seconds", *targets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], f"{r['test_accuracy']:.4f}", f"{r['seconds']:.0f}"]
        cells += [_cell(r[t]) for t in targets]
        lines.append("| " + " | ".join(cells) + " |")
    skipped = [r for r in records if r["task"] == task and r.get("status") == "skipped"]
    lines += [f"\n{r['method']}: not applicable ({r['reason']})" for r in skipped]
    return "\n".join(lines) + "\n"


def plot(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """Per task, log10 P(catastrophe) on each judged distribution, one marker per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in records))
    fig, axes = plt.subplots(len(tasks), 1, figsize=(10, 3.6 * len(tasks)), squeeze=False)
    for ax, task in zip(axes[:, 0], tasks, strict=True):
        rows = [r for r in records if r["task"] == task and r.get("status") != "skipped"]
        targets = _targets(rows[0])
        for j, r in enumerate(rows):
            xs = [i + (j - len(rows) / 2) * 0.08 for i in range(len(targets))]
            ys, lows, highs = [], [], []
            for t in targets:
                est = r[t]
                y = est["log10_p"] if math.isfinite(est["log10_p"]) else est["ci_log10"][1]
                low = est["ci_log10"][0] if math.isfinite(est["ci_log10"][0]) else y
                ys.append(y)
                lows.append(y - low)
                highs.append(est["ci_log10"][1] - y)
            ax.errorbar(xs, ys, yerr=[lows, highs], fmt="o", ms=4, capsize=2, label=r["method"])
        ax.axhline(-3, color="grey", ls=":", lw=1)
        ax.axhline(-9, color="grey", ls="--", lw=1)
        ax.set_xticks(range(len(targets)))
        ax.set_xticklabels([t.replace(" at ", "\nat ") for t in targets], fontsize=7)
        ax.set_ylabel("log10 P(catastrophe)")
        ax.set_title(
            f"{task}: catastrophe probability after each method (bars: 95% CI; zero hits at upper bound)"
        )
        ax.legend(fontsize=7, ncol=3)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_harden_report(
    records: Sequence[dict[str, Any]], out_dir: str | Path, config: dict[str, Any]
) -> dict[str, Path]:
    """harden.json (records + config + provenance), harden.md (tables) and harden.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"config": config, "versions": versions(), "git": git_revision(), "records": list(records)}
    paths = {"json": out / "harden.json", "markdown": out / "harden.md", "plot": out / "harden.png"}
    paths["json"].write_text(json.dumps(_encode(payload), indent=1, allow_nan=False))
    tasks = list(dict.fromkeys(r["task"] for r in records))
    body = [
        "# Hardening benchmark",
        "",
        "log10 P(catastrophe) [95% CI] by the validated estimators; "
        "'< x' means no catastrophe was found and x is the upper end of the CI.",
        "",
    ]
    for task in tasks:
        body += [f"## {task}", "", task_table(records, task), ""]
    paths["markdown"].write_text("\n".join(body))
    plot(records, paths["plot"])
    return paths
