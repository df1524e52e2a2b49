"""Adaptive multilevel splitting (subset simulation) with independent repeats.

Au & Beck (2001), "Estimation of small failure probabilities in high dimensions
by subset simulation"; Webb, Rainforth, Teh & Kumar (ICLR 2019), "A statistical
approach to assessing neural network robustness"; Cérou & Guyader (2007),
"Adaptive multilevel splitting for rare event analysis".

N particles start as draws from D. Each level L is the score of the
ceil(rho N)-th best particle (capped at the catastrophe boundary); the estimate
gains the factor #{s >= L}/N, counted exactly so ties at L are honest; the
particles below L are replaced by copies of the survivors, and every particle
then makes M MCMC moves with D's reversible proposal, accepted iff the score
stays >= L, which leaves D restricted to {s >= L} invariant. A shared step size
per run is adapted toward an acceptance rate of about 0.3 (Papaioannou et al.
2015, "MCMC algorithms for subset simulation"). Catastrophe is s > 0, that is
s >= the smallest positive float64, so the last level is that number and the
last factor is the fraction of particles with s > 0. A level that would not rise
above the previous one (a plateau of equal scores) is moved just above it; if no
particle is left there, that run's estimate is 0.

Why repeats: chains started from clones are correlated, so the textbook variance
n0 (1 - rho) / (rho N) is optimistic by an unknown factor. R independent runs are
made instead, all advanced together so each MCMC step is one oracle call over
R N particles. Their estimates of p are averaged in probability space (each run
is nearly unbiased for p, while the mean of log p is biased low), and the CI is
Cox's interval for the mean of a log-normal, which is centred on the same
quantity: the log p of the runs are close to normal once N rho is a few tens.

rho = 0.2 by default: per model call the idealised relative variance scales as
(1 - rho) / (rho ln^2 rho), smallest near 0.2, and in measurements (linear
margin, AND and OR of half-spaces, p from 1e-9 to 1e-13, 3e5 calls) rho = 0.2
with M = 3 gave a median |log10 error| of 0.03-0.05 against 0.06-0.10 for rho = 0.1.

Budget: a cheap pilot run (small N) counts the levels needed; N for the R main
runs is then chosen so that those levels plus a margin fit in what is left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from scipy import stats
from torch import Tensor, nn

from .._logspace import binomial_log_ci, logmeanexp
from ..backends.active import shares
from ..dists.base import Distribution
from ..dists.unnormalized import ChainStarted
from ..errors import BudgetError, InvalidArgumentError
from ..oracle import ScoreOracle
from ..specs import Spec
from .base import Outcome, register

#: catastrophe is s > 0, i.e. s >= this, so every level set is {s >= L}
TARGET = math.nextafter(0.0, math.inf)
RUNNING, DONE, EMPTY, STOPPED = 0, 1, 2, 3


@dataclass
class _Swarm:
    """R independent splitting runs of N particles each, advanced together.

    x: (R * N, *event_shape)   s: (R, N)   log_p, level, log_step, status, n_levels: (R,)
    """

    x: Tensor
    s: Tensor
    log_p: Tensor
    level: Tensor
    log_step: Tensor
    status: Tensor
    n_levels: Tensor
    acceptance: list[float] = field(default_factory=list)
    levels: list[list[float]] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        return self.s.shape[0], self.s.shape[1]

    @classmethod
    def joined(cls, parts: list[_Swarm]) -> _Swarm:
        """One swarm of the runs of ``parts``, in order (per step, the mean acceptance of the parts
        still moving, and the levels of all runs)."""
        if len(parts) == 1:
            return parts[0]
        steps = max(len(p.acceptance) for p in parts)
        rounds = max(len(p.levels) for p in parts)
        return cls(
            **{name: torch.cat([getattr(p, name) for p in parts])
               for name in ("x", "s", "log_p", "level", "log_step", "status", "n_levels")},
            acceptance=[float(np.mean([p.acceptance[i] for p in parts if i < len(p.acceptance)]))
                        for i in range(steps)],
            levels=[[v for p in parts if i < len(p.levels) for v in p.levels[i]] for i in range(rounds)],
        )


@register
@dataclass(frozen=True)
class Splitting:
    """Adaptive multilevel splitting with ``n_repeats`` independent runs.

    ``level_fraction`` (rho) is the fraction of particles kept per level,
    ``n_steps`` (M) the MCMC moves per particle and level, ``n_particles`` (N)
    per run (None: as many as the budget allows after a pilot run),
    ``max_levels`` a cap on levels per run against endless plateaus.
    """

    name: ClassVar[str] = "splitting"
    level_fraction: float = 0.2
    n_steps: int = 3
    n_repeats: int = 10
    n_particles: int | None = None
    max_levels: int = 60
    target_acceptance: float = 0.3

    def __post_init__(self) -> None:
        if not 0.0 < self.level_fraction < 1.0:
            raise InvalidArgumentError(f"level_fraction must be in (0, 1), got {self.level_fraction}")
        if self.n_steps < 1:
            raise InvalidArgumentError(f"n_steps must be >= 1, got {self.n_steps}")
        if self.n_repeats < 2:
            raise InvalidArgumentError(
                f"n_repeats must be >= 2 (the CI needs a spread), got {self.n_repeats}"
            )
        if self.n_particles is not None and self.n_particles * self.level_fraction < 2:
            raise InvalidArgumentError(
                f"n_particles must keep >= 2 particles per level, got {self.n_particles}"
            )
        if self.max_levels < 1:
            raise InvalidArgumentError(f"max_levels must be >= 1, got {self.max_levels}")
        if not 0.0 < self.target_acceptance < 1.0:
            raise InvalidArgumentError(f"target_acceptance must be in (0, 1), got {self.target_acceptance}")

    def unsupported_reason(self, model: nn.Module, dist: Distribution, spec: Spec) -> str | None:
        if not dist.has_moves:
            return f"{type(dist).__name__} has no reversible MCMC move (propose)"
        if not spec.continuous:
            return f"{type(spec).__name__} gives no graded score for the levels to climb"
        return None

    def min_budget(self) -> int:
        return self.n_repeats * self._min_particles() * (1 + 2 * self.n_steps)

    def _min_particles(self) -> int:
        return math.ceil(4 / self.level_fraction)

    # --- the run ------------------------------------------------------------------------------
    def run(self, oracle: ScoreOracle, budget: int, generator: torch.Generator, confidence: float) -> Outcome:
        return self.run_with_draws(oracle, budget, generator, confidence)[0]

    def run_with_draws(self, oracle: ScoreOracle, budget: int, generator: torch.Generator,
                       confidence: float) -> tuple[Outcome, Tensor, Tensor]:
        """``run``, the final particles inside the event (k, *event_shape) and the run of each (k,).

        They are draws of D given the event: copies of a few survivors moved by the chains,
        so only approximately independent within a run, independent between runs.
        """
        start = oracle.n_calls
        pilot_levels = None
        n = self.n_particles
        if n is None:
            pilot_levels = self._pilot_levels(oracle, budget, generator)
            n = self._particles_for(budget - (oracle.n_calls - start), pilot_levels)
        left = budget - (oracle.n_calls - start)
        swarm = self._repeats(oracle, n, left, generator)
        log_p, ci, warnings = _combine(swarm, confidence)
        diagnostics = self._diagnostics(swarm, pilot_levels, oracle.n_calls - start)
        keep = (swarm.s.flatten() >= TARGET) & (swarm.status == DONE).repeat_interleave(n)
        inside, run_of = swarm.x[keep], torch.arange(self.n_repeats).repeat_interleave(n)[keep]
        if math.isinf(log_p):
            # the bound is the estimated probability of the highest level reached: it holds
            # only as far as the MCMC moves mixed, so it is a heuristic
            return Outcome(log_p, ci, diagnostics, warnings, heuristic=True, trusted=False,
                           assumes="the MCMC moves mixed within every level set"), inside, run_of
        return Outcome(log_p, ci, diagnostics, warnings, assumes="the MCMC moves mixed within every "
                       "level set (spread of independent runs)"), inside, run_of

    def _pilot_levels(self, oracle: ScoreOracle, budget: int, generator: torch.Generator) -> int:
        """Levels one small run needs (or reached before its budget of budget/5 ran out)."""
        n = max(self._min_particles(), min(budget // 2000, 500))
        pilot = self._simulate(oracle, 1, n, budget // 5, generator)
        return int(pilot.n_levels[0])

    def _particles_for(self, budget: int, pilot_levels: int) -> int:
        """N such that R runs of N particles fit pilot_levels plus a margin of levels."""
        planned = pilot_levels + 2 + pilot_levels // 5
        per_particle = self.n_repeats * (1 + planned * self.n_steps)
        return max(self._min_particles(), budget // per_particle)

    def _repeats(self, oracle: ScoreOracle, n: int, budget: int, generator: torch.Generator) -> _Swarm:
        """The ``n_repeats`` runs of ``n`` particles, started here and climbed where the model is.

        The chain starts are drawn here (a sampler-free D hands each run starts of its own,
        note 010); worker i climbs its share of the runs with its share of the budget and
        sends back their final state: no inputs travel per MCMC step.
        """
        self._check_affordable(self.n_repeats, n, budget)
        x = _starts(oracle.dist, self.n_repeats, n, generator)
        parts = oracle.spread(lambda k: _climbs(self, x, n, budget, shares(self.n_repeats, k)), generator)
        return _Swarm.joined(parts)

    @staticmethod
    def _check_affordable(runs: int, n: int, budget: int) -> None:
        if runs * n > budget:
            raise BudgetError(
                f"budget {budget:,} cannot pay for {runs} runs of {n} particles; raise budget "
                "or lower n_particles / n_repeats"
            )

    def _simulate(
        self, oracle: ScoreOracle, runs: int, n: int, budget: int, generator: torch.Generator
    ) -> _Swarm:
        """Advance ``runs`` independent runs of ``n`` particles until all end or the budget does."""
        self._check_affordable(runs, n, budget)
        return self.climb(oracle, _starts(oracle.dist, runs, n, generator), runs, n, budget, generator)

    def climb(self, oracle: ScoreOracle, x: Tensor, runs: int, n: int, budget: int,
              generator: torch.Generator) -> _Swarm:
        """Advance ``runs`` runs of ``n`` particles from starts x (runs * n, *event_shape), run-major."""
        s = oracle.scores(x)
        spent = runs * n
        swarm = _Swarm(
            x=x,
            s=s.reshape(runs, n),
            log_p=torch.zeros(runs, dtype=torch.float64),
            level=torch.full((runs,), -math.inf, dtype=torch.float64),
            log_step=torch.full((runs,), math.log(0.5), dtype=torch.float64),
            status=torch.full((runs,), RUNNING),
            n_levels=torch.zeros(runs, dtype=torch.long),
        )
        while bool((swarm.status == RUNNING).any()):
            self._next_level(swarm)
            active = swarm.status == RUNNING
            cost = int(active.sum()) * n * self.n_steps
            if not bool(active.any()):
                break
            if spent + cost > budget:
                swarm.status[active] = STOPPED
                break
            self._resample(swarm, active, generator)
            self._move(oracle, swarm, active, generator)
            spent += cost
        return swarm

    def _next_level(self, swarm: _Swarm) -> None:
        """Set each running run's next level, multiply in its surviving fraction, mark ends."""
        runs, n = swarm.shape
        keep = math.ceil(self.level_fraction * n)
        below = torch.topk(swarm.s, keep + 1, dim=1).values[:, -1]
        level = torch.clamp(torch.nextafter(below, torch.tensor(math.inf)), max=TARGET)
        running = swarm.status == RUNNING
        survivors = (swarm.s >= level[:, None]).sum(1)
        # a level nobody passes ends the run at 0; log_p keeps the product so far (a bound)
        factor = torch.where(survivors > 0, torch.log(survivors.double() / n), 0.0)
        swarm.log_p = torch.where(running, swarm.log_p + factor, swarm.log_p)
        swarm.level = torch.where(running, level, swarm.level)
        swarm.n_levels += running.long()
        swarm.levels.append([float(v) for v in level[running]])
        swarm.status[running & (level >= TARGET)] = DONE
        swarm.status[running & (survivors == 0)] = EMPTY
        swarm.status[running & (swarm.n_levels >= self.max_levels) & (swarm.status == RUNNING)] = STOPPED

    @staticmethod
    def _resample(swarm: _Swarm, active: Tensor, generator: torch.Generator) -> None:
        """Replace particles below their run's level by copies of its survivors, evenly spread.

        Each survivor gets floor(N / k) or ceil(N / k) copies (residual copies at random),
        which adds less noise than multinomial resampling.
        """
        runs, n = swarm.shape
        flat_index = torch.arange(runs * n).reshape(runs, n)
        for r in torch.nonzero(active).flatten().tolist():
            alive = torch.nonzero(swarm.s[r] >= swarm.level[r]).flatten()
            order = alive[torch.randperm(alive.numel(), generator=generator)]
            pick = order[torch.arange(n) % alive.numel()]
            flat_index[r] = r * n + pick
        flat = flat_index.flatten()
        swarm.x = swarm.x[flat]
        swarm.s = swarm.s.flatten()[flat].reshape(runs, n)

    def _move(self, oracle: ScoreOracle, swarm: _Swarm, active: Tensor, generator: torch.Generator) -> None:
        """M reversible moves per particle of the active runs, one oracle call per move."""
        runs, n = swarm.shape
        rows = torch.nonzero(active).flatten()
        flat = (rows[:, None] * n + torch.arange(n)).flatten()
        x, s = swarm.x[flat], swarm.s[rows]
        level, log_step = swarm.level[rows, None], swarm.log_step[rows]
        accepted = 0.0
        for _ in range(self.n_steps):
            step = torch.exp(log_step).repeat_interleave(n)
            proposal = oracle.dist.propose(x, step, generator)
            s_new = oracle.scores(proposal).reshape(-1, n)
            ok = s_new >= level
            x = torch.where(ok.reshape(-1, *([1] * (x.dim() - 1))), proposal, x)
            s = torch.where(ok, s_new, s)
            rate = ok.double().mean(1)
            accepted += float(rate.mean())
            log_step = torch.clamp(log_step + (rate - self.target_acceptance), -9.0, 0.0)
        swarm.x[flat], swarm.s[rows], swarm.log_step[rows] = x, s, log_step
        swarm.acceptance.append(accepted / self.n_steps)

    def _diagnostics(self, swarm: _Swarm, pilot_levels: int | None, calls: int) -> dict[str, Any]:
        runs, n = swarm.shape
        names = {RUNNING: "running", DONE: "done", EMPTY: "empty", STOPPED: "stopped"}
        return {
            "n_particles": n,
            "n_steps": self.n_steps,
            "n_repeats": runs,
            "level_fraction": self.level_fraction,
            "pilot_levels": pilot_levels,
            "n_levels": [int(k) for k in swarm.n_levels],
            "levels": swarm.levels,
            "acceptance": [round(a, 4) for a in swarm.acceptance],
            "repeat_log10_p": [float(v) / math.log(10) for v in swarm.log_p],
            "repeat_status": [names[int(v)] for v in swarm.status],
            "model_calls": calls,
        }


@dataclass(frozen=True)
class Climb:
    """Some of the independent runs, from their chain starts to their end, wherever the model is."""

    splitting: Splitting
    x: Tensor  # (runs * n, *event_shape), run-major
    runs: int
    n: int
    budget: int

    def __call__(self, oracle: ScoreOracle, generator: torch.Generator) -> _Swarm:
        return self.splitting.climb(oracle, self.x, self.runs, self.n, self.budget, generator)


def _climbs(splitting: Splitting, x: Tensor, n: int, budget: int, runs: list[int]) -> list[Climb]:
    """One Climb per share of the runs, each with the starts of its runs and its share of the budget."""
    total, first, climbs = sum(runs), 0, []
    for r in runs:
        if r:
            climbs.append(Climb(splitting, x[first * n : (first + r) * n], r, n, budget * r // total))
        first += r
    return climbs


def _starts(dist: Distribution, runs: int, n: int, generator: torch.Generator) -> Tensor:
    """runs * n draws of D to start chains from (run-major): samples, or a sampler-free D's chain starts."""
    if isinstance(dist, ChainStarted):
        return dist.chain_starts(runs, n, generator)
    return dist.sample(runs * n, generator)


# --- combining the repeats --------------------------------------------------------------------
def _combine(swarm: _Swarm, confidence: float) -> tuple[float, tuple[float, float], tuple[str, ...]]:
    """Point estimate, CI and warnings from the runs' final states."""
    runs, n = swarm.shape
    status, log_p = swarm.status, swarm.log_p
    if bool((status == STOPPED).any()):
        # a run that ran out of budget or levels only bounds p from above
        high = _upper_of_means(log_p.numpy(), confidence)
        return (
            -math.inf,
            (-math.inf, min(high, 0.0)),
            (
                "splitting did not reach the catastrophe level within the budget or max_levels: "
                "only an upper bound (the probability of the highest level reached)",
            ),
        )
    estimates = torch.where(status == EMPTY, -math.inf, log_p)
    point = float(logmeanexp(estimates))
    if bool((status == EMPTY).all()):
        # every run met a level no particle could pass (0 hits out of R N there). The runs
        # stop at different depths, so their spread is no sampling error: bound p by the
        # mean probability of the levels reached times the binomial bound for 0 hits.
        high = float(logmeanexp(log_p)) + binomial_log_ci(0, runs * n, confidence)[1]
        return (
            -math.inf,
            (-math.inf, min(high, 0.0)),
            ("no particle got past a plateau of the score: only an upper bound",),
        )
    if bool((status == EMPTY).any()):
        return point, _linear_t_interval(estimates.numpy(), confidence), ()
    low, high = lognormal_mean_log_ci(estimates.numpy(), confidence)
    return point, (min(low, point), min(max(high, point), 0.0)), ()


def lognormal_mean_log_ci(log_values: np.ndarray, confidence: float) -> tuple[float, float]:
    """Cox's interval for log E[X] from samples of log X, assumed normal (Zhou & Gao 1997).

    log E[X] = mu + sigma^2 / 2, estimated by m + s^2 / 2 with standard error
    sqrt(s^2 / k + s^4 / (2 (k - 1))), and a t quantile with k - 1 degrees of freedom.
    """
    k = len(log_values)
    m = float(np.mean(log_values))
    var = float(np.var(log_values, ddof=1))
    se = math.sqrt(var / k + var**2 / (2 * (k - 1)))
    t = float(stats.t.ppf(0.5 + confidence / 2, df=k - 1))
    centre = m + var / 2
    return centre - t * se, centre + t * se


def _linear_t_interval(log_values: np.ndarray, confidence: float) -> tuple[float, float]:
    """t-interval on the mean of p (some runs gave 0), computed relative to the largest run."""
    top = float(np.max(log_values))
    ratio = np.exp(log_values - top)
    k = len(ratio)
    mean, se = float(np.mean(ratio)), float(np.std(ratio, ddof=1) / math.sqrt(k))
    t = float(stats.t.ppf(0.5 + confidence / 2, df=k - 1))
    low = mean - t * se
    return (top + math.log(low) if low > 0 else -math.inf), min(top + math.log(mean + t * se), 0.0)


def _upper_of_means(log_values: np.ndarray, confidence: float) -> float:
    """Upper end of the CI for the mean of exp(log_values) (a bound on p when they bound it)."""
    if np.ptp(log_values) == 0.0:
        return float(log_values[0])
    return lognormal_mean_log_ci(log_values, confidence)[1]
