"""Small pieces from which benchmark cases with exact truths are built (``cases``, ``stress``).

Every case fixes its parameters in float64 and computes its truth from the parameters
actually used, so these helpers build layers with exact weights, orthonormal
directions, normal tail points accurate far into the tail, and roots of monotone
functions that say clearly when a target is out of reach.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from scipy import optimize, special
from torch import Tensor, nn

from ..dists import Gaussian
from ..errors import InvalidArgumentError


def linear_layer(weight: Tensor, bias: Tensor | None = None) -> nn.Linear:
    """A float64 Linear layer with exactly these parameters: weight (out, in), bias (out,) or none."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def orthonormal_rows(k: int, d: int, g: torch.Generator) -> Tensor:
    """(k, d) with orthonormal rows: the Q of a Gaussian (d, k) matrix, transposed."""
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    return q.T.contiguous()


def standard_normal(d: int) -> Gaussian:
    """N(0, I_d) in float64, the D of every case that does not need another."""
    return Gaussian(torch.zeros(d, dtype=torch.float64))


def tail_z(log10_q: float) -> float:
    """z with P[N(0,1) > z] = 10**log10_q, accurate for tiny q."""
    return -float(special.ndtri_exp(log10_q * math.log(10.0)))


def target_label(target_log10_p: float) -> str:
    """A target as it appears in case names: -6.0 -> "1e-6"."""
    return f"1e{target_log10_p:g}"


def find_root(fn: Callable[[float], float], target: float, lo: float, hi: float, what: str,
              xtol: float = 1e-13, rtol: float = 1e-13) -> float:
    """x in [lo, hi] with fn(x) = target for a monotone fn; a clear error if out of reach."""
    f_lo, f_hi = fn(lo) - target, fn(hi) - target
    if f_lo * f_hi > 0:
        raise InvalidArgumentError(
            f"target_log10_p={target:g} is out of reach for this {what} "
            f"(log10 p runs from {fn(lo):.3g} to {fn(hi):.3g})"
        )
    return float(optimize.brentq(lambda x: fn(x) - target, lo, hi, xtol=xtol, rtol=rtol))
