"""Base given R for the estimators of a Conditioned D: specs that read the recogniser, and chains in R.

``estimators.conditioned`` writes P[C | R] as P_base[C and R] / P_base[R] and also
splits directly on base given R. These are the pieces it runs the project's
estimators on: ``Recognised`` (R as a spec on the input alone), ``Both`` (C and R),
``Within`` (C inside R, -inf outside, so splitting never leaves R), a stand-in model
for terms that only call the recogniser, and ``Restricted``, base given R as a
distribution that splitting can walk without a sampler or a normalised density.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .._logspace import LN10
from ..dists.base import Distribution
from ..dists.conditioned import Conditioned
from ..errors import UnsupportedError
from ..oracle import ScoreOracle
from ..specs import Spec
from . import _space
from ._space import BaseSpace
from .splitting import Splitting

#: moves within R that each chain start makes after resampling the pool
BURN_IN = 20


class Recognised(Spec):
    """The recogniser's score as a spec on the input alone: "catastrophe" iff x is in R.

    ``soft`` is the exact log-indicator of R: R does not depend on the model, so there
    is nothing for a gradient to smooth, and a surrogate would leak mass from outside R.
    """

    def __init__(self, dist: Conditioned):
        self.dist = dist

    def score(self, x: Tensor, y: Tensor) -> Tensor:
        return self.dist.recognise(x)

    def soft(self, x: Tensor, y: Tensor, temperature: float = 1.0) -> Tensor:
        inside = self.score(x, y) > 0
        return torch.where(inside, 0.0, -math.inf).double()

    def __repr__(self) -> str:
        return f"Recognised({self.dist!r})"


class _SpecInR(Spec):
    """A user's spec C read together with the recogniser R (whose checks on outputs are C's)."""

    def __init__(self, spec: Spec, recognised: Recognised):
        self.spec = spec
        self.recognised = recognised
        self.continuous = spec.continuous

    def check_output(self, y: Tensor) -> None:
        self.spec.check_output(y)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, {self.recognised!r})"


class Both(_SpecInR):
    """C and R: score = min(spec score, recogniser score), > 0 iff both are."""

    def score(self, x: Tensor, y: Tensor) -> Tensor:
        s = self.spec.score(x, y).double()
        return torch.minimum(s, self.recognised.score(x, y).to(s.device))

    def soft(self, x: Tensor, y: Tensor, temperature: float = 1.0) -> Tensor:
        """The spec's surrogate inside R, -inf outside: gradients reach the model only through C."""
        soft = self.spec.soft(x, y, temperature).double()
        return soft + self.recognised.soft(x, y).to(soft.device)


class RecogniserOnly(nn.Module):
    """Stands in for the model where only the recogniser matters: one constant output per row."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros(x.shape[0], 1)


class Within(_SpecInR):
    """C for inputs in R, and -inf outside: splitting on it never leaves R (its levels are finite)."""

    def score(self, x: Tensor, y: Tensor) -> Tensor:
        s = self.spec.score(x, y).double()
        inside = self.recognised.score(x, y).to(s.device) > 0
        return torch.where(inside, s, torch.full_like(s, -math.inf))


class Restricted(Distribution):
    """base given R, for splitting with the spec ``Within``: chains started inside R that stay there.

    The chain starts are the final particles of a splitting run for P_base[R] (recogniser
    calls only), resampled and moved within R. Two moves are tried during that burn-in
    and the one with the larger expected squared jump is kept: base's own move (pCN for
    a Gaussian: dimension-free, but it pulls chains back towards base's centre, so only
    small steps stay in a far R) and, for a base with base coordinates z (``_space``), a
    random-walk Metropolis step z' = z + b L xi shaped by the covariance L L^T of the
    starts (suits an R thin in one direction; its cost grows with the dimension).
    Measured on bench.conditioned: the walk wins in 10 dimensions, pCN in 200. Either is
    reversible for base, and splitting accepts a move only if it stays in the current
    level set, which ``Within`` puts inside R, so base given R is what stays invariant.
    No sampler, no normalised density.
    """

    def __init__(self, dist: Conditioned, start_budget: int):
        self.conditioned = dist
        self.base = dist.base
        self.event_shape = dist.event_shape
        self.start_budget = start_budget
        self.space = BaseSpace(dist.base) if _space.supports(dist.base) else None
        self.tril: Tensor | None = None
        #: whether the random walk moved further than base's own move during burn-in
        self.walk = False
        #: the random-walk step at splitting's largest step (1), tuned during burn-in to an acceptance of
        #: about 0.3: splitting cannot see a Metropolis-Hastings rejection (the chain stays put,
        #: inside its level set), so it would otherwise grow the step until nothing moves
        self.scale = 0.3
        self.start_diagnostics: dict[str, Any] = {}

    @property
    def is_discrete(self) -> bool:
        return self.base.is_discrete

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        return self.conditioned.sample(n, generator)

    def log_prob(self, x: Tensor) -> Tensor:
        return self.conditioned.log_prob(x)

    def propose(self, x: Tensor, step: Tensor, generator: torch.Generator) -> Tensor:
        if self.space is None or self.tril is None or not self.walk:
            return self.base.propose(x, step, generator)
        return self._walk(x, self.scale * step, generator)

    def _walk(self, x: Tensor, b: Tensor, generator: torch.Generator) -> Tensor:
        """Random-walk Metropolis for base in base coordinates, z' = z + b L xi; b (n,)."""
        assert self.space is not None and self.tril is not None
        space = self.space
        with torch.no_grad():
            z = space.to_z(x)
            xi = torch.randn(z.shape, generator=generator, dtype=torch.float64) @ self.tril.T
            z_new = z + b.double().reshape(-1, 1) * xi
            log_ratio = space.base_log_prob(z_new) - space.base_log_prob(z)
            accept = torch.log(torch.rand(z.shape[0], generator=generator, dtype=torch.float64)) < log_ratio
            return space.to_x(torch.where(accept[:, None], z_new, z))

    def _fit_starts(self, pool: Tensor) -> None:
        """The Cholesky factor of the pool's covariance in base coordinates (diagonal if few)."""
        assert self.space is not None
        z = self.space.to_z(pool)
        d = z.shape[1]
        if z.shape[0] > 4 * d:
            cov = torch.cov(z.T).reshape(d, d) + 1e-6 * torch.eye(d, dtype=torch.float64)
        else:
            cov = torch.diag(z.var(0) + 1e-6) if z.shape[0] > 1 else torch.eye(d, dtype=torch.float64)
        self.tril = torch.linalg.cholesky(cov)

    def chain_starts(self, runs: int, n: int, generator: torch.Generator) -> Tensor:
        """runs blocks of n starts; block r resamples the particles of one run of the P_base[R] splitting.

        Each run of that splitting is independent of the others, so blocks drawn from
        different ones keep the runs they start independent (splitting's interval is
        their spread); with more blocks than runs, runs are reused in turn.
        """
        oracle = ScoreOracle(RecogniserOnly(), self.base, Recognised(self.conditioned))
        outcome, pool, run_of = Splitting().run_with_draws(oracle, self.start_budget, generator, 0.95)
        self.start_diagnostics = {"pool": int(pool.shape[0]), "recogniser_calls": oracle.n_calls,
                                  "log10_p": outcome.log_p / LN10, "ci_log10": [v / LN10 for v in outcome.ci],
                                  "trusted": outcome.trusted and not outcome.heuristic}
        if pool.shape[0] == 0:
            raise UnsupportedError("splitting found no recognised input of base to start the chains from; "
                                   "raise budget or give the recogniser a graded score")
        if self.space is not None:
            self._fit_starts(pool)
        sources = [torch.nonzero(run_of == r).flatten() for r in torch.unique(run_of).tolist()]
        x = torch.cat([pool[src[torch.randint(src.numel(), (n,), generator=generator)]]
                       for src in (sources[b % len(sources)] for b in range(runs))])
        n = x.shape[0]
        if self.space is None:
            x, _ = self._burn_in(x, False, generator)
            self.start_diagnostics["recogniser_calls"] += BURN_IN * n
            return x
        x, walk_jump = self._burn_in(x, True, generator)
        x, own_jump = self._burn_in(x, False, generator)
        self.walk = walk_jump > own_jump
        self.start_diagnostics.update({"move": "walk" if self.walk else "base", "walk_jump": walk_jump,
                                       "base_jump": own_jump})
        self.start_diagnostics["recogniser_calls"] += 2 * BURN_IN * n
        return x

    def _burn_in(self, x: Tensor, walk: bool, generator: torch.Generator) -> tuple[Tensor, float]:
        """BURN_IN moves within R by one kernel, tuning its step; returns the draws and its squared jump.

        The jump is the mean squared distance moved per step in base coordinates over
        the second half (rejections count as 0): the expected squared jumping distance
        by which the two kernels are compared (Pasarica & Gelman 2010). The walk's
        rejections are invisible to splitting, so its ``scale`` is tuned here; base's own
        move is rejected only by R, which splitting sees and tunes itself.
        """
        n = x.shape[0]
        log_step, jumps = 0.0 if walk else math.log(0.3), []  # the walk's scale is its step at step 1
        for i in range(BURN_IN):
            step = torch.full((n,), math.exp(log_step), dtype=torch.float64)
            moved = self._walk(x, self.scale * step, generator) if walk else self.base.propose(x, step,
                                                                                               generator)
            ok = self.conditioned.recognise(moved) > 0
            moved = torch.where(ok.reshape(-1, *([1] * (x.dim() - 1))), moved.to(x.dtype), x)
            went = (moved != x).reshape(n, -1).any(1)
            if i >= BURN_IN // 2 and self.space is not None:
                jumps.append(float(((self.space.to_z(moved) - self.space.to_z(x)) ** 2).sum(1).mean()))
            x = moved
            rate = float(went.double().mean())
            if walk:
                self.scale = min(self.scale * math.exp(rate - 0.3), 1.0)
            else:
                log_step = min(log_step + rate - 0.3, 0.0)
        return x, float(sum(jumps) / len(jumps)) if jumps else 0.0
