"""What a hardening run reports: per-step training figures and periodic validated estimates.

``save`` writes report.json (the whole report, readable by ``HardenReport.from_dict``),
steps.jsonl (one line per training step and per evaluation, in the order they
happened), report.md, report.png and report.html; the HTML page is rendered
from report.json and steps.jsonl alone (``tailguard.report.render``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..report import publish
from ..report.log import ENVELOPE
from ..report.page import Figure, Heading, Page, group_warnings, markdown_blocks
from ..report.plots import EstimatePlot, figure, png, save_png
from ..report.rows import interval_text
from ..result import _decode, _encode

LOG_NAME = "steps.jsonl"


@dataclass
class HardenReport:
    """Per-step logs (``steps``) and interval evaluations (``evals``) of one run.

    steps: dicts with step, task_loss, batch_accuracy, adversary_log10_p (surrogate,
    worst pool member), deployment_log10_p (surrogate). evals: dicts with step,
    test_accuracy, held_out (list of estimates as dicts), deployment (estimate dict).
    An estimate dict has log10_p, ci_log10, method, n_model_calls, trusted and
    warnings (the last two absent in runs recorded before they were added).
    verdict: the independent judgement of the final model (``harden.judge.verdict``;
    empty in runs recorded before it was added).
    """

    settings: dict[str, Any]
    constraint: str
    seed: int
    steps: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    model_calls: int = 0
    verdict: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _encode(asdict(self))  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HardenReport:
        """From ``to_dict`` or a saved report.json (whose envelope: kind, versions, ... is skipped)."""
        return cls(**{k: v for k, v in _decode(data).items() if k not in ENVELOPE})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, indent=1)

    def log_rows(self) -> list[dict[str, Any]]:
        """Steps and evaluations as they happened: an evaluation after ``step`` steps follows that step."""
        rows = [({"type": "step", **s}, (s["step"] + 1, 0)) for s in self.steps]
        rows += [({"type": "eval", **e}, (e["step"], 1)) for e in self.evals]
        return [row for row, _ in sorted(rows, key=lambda pair: pair[1])]

    @classmethod
    def from_log(cls, header: dict[str, Any], rows: list[dict[str, Any]]) -> HardenReport:
        """The report from a saved header and steps.jsonl rows (no model calls)."""
        kept = {f.name for f in fields(cls)} - {"steps", "evals"}
        report = cls(**{k: v for k, v in header.items() if k in kept})
        for row in rows:
            entry = {k: v for k, v in row.items() if k != "type"}
            (report.steps if row["type"] == "step" else report.evals).append(entry)
        return report

    def final(self) -> dict[str, Any]:
        """The last evaluation (or an empty dict if there was none)."""
        return self.evals[-1] if self.evals else {}

    def markdown(self) -> str:
        """A short human-readable table of the evaluations ('<= x (none seen)': an upper bound)."""
        lines = [
            f"Adversary family: {self.constraint}",
            "",
            "| step | test acc | worst held-out log10 p [95% CI] | deployment log10 p [95% CI] |",
            "|---:|---:|---|---|",
        ]
        for ev in self.evals:
            held = _worst(ev.get("held_out"))
            dep = ev.get("deployment")
            lines.append(
                f"| {ev['step']} | {ev.get('test_accuracy', float('nan')):.4f} | {_fmt(held)} | {_fmt(dep)} |"
            )
        return "\n".join(lines + verdict_lines(self.verdict)) + "\n"

    def figure(self) -> Any:
        """log10 P(catastrophe) against step: surrogates as lines, validated estimates with CIs."""
        fig, (ax,) = figure(figsize=(8, 4.4))
        plot = EstimatePlot(ax, "Catastrophe probability during hardening (bars: 95% CI)", "training step")
        steps = [s["step"] for s in self.steps]
        plot.line(steps, [s["adversary_log10_p"] for s in self.steps],
                  "adversary, worst pool member (surrogate)")
        if any("deployment_log10_p" in s for s in self.steps):
            plot.line(steps, [s.get("deployment_log10_p", float("nan")) for s in self.steps],
                      "deployment D (surrogate)", ls=":")
        offset = 0.01 * max(steps or [1])
        for i, (key, label, marker) in enumerate((("deployment", "deployment D, estimated", "o"),
                                                   ("held_out", "worst held-out member, estimated", "s"))):
            points = [(ev["step"] + i * offset, worst) for ev in self.evals
                      if (worst := _worst(ev.get(key))) is not None]
            if points:
                plot.add([x for x, _ in points], [e["log10_p"] for _, e in points],
                         [e["ci_log10"] for _, e in points], label, marker=marker)
        plot.finish(loc="best")
        return fig

    def plot(self, path: str | Path) -> Path:
        """The figure as a PNG file."""
        return save_png(self.figure(), path)

    def save(self, directory: str | Path) -> dict[str, Path]:
        """Write report.{json,md,png,html} and steps.jsonl into ``directory`` (created if missing)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = publish(directory / "report.json", "harden", self.to_dict(), LOG_NAME, self.log_rows())
        paths["markdown"] = directory / "report.md"
        paths["markdown"].write_text(self.markdown())
        paths["plot"] = self.plot(directory / "report.png")
        return paths


def harden_page(header: dict[str, Any], rows: list[dict[str, Any]]) -> Page:
    """The HTML page of a saved run, from report.json and steps.jsonl."""
    report = HardenReport.from_log(header, rows)
    final = report.final()
    dep, held = final.get("deployment"), _worst(final.get("held_out"))
    headline = (f"{len(report.steps)} steps in {report.seconds:.0f} s, {report.model_calls:,} model calls. "
                f"Last evaluation (step {final.get('step', '-')}): worst held-out member {_fmt(held)}, "
                f"deployment {_fmt(dep)}.") if final else f"{len(report.steps)} steps; no evaluation."
    fig = report.figure()
    blocks = [Heading("Evaluations"), *markdown_blocks(report.markdown()),
              Figure("log10 P(catastrophe) against training step", png(fig),
                     "surrogate curves of the adversary and deployment D with the validated estimates")]
    settings = {"seed": report.seed, "adversary family": report.constraint, **report.settings}
    return Page("harden", "Hardening run", headline, blocks, _warnings(report), settings)


def _warnings(report: HardenReport) -> list[str]:
    found = []
    for ev in report.evals:
        named = [("deployment D", ev.get("deployment"))]
        named += [(f"held-out member {i + 1}", e) for i, e in enumerate(ev.get("held_out") or [])]
        for name, est in named:
            if not est:
                continue
            where = f"step {ev['step']}, {name}"
            found += [(where, w) for w in est.get("warnings", [])]
            if est.get("trusted") is False and not est.get("warnings"):
                found.append((where, "interval NOT trusted"))
    return group_warnings(found)


def _worst(entry: dict[str, Any] | list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """An estimate dict, or the worst of a list of them: highest estimate, then highest upper end."""
    if isinstance(entry, list):
        return max(entry, key=lambda e: (e["log10_p"], e["ci_log10"][1]), default=None)
    return entry


def _fmt(est: dict[str, Any] | None) -> str:
    return interval_text(est["log10_p"], est["ci_log10"]) if est else "-"


def verdict_lines(verdict: dict[str, Any]) -> list[str]:
    """The independent verdict as markdown: training judge beside the independent ones, fresh attacks."""
    if not verdict:
        return []
    lines = [
        "",
        "Final model, judged by estimators training did not descend (verdict: plain sampling where it "
        "saw 30 catastrophes, else splitting capped by plain sampling's exact upper bound):",
        "",
        f"| distribution | training judge ({verdict['training_judge']}) | splitting | plain sampling "
        "| verdict | agree |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in verdict["distributions"].items():
        cells = [_fmt(row[k]) for k in ("training", "splitting", "sampling", "verdict")]
        lines.append(f"| {name} | {' | '.join(cells)} | {'yes' if row['agree'] else '**NO**'} |")
    if verdict["disagreements"]:
        lines += ["", f"**Disagreement** on: {', '.join(verdict['disagreements'])}."]
    if verdict.get("unresolved"):
        lines += ["", "**Unresolved** (a bound only, not resolved down to the judge's level): "
                  f"{', '.join(verdict['unresolved'])}."]
    if verdict["attacks"]:
        lines += ["", "Fresh attacks on the final model (new seeds):", "",
                  "| family | search | in training's threat model | best member log10 p [95% CI] |",
                  "|---|---|---|---|"]
        lines += [f"| {a['family']} | {a.get('search', 'tailguard.attack')} | "
                  f"{'yes' if a['in_threat_model'] else 'no'} | {_fmt(a)} |" for a in verdict["attacks"]]
    return lines
