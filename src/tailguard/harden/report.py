"""What a hardening run reports: per-step training figures and periodic validated estimates."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..result import _decode, _encode


@dataclass
class HardenReport:
    """Per-step logs (``steps``) and interval evaluations (``evals``) of one run.

    steps: dicts with step, task_loss, batch_accuracy, adversary_log10_p (surrogate,
    worst pool member), deployment_log10_p (surrogate). evals: dicts with step,
    test_accuracy, held_out (list of estimates as dicts), deployment (estimate dict).
    """

    settings: dict[str, Any]
    constraint: str
    seed: int
    steps: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    model_calls: int = 0

    def to_dict(self) -> dict[str, Any]:
        return _encode(asdict(self))  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HardenReport:
        return cls(**_decode(data))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, indent=1)

    def final(self) -> dict[str, Any]:
        """The last evaluation (or an empty dict if there was none)."""
        return self.evals[-1] if self.evals else {}

    def markdown(self) -> str:
        """A short human-readable table of the evaluations."""
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
        return "\n".join(lines) + "\n"

    def plot(self, path: str | Path) -> Path:
        """log10 P(catastrophe) against step: surrogate on the adversary, estimates with CIs."""
        path = Path(path)
        from ..errors import require_extra

        require_extra("matplotlib", "bench")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        steps = [s["step"] for s in self.steps]
        ax.plot(steps, [s["adversary_log10_p"] for s in self.steps], lw=1, label="adversary (surrogate)")
        for key, label, marker in (
            ("deployment", "deployment D", "o"),
            ("held_out", "worst held-out member", "s"),
        ):
            points: list[tuple[int, dict[str, Any]]] = []
            for ev in self.evals:
                worst = _worst(ev.get(key))
                if worst is not None:
                    points.append((ev["step"], worst))
            if not points:
                continue
            # a zero-hit estimate is drawn at its upper bound, with a one-sided bar
            shown = [e["log10_p"] if math.isfinite(e["log10_p"]) else e["ci_log10"][1] for _, e in points]
            below = [
                y - e["ci_log10"][0] if math.isfinite(e["ci_log10"][0]) else 0.0
                for y, (_, e) in zip(shown, points, strict=True)
            ]
            above = [e["ci_log10"][1] - y for y, (_, e) in zip(shown, points, strict=True)]
            ax.errorbar(
                [s for s, _ in points],
                shown,
                yerr=[below, above],
                marker=marker,
                ls="--",
                capsize=3,
                label=label,
            )
        ax.set_xlabel("training step")
        ax.set_ylabel("log10 P(catastrophe)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path

    def save(self, directory: str | Path) -> dict[str, Path]:
        """Write report.json, report.md and report.png into ``directory`` (created if missing)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = {"json": directory / "report.json", "markdown": directory / "report.md"}
        paths["json"].write_text(self.to_json())
        paths["markdown"].write_text(self.markdown())
        paths["plot"] = self.plot(directory / "report.png")
        return paths


def _worst(entry: dict[str, Any] | list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """An estimate dict, or the highest of a list of them (the worst held-out member)."""
    if isinstance(entry, list):
        return max(entry, key=lambda e: e["log10_p"], default=None)
    return entry


def _fmt(est: dict[str, Any] | None) -> str:
    if not est:
        return "-"
    low, high = est["ci_log10"]
    return f"{est['log10_p']:.2f} [{low:.2f}, {high:.2f}]"
