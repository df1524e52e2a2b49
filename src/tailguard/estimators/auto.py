"""``method="auto"``: pick the estimator that suits the model, D and spec.

Order of preference (measured in benchmarks/estimate.md): importance sampling
when D has a density and the spec is graded, then splitting when D has a
reversible move, then plain sampling. Black-box predicates get plain sampling,
the only method that needs nothing but a yes/no answer.
"""

from __future__ import annotations

from torch import nn

from ..dists.base import Distribution
from ..specs import Spec
from .base import available, build

PREFERENCE = ("is", "splitting", "mc")


def choose_method(model: nn.Module, dist: Distribution, spec: Spec, budget: int) -> str:
    """Name of the first estimator in PREFERENCE that supports these inputs and budget."""
    for name in PREFERENCE:
        if name not in available():
            continue
        est = build(name, {})
        if est.unsupported_reason(model, dist, spec) is None and budget >= est.min_budget():
            return name
    return "mc"
