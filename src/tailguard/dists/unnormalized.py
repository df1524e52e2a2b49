"""A density known only up to a constant, with no sampler: ``Unnormalized(log_density, event_shape)``.

The estimators meet it through three things it can compute without ever drawing
an exact sample:

- a Gaussian *reference* fitted to it (its mode, by L-BFGS on the log-density, and
  the Laplace covariance there), whose whitened coordinates are the base coordinates
  importance sampling works in (``estimators._space``);
- the *normaliser* Z = int exp(log_density), estimated by importance sampling from a
  multivariate Student-t centred on the reference (heavier tails than any density
  with Gaussian or exponential tails, so the weights stay bounded there), with its
  relative standard error; ``log_prob`` is log_density - ln Z_hat, and importance
  sampling adds the normaliser's error to its interval;
- a reversible MCMC move: random-walk Metropolis shaped by the reference's
  covariance, and chain starts by sampling-importance-resampling from the Student-t
  draws followed by burn-in moves. Splitting needs nothing else, and no normaliser.

References: Tierney & Kadane (1986) for the Laplace fit; Geweke (1989) on
Student-t importance densities; Roberts, Gelman & Gilks (1997) for random-walk
Metropolis scaling; Rubin (1988) for sampling-importance-resampling.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from .._logspace import logmeanexp, pareto_k
from ..errors import InvalidArgumentError, ModelOutputError, ShapeMismatchError, UnsupportedError
from .base import Distribution
from .gaussian import Gaussian

#: metropolis-hastings moves each chain start makes after resampling
BURN_IN = 20
#: Student-t pool size per chain start asked for
POOL_PER_START = 20
#: the random-walk acceptance rate the burn-in tunes ``scale`` to (Roberts, Gelman & Gilks 1997: 0.234)
TARGET_ACCEPTANCE = 0.25


@runtime_checkable
class ChainStarted(Protocol):
    """A D with no exact sampler: MCMC chains start from its approximate draws instead."""

    def chain_starts(self, runs: int, n: int, generator: torch.Generator) -> Tensor:
        """runs * n approximate draws (runs * n, *event_shape), run-major, to start reversible chains from.

        The blocks of different runs come from independent sources, so that independent
        runs of an estimator stay independent (their spread is its interval).
        """
        ...


@dataclass(frozen=True)
class Normaliser:
    """ln Z_hat, its relative standard error, and the Pareto k of its weights (Vehtari et al. 2015)."""

    log_z: float
    rel_se: float
    pareto_k: float
    draws: int

    @property
    def trusted(self) -> bool:
        """Whether the weights have a finite-variance tail (Pareto k <= 0.5), so rel_se means something."""
        return math.isfinite(self.pareto_k) and self.pareto_k <= 0.5


class Unnormalized(Distribution):
    """The distribution with density proportional to exp(log_density(x)), x of shape ``event_shape``.

    log_density: x (n, *event_shape) -> (n,), differentiable in x for the mode search
    (a non-differentiable one falls back to a reference at ``init`` with unit scale).
    init: where the mode search starts (zeros by default). seed: of the reference's
    and normaliser's draws, which cost no model calls. normaliser_draws: Student-t
    draws for Z. tail_dof: the Student-t's degrees of freedom.
    """

    def __init__(self, log_density: Callable[[Tensor], Tensor], event_shape: tuple[int, ...],
                 init: Tensor | None = None, seed: int = 0, normaliser_draws: int = 200_000,
                 tail_dof: float = 4.0):
        if not callable(log_density):
            raise InvalidArgumentError("log_density must be a callable x (n, *event_shape) -> (n,)")
        if (not isinstance(event_shape, tuple) or not event_shape
                or not all(isinstance(s, int) and s > 0 for s in event_shape)):
            raise InvalidArgumentError(
                f"event_shape must be a non-empty tuple of positive ints, got {event_shape!r}"
            )
        if not isinstance(normaliser_draws, int) or normaliser_draws < 1000:
            raise InvalidArgumentError(f"normaliser_draws must be an int >= 1000, got {normaliser_draws!r}")
        if not tail_dof > 2.0:
            raise InvalidArgumentError(f"tail_dof must be > 2 (a finite covariance), got {tail_dof!r}")
        self.log_density = log_density
        self.event_shape = event_shape
        self.seed = seed
        self.normaliser_draws = normaliser_draws
        self.tail_dof = float(tail_dof)
        start = torch.zeros(event_shape, dtype=torch.float64) if init is None else torch.as_tensor(init)
        if tuple(start.shape) != event_shape:
            raise ShapeMismatchError(f"init has shape {tuple(start.shape)}; expected {event_shape}")
        self.init = start.double()
        self._reference: Gaussian | None = None
        #: the random-walk step, in the reference's standard deviations, at splitting's step 1
        self.scale = 2.4 / math.sqrt(self.dim)
        self._normaliser: Normaliser | None = None

    # --- the unnormalised density ---------------------------------------------------------
    def log_density_of(self, x: Tensor) -> Tensor:
        """log_density(x) (n,) float64, checked: the right shape, no NaN (-inf is a zero density)."""
        self.check_inputs(x)
        out = self.log_density(x)
        if not isinstance(out, Tensor) or tuple(out.shape) != (x.shape[0],):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ShapeMismatchError(
                f"log_density returned {shape} for {x.shape[0]} inputs; expected ({x.shape[0]},)"
            )
        if torch.isnan(out).any() or (out == math.inf).any():
            raise ModelOutputError("log_density returned NaN or +inf")
        return out.double()

    def _batched(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return torch.cat([self.log_density_of(x[i : i + 50_000]) for i in range(0, x.shape[0], 50_000)])

    # --- the Gaussian reference -------------------------------------------------------------
    @property
    def reference(self) -> Gaussian:
        """A Gaussian at the mode with the Laplace covariance (fitted once)."""
        if self._reference is None:
            self._reference = self._fit_reference()
        return self._reference

    def _fit_reference(self) -> Gaussian:
        def neg(flat: Tensor) -> Tensor:
            return -self.log_density_of(flat.reshape(1, *self.event_shape))[0]

        x = self.init.reshape(-1).clone().requires_grad_(True)
        try:
            opt = torch.optim.LBFGS([x], max_iter=200, line_search_fn="strong_wolfe")

            def closure() -> Tensor:
                opt.zero_grad()
                value = neg(x)
                value.backward()
                return value

            opt.step(closure)
            mode = x.detach()
            hessian = torch.autograd.functional.hessian(neg, mode)
        except RuntimeError:  # log_density is not differentiable: a unit reference at init
            return Gaussian(self.init.reshape(self.event_shape), std=1.0)
        if not torch.isfinite(mode).all() or not torch.isfinite(hessian).all():
            return Gaussian(self.init.reshape(self.event_shape), std=1.0)
        hessian = 0.5 * (hessian + hessian.T)
        eig = torch.linalg.eigvalsh(hessian)
        if float(eig.min()) <= 1e-9 * max(float(eig.max()), 1.0):
            return Gaussian(mode.reshape(self.event_shape), std=1.0)
        cov = torch.linalg.inv(hessian)
        return Gaussian(mode.reshape(self.event_shape), cov=0.5 * (cov + cov.T))

    # --- the Student-t tail proposal and the normaliser -------------------------------------
    def _t_draws(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """n draws (n, *event_shape) of the Student-t around the reference, and their log densities (n,)."""
        ref, nu, d = self.reference, self.tail_dof, self.dim
        z = torch.randn(n, d, generator=generator, dtype=torch.float64)
        chi2 = 2.0 * torch._standard_gamma(torch.full((n,), nu / 2, dtype=torch.float64), generator=generator)
        u = z * torch.sqrt(nu / chi2)[:, None]
        log_t = (math.lgamma((nu + d) / 2) - math.lgamma(nu / 2) - 0.5 * d * math.log(nu * math.pi)
                 - 0.5 * (nu + d) * torch.log1p((u**2).sum(1) / nu))
        log_det = float(torch.log(torch.diagonal(ref.scale_tril())).sum())
        return ref.unwhiten(u), log_t - log_det

    @property
    def normaliser(self) -> Normaliser:
        """Z estimated by importance sampling from the Student-t (no model calls)."""
        if self._normaliser is None:
            g = torch.Generator().manual_seed(self.seed)
            x, log_t = self._t_draws(self.normaliser_draws, g)
            log_w = self._batched(x) - log_t
            log_z = float(logmeanexp(log_w))
            if not math.isfinite(log_z):
                raise ModelOutputError("log_density is -inf on every draw around its mode: no mass there")
            rel_var = max(math.exp(float(logmeanexp(2 * log_w)) - 2 * log_z) - 1.0, 0.0)
            self._normaliser = Normaliser(log_z, math.sqrt(rel_var / log_w.shape[0]), pareto_k(log_w),
                                          log_w.shape[0])
        return self._normaliser

    # --- Distribution interface -------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        raise UnsupportedError(
            "Unnormalized has no sampler; estimate with method='is' or 'splitting' (what 'auto' picks "
            "for it), which need only its density and MCMC moves"
        )

    def log_prob(self, x: Tensor) -> Tensor:
        """log_density(x) - ln Z_hat: normalised by the estimated normaliser (see ``normaliser``)."""
        return self.log_density_of(x) - self.normaliser.log_z

    def propose(self, x: Tensor, step: Tensor, generator: torch.Generator) -> Tensor:
        """A random-walk Metropolis move x' = x + b L xi, L the reference's scale, b = scale * step.

        Symmetric, so accepting with the ratio of target densities makes it reversible for
        the target whatever its tails (a pCN move for the reference, corrected, sticks in
        any tail heavier than the reference's). A rejected move leaves the input where it
        was, which splitting cannot tell from an accepted one, so ``scale`` is tuned in
        ``chain_starts`` and splitting's step only shrinks it.
        """
        ref = self.reference
        with torch.no_grad():
            z = ref.whiten(x)
            b = self.scale * step.double().reshape(-1, 1)
            proposal = ref.unwhiten(z + b * torch.randn(z.shape, generator=generator, dtype=torch.float64))
            log_ratio = self._batched(proposal) - self._batched(x.double())
            u = torch.rand(x.shape[0], generator=generator, dtype=torch.float64)
            accept = torch.log(u) < log_ratio
            return torch.where(accept.reshape(-1, *([1] * len(self.event_shape))), proposal, x.double())

    def chain_starts(self, runs: int, n: int, generator: torch.Generator) -> Tensor:
        """Per run, sampling-importance-resampling from its own Student-t draws; then BURN_IN moves."""
        blocks = []
        for _ in range(runs):
            x, log_t = self._t_draws(max(POOL_PER_START * n, 10_000), generator)
            pick = torch.multinomial(torch.softmax(self._batched(x) - log_t, 0), n, replacement=True,
                                     generator=generator)
            blocks.append(x[pick])
        starts = torch.cat(blocks)
        n = starts.shape[0]
        full = torch.ones(n, dtype=torch.float64)
        for _ in range(BURN_IN):
            moved = self.propose(starts, full, generator)
            rate = float((moved != starts).reshape(n, -1).any(1).double().mean())
            starts = moved
            self.scale = min(self.scale * math.exp(rate - TARGET_ACCEPTANCE), 3.0)
        return starts

    def __repr__(self) -> str:
        name = getattr(self.log_density, "__name__", type(self.log_density).__name__)
        return f"Unnormalized({name}, event_shape={self.event_shape})"
