"""The attack-and-harden walkthrough behind ``tailguard demo``: a backdoor found and removed.

1. train a digits classifier on data where 5 % of the images carry a 3x3 trigger
   labelled 0: clean accuracy looks fine;
2. estimate P(predict 0 on a non-zero digit) on deployment inputs (test digits
   plus noise) with a CI;
3. attack: search every 3x3 patch at every position for the worst one — it finds
   the planted trigger, on which the catastrophe is almost certain;
4. harden against that adversary (never told the trigger);
5. re-estimate on deployment, re-attack, and check unseen triggers;
6. write a report (markdown + plots) to the output folder.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from .attack import AttackResult, attack
from .bench.hardening import NOISE_STD, digits_task
from .estimate import estimate
from .harden import harden
from .result import Estimate


def _samples_figure(before: AttackResult, after: AttackResult, path: Path) -> Path:
    """Eight draws from the adversary found before hardening, and eight after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 8, figsize=(10, 2.8))
    for row, (label, att) in enumerate((("before", before), ("after", after))):
        for col, img in enumerate(att.samples(8, seed=1)):
            ax = axes[row, col]
            ax.imshow(img.clamp(0, 1).numpy(), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(f"{label}\n1e{att.estimate.log10_p:.1f}", fontsize=8)
    fig.suptitle("draws from the worst patch distribution found (left label: its P(catastrophe))")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _row(label: str, est: Estimate) -> list[str]:
    low, high = est.ci_log10
    shown = f"{est.log10_p:.2f}" if math.isfinite(est.log10_p) else f"< {high:.2f}"
    return [label, shown, f"[{low:.2f}, {high:.2f}]", est.method, f"{est.n_model_calls:,}"]


def run(
    out_dir: Path = Path("tailguard-demo"), steps: int = 600, console: Console | None = None
) -> dict[str, Any]:
    """Run the walkthrough, print it, and write report.md, report.png and adversary.png."""
    con = console or Console()
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    con.rule("[bold]attack and harden: a backdoored digits classifier")
    task = digits_task("mlp")
    model, spec = task.start_model, task.spec
    with torch.no_grad():
        acc_before = float((model(task.test[0]).argmax(1) == task.test[1]).float().mean())
    con.print(f"trained on {task.train_set_size} digits, 5% poisoned; clean test accuracy {acc_before:.3f}")
    planted = next(iter(task.triggers))
    rows = [_row("deployment, before", estimate(model, task.deployment, spec, budget=100_000, seed=0))]
    rows.append(
        _row(f"{planted}, before", estimate(model, task.triggers[planted], spec, budget=100_000, seed=0))
    )
    con.print("searching all 3x3 patches at all positions for the worst one ...")
    att_before = attack(model, spec, task.family, budget=200_000, seed=0)
    where = att_before.family.describe(att_before.params)
    con.print(f"worst member: patch at row {where['row']}, col {where['col']}; {att_before.estimate}")
    con.print(f"hardening for {steps} steps against the adversary (the trigger is never shown) ...")
    res = harden(
        model,
        train=task.train,
        spec=spec,
        family=task.family,
        deployment=task.train_deployment,
        test=task.test,
        steps=steps,
        eval_every=steps,
        eval_method="mc",
        eval_budget=5_000,
        held_out=2,
        progress=True,
        seed=0,
    )
    hardened = res.model
    with torch.no_grad():
        acc_after = float((hardened(task.test[0]).argmax(1) == task.test[1]).float().mean())
    att_after = attack(hardened, spec, task.family, budget=200_000, seed=0)
    rows.append(_row("deployment, after", estimate(hardened, task.deployment, spec, budget=100_000, seed=0)))
    for name, dist in task.triggers.items():
        rows.append(_row(f"{name}, after", estimate(hardened, dist, spec, budget=100_000, seed=0)))
    rows.append(_row("worst patch found, before", att_before.estimate))
    rows.append(_row("worst patch found, after", att_after.estimate))
    table = Table(
        "distribution",
        "log10 p",
        "95% CI",
        "method",
        "model calls",
        title=f"P(predict 0 on a non-zero digit), noise std {NOISE_STD}",
    )
    for row in rows:
        table.add_row(*row)
    con.print(table)
    con.print(f"clean test accuracy: {acc_before:.3f} before, {acc_after:.3f} after")
    paths = res.report.save(out_dir)
    _samples_figure(att_before, att_after, out_dir / "adversary.png")
    lines = [
        "# tailguard demo: a backdoor found and removed",
        "",
        f"Clean test accuracy {acc_before:.4f} before hardening, {acc_after:.4f} after.",
        "",
        "| distribution | log10 p | 95% CI | method | model calls |",
        "|---|---|---|---|---|",
        *["| " + " | ".join(r) + " |" for r in rows],
        "",
        "![adversary samples](adversary.png)",
        "",
        "## Training",
        "",
        res.report.markdown(),
        "![training curve](report.png)",
        "",
        f"Total time: {time.perf_counter() - started:.0f} s.",
        "",
    ]
    (out_dir / "demo.md").write_text("\n".join(lines))
    con.print(f"report written to {out_dir / 'demo.md'}")
    return {"paths": paths, "rows": rows, "accuracy": (acc_before, acc_after)}
