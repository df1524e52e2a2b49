"""otbenchmark's 26 reliability problems, written in torch: marginals and limit states.

Each problem is failure iff g(X) < t for independent marginals X (normal, uniform,
log-normal, Gumbel, exponential). A marginal maps a standard normal z to its own law
through its inverse CDF of Phi(z), in torch so that gradients flow wherever g is
differentiable, and names the same law in OpenTURNS for the baselines that run the
original problem. ``bench.reliability`` turns these into tailguard cases with checked
truths.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


# --- marginals: inverse CDF of Phi(z) in torch, and the same law in OpenTURNS -----------------
@dataclass(frozen=True)
class Normal:
    """N(mean, std)."""

    mean: float
    std: float

    def from_normal(self, z: Tensor) -> Tensor:
        return self.mean + self.std * z

    def openturns(self, ot: Any) -> Any:
        return ot.Normal(self.mean, self.std)


@dataclass(frozen=True)
class Uniform:
    """U(low, high)."""

    low: float
    high: float

    def from_normal(self, z: Tensor) -> Tensor:
        return self.low + (self.high - self.low) * torch.special.ndtr(z)

    def openturns(self, ot: Any) -> Any:
        return ot.Uniform(self.low, self.high)


@dataclass(frozen=True)
class LogNormal:
    """Log-normal given by its own mean and std (OpenTURNS' LogNormalMuSigma, gamma = 0)."""

    mean: float
    std: float

    def log_params(self) -> tuple[float, float]:
        """(mu, sigma) of log X."""
        var = math.log1p((self.std / self.mean) ** 2)
        return math.log(self.mean) - 0.5 * var, math.sqrt(var)

    def from_normal(self, z: Tensor) -> Tensor:
        mu, sigma = self.log_params()
        return torch.exp(mu + sigma * z)

    def openturns(self, ot: Any) -> Any:
        return ot.LogNormalMuSigma(self.mean, self.std, 0.0).getDistribution()


def _log_minus_log_ndtr(z: Tensor) -> Tensor:
    """log(-log Phi(z)), finite for every z (also far above 8, where Phi(z) rounds to 1).

    Above 8, -log Phi(z) = Q(z) (1 + Q(z)/2 + ...) with Q(z) < 1e-15, so log Q(z) is
    exact to rounding. Each branch sees a clamped input so that neither produces inf
    (whose gradient would turn torch.where's into NaN).
    """
    low = torch.log(-torch.special.log_ndtr(z.clamp(max=8.0)))
    high = torch.special.log_ndtr(-z.clamp(min=8.0))
    return torch.where(z > 8.0, high, low)


@dataclass(frozen=True)
class Gumbel:
    """Gumbel (maximum) given by its mean and std (OpenTURNS' GumbelMuSigma)."""

    mean: float
    std: float

    def scale_location(self) -> tuple[float, float]:
        """(beta, gamma) with CDF exp(-exp(-(x - gamma) / beta))."""
        beta = self.std * math.sqrt(6.0) / math.pi
        return beta, self.mean - 0.5772156649015329 * beta

    def from_normal(self, z: Tensor) -> Tensor:
        beta, gamma = self.scale_location()
        return gamma - beta * _log_minus_log_ndtr(z)

    def openturns(self, ot: Any) -> Any:
        return ot.GumbelMuSigma(self.mean, self.std).getDistribution()


@dataclass(frozen=True)
class Exponential:
    """Exponential with this rate, starting at 0."""

    rate: float

    def from_normal(self, z: Tensor) -> Tensor:
        return -torch.special.log_ndtr(-z) / self.rate  # -log(1 - Phi(z)), exact in both tails

    def openturns(self, ot: Any) -> Any:
        return ot.Exponential(self.rate)


Marginal = Normal | Uniform | LogNormal | Gumbel | Exponential


# --- limit states g(x), x (n, d) in physical space -> (n,) --------------------------------------
def _min(*parts: Tensor) -> Tensor:
    return torch.stack(parts).amin(dim=0)


def _max(*parts: Tensor) -> Tensor:
    return torch.stack(parts).amax(dim=0)


def _rp8(x: Tensor) -> Tensor:
    x1, x2, x3, x4, x5, x6 = x.unbind(1)
    return x1 + 2 * x2 + 2 * x3 + x4 - 5 * x5 - 5 * x6


def _rp14(x: Tensor) -> Tensor:
    x1, x2, x3, x4, x5 = x.unbind(1)
    return x1 - 32 / (math.pi * x2**3) * torch.sqrt(x3**2 * x4**2 / 16 + x5**2)


def _rp22(x: Tensor) -> Tensor:
    x1, x2 = x.unbind(1)
    return 2.5 - (x1 + x2) / math.sqrt(2) + 0.1 * (x1 - x2) ** 2


def _rp24(x: Tensor) -> Tensor:
    x1, x2 = x.unbind(1)
    return 2.5 - 0.2357 * (x1 - x2) + 0.00463 * (x1 + x2 - 20) ** 4


def _rp25(x: Tensor) -> Tensor:
    x1, x2 = x.unbind(1)
    return _max(x1**2 - 8 * x2 + 16, -16 * x1 + x2 + 32)


def _product(x: Tensor) -> Tensor:
    return x[:, 0] * x[:, 1]


def _rp31(x: Tensor) -> Tensor:
    x1, x2 = x.unbind(1)
    return 2 - x2 + 256 * x1**4


def _rp33(x: Tensor) -> Tensor:
    x1, x2, x3 = x.unbind(1)
    return _min(-x1 - x2 - x3 + 3 * math.sqrt(3), -x3 + 3)


def _rp35(x: Tensor) -> Tensor:
    x1, x2 = x.unbind(1)
    return _min(2 - x2 + torch.exp(-0.1 * x1**2) + (0.2 * x1) ** 4, 4.5 - x1 * x2)


def _rp38(x: Tensor) -> Tensor:
    x1, x2, x3, x4, x5, x6, x7 = x.unbind(1)
    ratio = (x4**2 - 4 * x5 * x6 * x7**2 + x4 * (x6 + 4 * x5 + 2 * x6 * x7)) / (
        x4 * x5 * (x4 + x6 + 2 * x6 * x7))
    return 15.59e4 - x1 * x2**3 / (2 * x3**3) * ratio


def _rp53(x: Tensor) -> Tensor:
    x1, x2 = x.unbind(1)
    return torch.sin(5 * x1 / 2) + 2 - (x1 * x1 + 4) * (x2 - 1) / 20


def _rp54(x: Tensor) -> Tensor:
    return x.sum(dim=1) - 8.951


def _rp55(x: Tensor) -> Tensor:
    u = x[:, 0] - x[:, 1]
    return _min(0.2 + 0.6 * u**4 - u / math.sqrt(2), 0.2 + 0.6 * u**4 + u / math.sqrt(2),
                u + 5 / math.sqrt(2) - 2.2, -u + 5 / math.sqrt(2) - 2.2)


def _rp57(x: Tensor) -> Tensor:
    x1, x2 = x.unbind(1)
    return _min(_max(-(x1**2) + x2**3 + 3, 2 - x1 - 8 * x2), (x1 + 3) ** 2 + (x2 + 3) ** 2 - 4)


def _rp60(x: Tensor) -> Tensor:
    x1, x2, x3, x4, x5 = x.unbind(1)
    any_half = _min(x2 - x5 / 2, x3 - x5 / 2, x4 - x5 / 2)
    pairs = _max(x4 - x5, _min(x2 - x5, x3 - x5))
    return _min(x1 - x5, _max(any_half, pairs))


def _rp63(x: Tensor) -> Tensor:
    return 0.1 * (x[:, 1:] ** 2).sum(dim=1) - 4.5 - x[:, 0]


def _rp75(x: Tensor) -> Tensor:
    return 3 - x[:, 0] * x[:, 1]


def _rp77(x: Tensor) -> Tensor:
    x1, x2, x3 = x.unbind(1)
    return torch.where(x3 <= 5.0, x1 - x2 - x3, x3 - x2)


def _rp89(x: Tensor) -> Tensor:
    x1, x2 = x.unbind(1)
    return _min(-(x1**2) - x2 + 8, -x1 / 5 - x2 + 6)


def _rp91(x: Tensor) -> Tensor:
    x1, x2, x3, x4, x5 = x.unbind(1)
    g1 = (0.847 + 0.96 * x2 + 0.986 * x3 - 0.216 * x4 + 0.077 * x2**2 + 0.11 * x3**2
          + (7 / 378) * x4**2 - x3 * x2 - 0.106 * x2 * x4 - 0.11 * x3 * x4)
    g2 = 84000 * x1 / torch.sqrt(x3**2 + x4**2 - x3 * x4 + 3 * x5**2) - 1
    g3 = 84000 * x1 / torch.abs(x4) - 1
    return _min(g1, g2, g3)


def _rp107(x: Tensor) -> Tensor:
    return 5 * math.sqrt(10) - x.sum(dim=1)


def _rp110(x: Tensor) -> Tensor:
    x1, x2 = x.unbind(1)
    return _min(torch.where(x1 <= 3.5, 0.85 - 0.1 * x1, 4 - x1),
                torch.where(x2 <= 2.0, 2.3 - x2, 0.5 - 0.1 * x2))


def _rp111(x: Tensor) -> Tensor:
    return 12.5 - torch.abs(x[:, 0] * x[:, 1])


def _four_branch(x: Tensor) -> Tensor:
    x1, x2 = x.unbind(1)
    bowl = 3 + 0.1 * (x1 - x2) ** 2
    return _min(bowl - (x1 + x2) / math.sqrt(2), bowl + (x1 + x2) / math.sqrt(2),
                x1 - x2 + 7 / math.sqrt(2), x2 - x1 + 7 / math.sqrt(2))


def _difference(x: Tensor) -> Tensor:
    return x[:, 0] - x[:, 1]


def _axial_beam(x: Tensor) -> Tensor:
    return x[:, 0] - x[:, 1] / (math.pi * 100.0)


# --- the problems -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One otbenchmark problem: failure iff limit_state(X) < threshold, X ~ independent marginals.

    ``openturns_formula`` (inputs x1..xd) replaces otbenchmark's own symbolic
    function where that no longer parses in OpenTURNS.
    """

    name: str
    otbenchmark_class: str
    marginals: tuple[Marginal, ...]
    limit_state: Callable[[Tensor], Tensor]
    threshold: float = 0.0
    openturns_formula: str | None = None

    @property
    def dim(self) -> int:
        return len(self.marginals)


_STD2 = (Normal(0.0, 1.0),) * 2
PROBLEMS: tuple[Problem, ...] = (
    Problem("RP8", "ReliabilityProblem8", (LogNormal(120.0, 12.0),) * 4
            + (LogNormal(50.0, 10.0), LogNormal(40.0, 8.0)), _rp8),
    Problem("RP14", "ReliabilityProblem14", (Uniform(70.0, 80.0), Normal(39.0, 0.1),
            Gumbel(1500.0, 350.0), Normal(400.0, 0.1), Normal(250000.0, 35000.0)), _rp14),
    Problem("RP22", "ReliabilityProblem22", _STD2, _rp22),
    Problem("RP24", "ReliabilityProblem24", (Normal(10.0, 3.0),) * 2, _rp24),
    Problem("RP25", "ReliabilityProblem25", _STD2, _rp25),
    Problem("RP28", "ReliabilityProblem28", (Normal(78064.0, 11710.0), Normal(0.0104, 0.00156)),
            _product, threshold=146.14),
    Problem("RP31", "ReliabilityProblem31", _STD2, _rp31),
    Problem("RP33", "ReliabilityProblem33", (Normal(0.0, 1.0),) * 3, _rp33),
    Problem("RP35", "ReliabilityProblem35", _STD2, _rp35),
    Problem("RP38", "ReliabilityProblem38", (Normal(350.0, 35.0), Normal(50.8, 5.08),
            Normal(3.81, 0.381), Normal(173.0, 17.3), Normal(9.38, 0.938), Normal(33.1, 3.31),
            Normal(0.036, 0.0036)), _rp38),
    Problem("RP53", "ReliabilityProblem53", (Normal(1.5, 1.0), Normal(2.5, 1.0)), _rp53),
    Problem("RP54", "ReliabilityProblem54", (Exponential(1.0),) * 20, _rp54),
    Problem("RP55", "ReliabilityProblem55", (Uniform(-1.0, 1.0),) * 2, _rp55),
    Problem("RP57", "ReliabilityProblem57", _STD2, _rp57),
    Problem("RP60", "ReliabilityProblem60", (LogNormal(2200.0, 220.0), LogNormal(2100.0, 210.0),
            LogNormal(2300.0, 230.0), LogNormal(2000.0, 200.0), LogNormal(1200.0, 480.0)), _rp60),
    Problem("RP63", "ReliabilityProblem63", (Normal(0.0, 1.0),) * 100, _rp63),
    Problem("RP75", "ReliabilityProblem75", _STD2, _rp75),
    Problem("RP77", "ReliabilityProblem77", (Normal(10.0, 0.5), Normal(0.0, 1.0), Normal(4.0, 1.0)),
            _rp77, openturns_formula="if(x3 <= 5, x1 - x2 - x3, x3 - x2)"),
    Problem("RP89", "ReliabilityProblem89", _STD2, _rp89),
    Problem("RP91", "ReliabilityProblem91", (Normal(0.07433, 0.005), Normal(0.1, 0.01),
            Normal(13.0, 60.0), Normal(4751.0, 48.0), Normal(-684.0, 11.0)), _rp91),
    Problem("RP107", "ReliabilityProblem107", (Normal(0.0, 1.0),) * 10, _rp107),
    Problem("RP110", "ReliabilityProblem110", _STD2, _rp110, openturns_formula=(
        "min(if(x1 <= 3.5, 0.85 - 0.1 * x1, 4 - x1), if(x2 <= 2, 2.3 - x2, 0.5 - 0.1 * x2))")),
    Problem("RP111", "ReliabilityProblem111", _STD2, _rp111),
    Problem("four-branch", "FourBranchSerialSystemReliability", _STD2, _four_branch),
    Problem("R-S", "RminusSReliability", (Normal(4.0, 1.0), Normal(2.0, 1.0)), _difference),
    Problem("axial-beam", "AxialStressedBeamReliability",
            (LogNormal(300.0, 30.0), Normal(75000.0, 5000.0)), _axial_beam),
)
PROBLEMS_BY_NAME = {p.name: p for p in PROBLEMS}

#: otbenchmark problems not ported, with the reason (every one of the 26 ports faithfully)
LEFT_OUT: tuple[tuple[str, str], ...] = ()
