"""When a hardening run may stop: the family's worst member, searched for afresh, is below the target.

The pool of ``FamilyAdversary`` only knows the members it has met, and its
surrogate is what the model descends, so a falling surrogate says little about
the family's worst member. After its minimum number of steps a run therefore
checks itself the way the judge will: ``tailguard.attack`` searches the whole
family from fresh starts (a seed of its own, never the judge's), and plain
sampling on the member it found gives an exact interval. The run stops once
that interval's upper end is below the target on ``checks_to_pass`` checks in a
row; after a check that fails the member found joins
the pool (in place of its weakest member) and training goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._logspace import LN10, binomial_log_ci
from ..attack import AttackSettings, attack, check_attack_arguments
from ..errors import BudgetError
from ..families.base import Family
from ..specs import Spec
from .adversary import FamilyAdversary
from .judge import estimate_row

#: the estimator of the member found: plain sampling, which training never descends
CHECK_METHOD = "mc"


def check_resolution(budget: int, target: float) -> None:
    """BudgetError unless ``budget`` calls can show a member below ``target`` (natural log).

    The search keeps ``AttackSettings.final_fraction`` of the budget for plain
    sampling on the member it found; with no catastrophe in those draws the exact
    95 % upper bound must already be below the target, or the check could never pass.
    """
    check_attack_arguments(budget, 0, {"method": CHECK_METHOD})
    draws = int(budget * AttackSettings.final_fraction)
    bound = binomial_log_ci(0, draws, 0.95)[1]
    if bound > target:
        raise BudgetError(
            f"check_budget {budget:,} leaves {draws:,} draws of plain sampling, whose bound with no "
            f"catastrophe seen (10^{bound / LN10:.2f}) is above family_target (10^{target / LN10:.2f}); "
            "raise check_budget or family_target"
        )


@dataclass
class FamilyCheck:
    """Searches ``family`` on ``model`` with ``budget`` calls; ``target``: ln of the bound to meet."""

    model: nn.Module
    spec: Spec
    family: Family
    adversary: FamilyAdversary
    budget: int
    target: float
    seed: int

    def __call__(self, step: int) -> dict[str, Any]:
        """The check after ``step`` steps; its record says whether the target was ``met``."""
        seed = (self.seed + 1) * 1_000_003 + step
        found = attack(self.model, self.spec, self.family, budget=self.budget, seed=seed, method=CHECK_METHOD)
        met = found.estimate.ci_log10[1] <= self.target / LN10
        if not met:
            self.adversary.admit_in_place_of_weakest(found.params, torch.Generator().manual_seed(seed))
        return {"member": self.family.describe(found.params), **estimate_row(found.estimate),
                "n_model_calls": found.n_model_calls, "met": bool(met)}


def target_met(evals: list[dict[str, Any]], in_a_row: int) -> bool:
    """Whether the last ``in_a_row`` family checks of a run's evaluations all met their target.

    One search that comes back empty-handed may have been unlucky; each check
    starts from other seeds, so consecutive passes are independent tries.
    """
    checks = [ev["family_check"] for ev in evals if "family_check" in ev][-in_a_row:]
    return len(checks) == in_a_row and all(c["met"] for c in checks)
