"""The estimation walkthrough behind ``tailguard demo``, in the shape of OpenTURNS' quickstart.

1. a case whose answer is known exactly: a linear model under a Gaussian input;
2. plain sampling on it, which with any affordable budget sees nothing and can
   only bound p from above;
3. a rare-event estimate (``method="auto"``) with its confidence interval, set
   against the exact answer;
4. a trained digits classifier under "real images plus noise" (NoisyEmpirical):
   the rare-event estimate, checked against plain sampling where p is still
   large enough to sample.

Everything uses built-in defaults and fixed seeds and runs in well under a minute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from rich.console import Console
from rich.table import Table
from scipy.special import log_ndtr

from .dists import Gaussian, NoisyEmpirical
from .estimate import estimate
from .models import digits_classifier, linear
from .result import Estimate
from .specs import ClassIs, OutputAbove

DIM = 16
THRESHOLD = 6.0  # the output w.x with |w| = 1 exceeds 6 standard deviations: p = Phi(-6) ~ 1e-9
NOISE_STD = 0.1


@dataclass(frozen=True)
class DemoBudgets:
    """Model-call budgets of the walkthrough's estimates."""

    plain: int = 100_000
    rare: int = 30_000
    reference: int = 300_000  # plain sampling as the check where p ~ 1e-4


def exact_log10_tail(threshold: float) -> float:
    """log10 P[N(0, 1) > threshold], accurate far into the tail."""
    return float(log_ndtr(-threshold)) / math.log(10)


def _row(table: Table, label: str, est: Estimate) -> None:
    low, high = est.ci_log10
    table.add_row(
        label,
        est.method,
        f"{est.log10_p:.2f}",
        f"[{low:.2f}, {high:.2f}]",
        f"{est.n_model_calls:,}",
        f"{est.seconds:.1f}",
    )


def _table(title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for name in ("step", "method", "log10 p", "95% CI (log10)", "model calls", "seconds"):
        table.add_column(name, justify="left" if name in ("step", "method") else "right")
    return table


def _verdict(console: Console, reference: float, est: Estimate, what: str) -> None:
    """Say whether the CI covers the reference value, and show the estimator's warnings."""
    low, high = est.ci_log10
    covered = low <= reference <= high
    colour = "green" if covered else "red"
    console.print(
        f"[{colour}]{what} {reference:.2f} is {'inside' if covered else 'outside'} the "
        f"{est.method} CI [{low:.2f}, {high:.2f}]; off by a factor "
        f"{10 ** abs(est.log10_p - reference):.2f}[/{colour}]"
    )
    for warning in est.warnings:
        console.print(f"[yellow]warning ({est.method}): {warning}[/yellow]")


def linear_gaussian_steps(console: Console, budgets: DemoBudgets) -> None:
    """Steps 1-3: exact answer, plain sampling's upper bound, rare-event estimate."""
    model = linear([[1.0 / math.sqrt(DIM)] * DIM])
    dist = Gaussian(torch.zeros(DIM, dtype=torch.float64))
    spec = OutputAbove(0, THRESHOLD)
    exact = exact_log10_tail(THRESHOLD)
    console.rule("[bold]1. A case with a known answer")
    console.print(
        f"model y = w.x with |w| = 1, x ~ N(0, I_{DIM}), catastrophe y > {THRESHOLD:g}\n"
        f"exact: p = Phi(-{THRESHOLD:g}) = {10**exact:.3e}   (log10 p = {exact:.3f})"
    )
    table = _table("2-3. Plain sampling, then a rare-event estimator")
    plain = estimate(model, dist, spec, method="mc", budget=budgets.plain, seed=0)
    rare = estimate(model, dist, spec, method="auto", budget=budgets.rare, seed=0)
    _row(table, "plain sampling", plain)
    _row(table, "rare-event (auto)", rare)
    console.print(table)
    console.print(
        f"plain sampling saw {plain.diagnostics.get('hits', 0)} catastrophes: "
        f"it only says p < {10 ** plain.ci_log10[1]:.1e}"
    )
    _verdict(console, exact, rare, "the exact log10 p")


def digits_steps(console: Console, budgets: DemoBudgets) -> None:
    """Step 4: a trained classifier under NoisyEmpirical noise, auto vs plain sampling."""
    from .io import digits_points

    console.rule("[bold]4. A trained digits classifier under noisy real inputs")
    model = digits_classifier()
    dist = NoisyEmpirical(digits_points(list(range(1, 10))), NOISE_STD)
    spec = ClassIs(0)
    console.print(
        f"an MLP trained on scikit-learn's digits; D = digits 1-9 plus N(0, {NOISE_STD:g}^2) "
        "pixel noise; catastrophe: the model answers 0"
    )
    table = _table("Rare-event estimate, checked by plain sampling")
    rare = estimate(model, dist, spec, method="auto", budget=budgets.rare, seed=0)
    plain = estimate(model, dist, spec, method="mc", budget=budgets.reference, seed=1)
    _row(table, "rare-event (auto)", rare)
    _row(table, "plain sampling", plain)
    console.print(table)
    _verdict(console, plain.log10_p, rare, "plain sampling's log10 p")


def run(console: Console | None = None, budgets: DemoBudgets | None = None) -> None:
    """Run the whole walkthrough, printing to ``console`` (stdout by default)."""
    console = console or Console()
    budgets = budgets or DemoBudgets()
    linear_gaussian_steps(console, budgets)
    digits_steps(console, budgets)
