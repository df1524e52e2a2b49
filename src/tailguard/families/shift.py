"""Gaussians near a deployment Gaussian: a shifted mean and a common scale, within a KL ball.

The plausible distributions are those a modest distribution shift could
produce: N(mean + L u, s^2 Cov) with Cov = L L^T and KL(member || base) <= max_kl.
The KL between two Gaussians is closed form (e.g. Pardo 2006, "Statistical
Inference Based on Divergence Measures", ch. 1); here it reduces to

    KL = |u|^2 / 2 + (d / 2) (s^2 - 1 - 2 ln s),

so the bound is a hard constraint, enforced by shrinking (u, ln s) towards 0
by one common factor. ``member`` applies that projection itself, differentiably
(the factor's gradient comes from the implicit function theorem), and treats a
point on the boundary as projected from outside: there the gradient is the
component tangent to the KL sphere. Without that, a per-coordinate optimiser
such as Adam followed by ``project`` settles where its sign-like steps point
straight out of the ball (u along sign(w) for a linear objective w.u), not at
the constrained optimum. The shift is held in whitened coordinates u (so one
step means the same thing in every direction, whatever the base covariance);
``describe`` reports it in input space. Members are tailguard Gaussians: every
estimator and the exact density apply.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..dists.gaussian import Gaussian
from ..errors import InvalidArgumentError
from .base import Family, Params

#: a cap on KL evaluations per projection (Illinois needs far fewer)
_MAX_ROOT_EVALS = 200
#: a KL within this relative distance of max_kl counts as on the boundary (constraint active)
ACTIVE_TOL = 1e-9


def gaussian_shift_kl(shift: Tensor, log_scale: Tensor | float, dim: int) -> Tensor:
    """KL(N(mu + L u, s^2 L L^T) || N(mu, L L^T)) in nats, from u (d,) and ln s (scalar).

    Differentiable in both arguments.
    """
    a = torch.as_tensor(log_scale, dtype=torch.float64)
    return 0.5 * (shift.double() ** 2).sum() + 0.5 * dim * (torch.expm1(2 * a) - 2 * a)


def largest_feasible_factor(
    kl_at: Callable[[float], float], max_kl: float, high: float, rtol: float = 1e-12
) -> float:
    """A t in [0, high] with max_kl (1 - rtol) <= kl_at(t) <= max_kl, or ``high`` if feasible.

    Illinois regula falsi (Dowell & Jarratt 1971) on the bracket [low, high], with
    low always feasible: needs kl_at(0) <= max_kl, and converges superlinearly, so a
    projection costs a handful of KL evaluations. If kl_at increases in t, the
    answer is the boundary crossing itself.
    """
    low, f_low, f_high = 0.0, kl_at(0.0) - max_kl, kl_at(high) - max_kl
    if f_high <= 0:
        return high
    true_f_low, side = f_low, 0
    for _ in range(_MAX_ROOT_EVALS):
        if -true_f_low <= rtol * max_kl or high - low <= rtol * high:
            break
        t = (low * f_high - high * f_low) / (f_high - f_low)
        if not low < t < high:
            t = 0.5 * (low + high)
        f = kl_at(t) - max_kl
        if f <= 0:
            low, f_low, true_f_low = t, f, f
            f_high = f_high / 2 if side == -1 else f_high
            side = -1
        else:
            high, f_high = t, f
            f_low = f_low / 2 if side == 1 else f_low
            side = 1
    return low


class GaussianShift(Family):
    """Members N(base.mean + delta, s^2 base.cov) with KL(member || base) <= max_kl.

    Parameters: ``shift`` (d,), the mean shift in the base's whitened coordinates
    (delta = L shift), and, if ``scale`` is true, ``log_scale`` (a scalar ln s).
    """

    def __init__(self, base: Gaussian, max_kl: float, scale: bool = True):
        if not isinstance(base, Gaussian):
            raise InvalidArgumentError(
                f"base must be a tailguard Gaussian, got {type(base).__name__}"
            )
        if isinstance(max_kl, bool) or not isinstance(max_kl, int | float):
            raise InvalidArgumentError(f"max_kl must be a number, got {max_kl!r}")
        if not (math.isfinite(max_kl) and max_kl > 0):
            raise InvalidArgumentError(f"max_kl must be finite and > 0, got {max_kl!r}")
        self.mean = base.mean.detach().double()
        self.tril = base.scale_tril().detach()
        self.full_cov = base.cov is not None
        self.max_kl = float(max_kl)
        self.scale = bool(scale)
        self.event_shape = base.event_shape
        self.d = base.dim

    # --- KL and its projection ----------------------------------------------------------------
    def _log_scale(self, params: Params) -> Tensor:
        if self.scale:
            return params["log_scale"]
        return torch.zeros((), dtype=torch.float64)

    def kl(self, params: Params) -> Tensor:
        """Closed-form KL(member || base) in nats (a differentiable scalar)."""
        return gaussian_shift_kl(params["shift"], self._log_scale(params), self.d)

    def _kl_along(self, params: Params) -> Callable[[float], float]:
        """t -> KL(t shift, t ln s) as a plain float function (increasing in t >= 0)."""
        sq = float((params["shift"].detach().double() ** 2).sum())
        a = float(self._log_scale(params).detach())

        def kl_at(t: float) -> float:
            b = min(2 * t * a, 700.0)  # beyond this the KL is astronomically infeasible anyway
            return 0.5 * t * t * sq + 0.5 * self.d * (math.expm1(b) - b)

        return kl_at

    def _boundary_factor(self, params: Params, high: float) -> float:
        """Largest t <= high with KL(t shift, t ln s) <= max_kl (both shrink together)."""
        kl_at = self._kl_along(params)
        if kl_at(high) <= self.max_kl:
            return high
        return largest_feasible_factor(kl_at, self.max_kl, high)

    def _rescale(self, params: Params, t: float) -> None:
        with torch.no_grad():
            for v in params.values():
                v.mul_(t)

    def project(self, params: Params) -> None:
        """Shrink shift and ln s by one common factor t in [0, 1] until KL <= max_kl."""
        if float(self.kl(params).detach()) <= self.max_kl:
            return
        self._rescale(params, self._boundary_factor(params, 1.0))

    def projected(self, params: Params) -> tuple[Tensor, Tensor]:
        """(u (d,), ln s) shrunk into the KL ball, differentiable in the raw parameters.

        Off the boundary this is the identity. On or beyond it the factor t(u, ln s)
        solves KL(t u, t ln s) = max_kl; its value comes from root finding and its
        gradient, -grad KL(t0 u, t0 ln s) / (dKL/dt), from the implicit function theorem.
        """
        shift, log_scale = params["shift"].double(), self._log_scale(params).double()
        kl = float(gaussian_shift_kl(shift, log_scale, self.d).detach())
        if kl < self.max_kl * (1 - ACTIVE_TOL):
            return shift, log_scale
        t0 = self._boundary_factor(params, 1.0)
        sq = float((shift.detach() ** 2).sum())
        a = float(log_scale.detach())
        slope = t0 * sq + self.d * a * math.expm1(2 * t0 * a)
        kl_at_t0 = gaussian_shift_kl(t0 * shift, t0 * log_scale, self.d)
        t = t0 - (kl_at_t0 - kl_at_t0.detach()) / slope
        return t * shift, t * log_scale

    # --- the family ---------------------------------------------------------------------------
    def params_at(self, shift: Tensor, log_scale: float = 0.0) -> Params:
        """Parameters (leaf tensors requiring grad) for a whitened shift (d,) and ln s."""
        params = {"shift": shift.detach().double().reshape(self.d).clone().requires_grad_(True)}
        if self.scale:
            params["log_scale"] = torch.tensor(float(log_scale), dtype=torch.float64)
            params["log_scale"].requires_grad_(True)
        return params

    def candidates(self, n: int, generator: torch.Generator) -> list[Params]:
        """Random directions in (shift, ln s) space, each scaled out to the KL boundary."""
        out = []
        for _ in range(n):
            shift = torch.randn(self.d, generator=generator, dtype=torch.float64)
            log_scale = 0.3 * float(torch.randn((), generator=generator, dtype=torch.float64))
            params = self.params_at(shift, log_scale)
            self._rescale(params, self._boundary_factor(params, self._bracket(params)))
            out.append(params)
        return out

    def _bracket(self, params: Params) -> float:
        """A factor t at which KL(t shift, t ln s) already exceeds max_kl."""
        kl_at, high = self._kl_along(params), 1.0
        while kl_at(high) <= self.max_kl and high < 2.0**40:
            high *= 2.0
        return high

    def delta(self, params: Params) -> Tensor:
        """The member's mean shift in input space, shaped like the base mean (differentiable)."""
        shift, _ = self.projected(params)
        return (self.tril @ shift).reshape(self.event_shape)

    def member(self, params: Params) -> Gaussian:
        """N(mean + L u, s^2 Cov) at the projection of the parameters into the KL ball."""
        shift, log_scale = self.projected(params)
        mean = self.mean + (self.tril @ shift).reshape(self.event_shape)
        s = torch.exp(log_scale)
        if self.full_cov:
            return Gaussian(mean, cov=s**2 * (self.tril @ self.tril.T))
        std = s * torch.diagonal(self.tril).reshape(self.event_shape)
        return Gaussian(mean, std=std)

    def constraint(self) -> str:
        what = "a mean shift and a common scale" if self.scale else "a mean shift"
        return (
            f"the base Gaussian with {what}, within KL(member || base) <= {self.max_kl:g} nats"
        )

    def describe(self, params: Params) -> dict[str, object]:
        shift, log_scale = self.projected(params)
        out: dict[str, object] = {
            "delta": (self.tril @ shift).reshape(self.event_shape).detach().tolist(),
            "kl": float(gaussian_shift_kl(shift, log_scale, self.d).detach()),
        }
        if self.scale:
            out["scale"] = math.exp(float(log_scale.detach()))
        return out
