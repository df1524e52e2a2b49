"""Data plus one shared perturbation of bounded norm: a universal perturbation.

A member is NoisyEmpirical(points + delta, noise_std) with a single delta,
|delta| <= epsilon in the l-inf or l2 norm, added to every data point. This is
the universal adversarial perturbation of Moosavi-Dezfooli et al. (2017,
"Universal adversarial perturbations"): one small input change that raises the
catastrophe rate across the whole distribution, not a per-input attack.
``project`` is the Euclidean projection onto the ball, as in projected gradient
ascent (Madry et al. 2018, "Towards deep learning models resistant to
adversarial attacks"). Members have an exact density, so every estimator that
handles mixtures applies.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..dists._checks import as_float_tensor, positive
from ..dists.empirical import NoisyEmpirical
from ..errors import InvalidArgumentError, ShapeMismatchError
from .base import Family, Params
from .shift import ACTIVE_TOL

NORMS = ("linf", "l2")


def _finite_number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgumentError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise InvalidArgumentError(f"{name} must be finite, got {value!r}")
    return float(value)


def _check_clamp(clamp: tuple[float, float] | None) -> tuple[float, float] | None:
    if clamp is None:
        return None
    if not isinstance(clamp, tuple | list) or len(clamp) != 2:
        raise InvalidArgumentError(f"clamp must be None or a pair (low, high), got {clamp!r}")
    low, high = (_finite_number(v, "clamp") for v in clamp)
    if not low < high:
        raise InvalidArgumentError(f"clamp must have low < high, got {clamp!r}")
    return low, high


class PerturbationBall(Family):
    """Members: NoisyEmpirical(points + delta, noise_std) with |delta|_norm <= epsilon.

    ``points`` (N, *shape); parameter ``delta`` (*shape), shared by every point.
    With ``clamp=(low, high)`` the perturbed points are clipped to that range
    (e.g. a pixel range), so no member leaves it before noise is added.
    """

    def __init__(
        self,
        points: Tensor,
        epsilon: float,
        noise_std: float,
        norm: str = "linf",
        clamp: tuple[float, float] | None = None,
    ):
        self.points = as_float_tensor(points, "points").detach().double()
        if self.points.dim() < 2 or self.points.shape[0] == 0:
            raise ShapeMismatchError(
                f"points must have shape (N, *shape) with N >= 1, got {tuple(self.points.shape)}"
            )
        self.epsilon = _finite_number(epsilon, "epsilon")
        if self.epsilon <= 0:
            raise InvalidArgumentError(f"epsilon must be > 0, got {epsilon!r}")
        self.noise_std = float(positive(as_float_tensor(noise_std, "noise_std"), "noise_std"))
        if norm not in NORMS:
            raise InvalidArgumentError(f"norm must be one of {NORMS}, got {norm!r}")
        self.norm = norm
        self.clamp = _check_clamp(clamp)
        self.event_shape = tuple(self.points.shape[1:])

    def norm_of(self, delta: Tensor) -> Tensor:
        """The ball's norm of a perturbation (*shape) -> scalar."""
        flat = delta.reshape(-1)
        return flat.abs().max() if self.norm == "linf" else torch.linalg.vector_norm(flat)

    def projected(self, params: Params) -> Tensor:
        """Nearest point of the ball to delta (*shape): clipped (l-inf) or rescaled (l2).

        Differentiable in delta. An l2 delta on the sphere counts as projected from
        outside, so its gradient is the tangential part: Adam's sign-like steps
        followed by ``project`` would otherwise settle where they point straight
        out of the ball rather than at the constrained optimum.
        """
        delta = params["delta"].double()
        if self.norm == "linf":
            return delta.clamp(-self.epsilon, self.epsilon)
        length = float(self.norm_of(delta.detach()))
        if length < self.epsilon * (1 - ACTIVE_TOL):
            return delta
        return delta * (self.epsilon / self.norm_of(delta))

    def project(self, params: Params) -> None:
        """Move delta to the nearest point of the ball, in place."""
        with torch.no_grad():
            params["delta"].copy_(self.projected(params))

    def params_at(self, delta: Tensor) -> Params:
        """Parameters (a leaf requiring grad) for a perturbation delta (*shape)."""
        d = delta.detach().double().reshape(self.event_shape).clone()
        return {"delta": d.requires_grad_(True)}

    def candidates(self, n: int, generator: torch.Generator) -> list[Params]:
        """Perturbations drawn uniformly from the ball."""
        return [self.params_at(self._uniform_in_ball(generator)) for _ in range(n)]

    def _uniform_in_ball(self, generator: torch.Generator) -> Tensor:
        if self.norm == "linf":
            u = torch.rand(self.event_shape, generator=generator, dtype=torch.float64)
            return self.epsilon * (2 * u - 1)
        direction = torch.randn(self.event_shape, generator=generator, dtype=torch.float64)
        direction = direction / torch.linalg.vector_norm(direction.reshape(-1))
        size = direction.numel()
        radius = float(torch.rand((), generator=generator, dtype=torch.float64)) ** (1 / size)
        return self.epsilon * radius * direction

    def perturbed(self, params: Params) -> Tensor:
        """points + projected delta, clipped to ``clamp`` if given: (N, *shape), differentiable."""
        x = self.points + self.projected(params)
        if self.clamp is not None:
            x = x.clamp(*self.clamp)
        return x

    def member(self, params: Params) -> NoisyEmpirical:
        """The noisy data at the projection of delta into the ball (always plausible)."""
        return NoisyEmpirical(self.perturbed(params), self.noise_std)

    def constraint(self) -> str:
        clip = "" if self.clamp is None else f", clipped to [{self.clamp[0]:g}, {self.clamp[1]:g}]"
        return (
            f"the {self.points.shape[0]} data points plus one shared perturbation with "
            f"{self.norm} norm <= {self.epsilon:g}{clip}, plus N(0, {self.noise_std:g}^2) noise"
        )

    def describe(self, params: Params) -> dict[str, object]:
        delta = self.projected(params).detach()
        return {"delta": delta.tolist(), "norm": float(self.norm_of(delta))}
