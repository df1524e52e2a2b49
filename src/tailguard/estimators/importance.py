"""Adaptive importance sampling by the cross-entropy method with Gaussian-mixture proposals.

Iterate: draw from the proposal q, score, set the level to min(quantile_{1-rho}(s), 0),
refit q to the elite draws (s >= level) weighted by p_D/q; stop once the level reaches
0. The remaining budget then goes to fresh draws from the final q:
p_hat = mean(w * 1[s > 0]) with w = p_D / q, and a CI from the weights' sample variance.
Mixture proposals are what let several separate failure regions all be found; a single
Gaussian settles on one and underestimates by about the number of regions.

References: Rubinstein, "Optimization of computer simulation models with rare events"
(EJOR, 1997); Kurtz & Song, Structural Safety 2013 (CE with Gaussian mixtures);
Vehtari et al., "Pareto smoothed importance sampling" (2015) for the Pareto-k check.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor, nn

from .._logspace import ess, log_mean_upper_heavier_tail, logmeanexp, normal_log_ci, pareto_k
from ..backends.active import shares
from ..dists.base import Distribution
from ..dists.empirical import NoisyEmpirical
from ..errors import InvalidArgumentError
from ..oracle import ScoreOracle
from ..specs import Spec
from . import _gmm, _space, modes
from ._space import BaseSpace
from .base import Outcome, register

ScoreFn = Callable[[Tensor], Tensor]

#: draws of a noisy empirical D per data point below which `is` warns (see _flag_thin_defence)
MIN_DEFENSIVE_DRAWS = 10.0


def _refit(space: BaseSpace, z: Tensor, log_w: Tensor, q: _gmm.Mixture, est: ImportanceSampling,
           generator: torch.Generator) -> _gmm.Mixture:
    """The next proposal from elites z (n, d) with log weights (n,)."""
    if not space.is_mixture:
        return _gmm.fit_projected(z, log_w, est.max_components, est.elites_per_component,
                                  est.shrink, est.max_dims, generator)
    return _gmm.refit_isotropic(z, log_w, q, prior_count=est.prior_count)


@dataclass(frozen=True)
class _Adapted:
    proposal: _gmm.Mixture
    levels: list[float]
    reached: bool


@register
@dataclass(frozen=True)
class ImportanceSampling:
    """Cross-entropy adaptive importance sampling with Gaussian-mixture proposals.

    rho: elite fraction per CE iteration. level_fraction: draws per CE iteration as a
    fraction of the budget (clipped to [min_level_size, 10_000]). adapt_fraction: the
    most of the budget adaptation may spend. max_components, elites_per_component, shrink:
    mixture size and covariance shrinkage for a Gaussian D. prior_count: how strongly a
    noisy empirical D's components resist moving (in effective elites).
    elite_ess_fraction: the elites' weights are tempered until their ESS is at least this
    fraction of their number. earlier_share: the share of the final proposal given to the
    proposals of earlier levels (a guard against regions the last fit starved).
    temperature: of the soft spec in ``log_prob``. misfit_allowance: a relative error
    added in quadrature to the sampling error in the CI, for the bias of a proposal that
    under-samples a small part of the failure region (which the weights' own variance
    cannot reveal); 0.03 covers the misses measured in benchmarks/estimation.md.
    defensive_share: for a NoisyEmpirical D, the share of D itself in the final proposal.
    mode_fraction: the share of the budget spent first on the failure-mode search
    (``modes``), whose modes join D in the first proposal with ``mode_share`` of its
    mass (0 turns the search off).
    """

    name: ClassVar[str] = "is"
    rho: float = 0.1
    level_fraction: float = 0.04
    min_level_size: int = 500
    adapt_fraction: float = 0.5
    max_components: int = 8
    max_dims: int = 10
    elites_per_component: int = 15
    shrink: float = 1.0
    prior_count: float = 20.0
    max_iterations: int = 60
    elite_ess_fraction: float = 0.5
    earlier_share: float = 0.1
    temperature: float = 0.1
    misfit_allowance: float = 0.03
    defensive_share: float = 0.2
    mode_fraction: float = 0.1
    mode_share: float = 0.5

    def __post_init__(self) -> None:
        checks = {
            "rho": 0.0 < self.rho < 1.0,
            "level_fraction": 0.0 < self.level_fraction < 1.0,
            "min_level_size": self.min_level_size >= 10,
            "adapt_fraction": 0.0 < self.adapt_fraction < 1.0,
            "max_components": self.max_components >= 1,
            "max_dims": self.max_dims >= 1,
            "elites_per_component": self.elites_per_component >= 1,
            "shrink": self.shrink >= 0.0,
            "prior_count": self.prior_count >= 0.0,
            "max_iterations": self.max_iterations >= 1,
            "elite_ess_fraction": 0.0 < self.elite_ess_fraction <= 1.0,
            "misfit_allowance": self.misfit_allowance >= 0.0,
            "defensive_share": 0.0 <= self.defensive_share < 1.0,
            "earlier_share": 0.0 <= self.earlier_share < 1.0,
            "temperature": self.temperature > 0.0,
            "mode_fraction": 0.0 <= self.mode_fraction < 0.5,
            "mode_share": 0.0 <= self.mode_share < 1.0,
        }
        for key, ok in checks.items():
            if not ok:
                raise InvalidArgumentError(f"{key} is out of range: {getattr(self, key)!r}")

    def unsupported_reason(self, model: nn.Module, dist: Distribution, spec: Spec) -> str | None:
        if not spec.continuous:
            return "the spec is a black-box predicate; the CE levels need a graded score"
        if not _space.supports(dist):
            return (
                f"{type(dist).__name__} has no Gaussian-mixture form to build proposals from; "
                "'is' supports Gaussian and NoisyEmpirical inputs"
            )
        return None

    def min_budget(self) -> int:
        return 2_000

    # --- adaptation -----------------------------------------------------------------------
    def _level_size(self, budget: int) -> int:
        return int(min(10_000, max(self.min_level_size, self.level_fraction * budget)))

    def search_modes(self, oracle: ScoreOracle, budget: int,
                     generator: torch.Generator) -> modes.ModeSearch | None:
        """The failure-mode search this estimator starts with (None when off or unaffordable)."""
        space = BaseSpace(oracle.dist)
        search_budget = int(self.mode_fraction * budget)
        if space.is_mixture and self.mode_fraction > 0:
            # every data point is worth one screening call, up to a third of the budget
            pieces = space.centres().shape[0]
            search_budget = max(search_budget, min(pieces + 32 * modes.CALLS_PER_CHAIN, budget // 3))
        if search_budget < 50:
            return None
        return modes.search(oracle, space, search_budget, generator)

    def _start(self, space: BaseSpace,
               found: modes.ModeSearch | None) -> tuple[ImportanceSampling, _gmm.Mixture]:
        """The first proposal: D, blended with one component per failure mode found.

        Returns the settings to adapt with (room for as many components and informed
        directions as there are modes) and the proposal.
        """
        relevant = () if found is None else found.relevant()
        n = len(relevant)
        if n == 0:
            return self, space.initial()
        centres = torch.stack([m.z for m in relevant])
        seeded = _gmm.isotropic(torch.full((n,), -math.log(n), dtype=torch.float64), centres)
        tuned = replace(self, max_components=max(self.max_components, n), max_dims=max(self.max_dims, n + 1))
        return tuned, _gmm.blend(space.initial(), [seeded], self.mode_share)

    def _adapt(self, space: BaseSpace, score: ScoreFn, budget: int, start: _gmm.Mixture,
               generator: torch.Generator) -> tuple[_Adapted, int]:
        """Run CE iterations from ``start`` within adapt_fraction * budget calls; returns (result, calls)."""
        n = self._level_size(budget)
        cap = int(self.adapt_fraction * budget)
        q, used = start, 0
        levels: list[float] = []
        fitted: list[_gmm.Mixture] = []
        while used + n <= cap and len(levels) < self.max_iterations:
            z, s, log_w = self._draw_level(space, q, score, n, cap - used, generator)
            used += z.shape[0]
            level, elite = self._elites(s)
            levels.append(level)
            fit_w = _temper(log_w[elite], self.elite_ess_fraction)
            q = _refit(space, z[elite], fit_w, q, self, generator)
            if level >= 0.0:
                return _Adapted(self._final_proposal(space, q, fitted), levels, True), used
            fitted.append(q)
        return _Adapted(self._final_proposal(space, q, fitted[:-1]), levels, False), used

    def _final_proposal(self, space: BaseSpace, q: _gmm.Mixture, earlier: list[_gmm.Mixture]) -> _gmm.Mixture:
        """The last fit, a share of the earlier ones and, for a mixture D, a share of D itself.

        CE prunes the data points its elites did not reach; when many of them each carry
        a little of p, their sum is lost without a trace in the weights. Keeping D itself
        in the proposal (a defensive mixture, Hesterberg 1995) bounds every weight by
        1 / defensive_share there, so that loss becomes visible variance instead.
        """
        proposal = _gmm.blend(q, earlier, self.earlier_share)
        if space.is_mixture:
            proposal = _gmm.blend(proposal, [space.initial()], self.defensive_share)
        return proposal

    def _draw_level(self, space: BaseSpace, q: _gmm.Mixture, score: ScoreFn, n: int, room: int,
                    generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Draws (m, d), scores (m,), log p/q (m,) for one CE iteration, m a multiple of n.

        When the scores are tied at the top (dead ReLUs put most draws on one plateau),
        more batches are drawn from the same q, while the budget allows, until at least
        elites_per_component draws lie strictly above the plateau: a fit to two or three
        elites would lose failure regions.
        """
        zs, ss = [], []
        while True:
            zs.append(q.sample(n, generator))
            ss.append(score(space.to_x(zs[-1])))
            s = torch.cat(ss)
            _, elite = self._elites(s)
            if int(elite.sum()) >= self.elites_per_component or (len(zs) + 1) * n > room:
                break
        z = torch.cat(zs)
        return z, s, space.base_log_prob(z) - q.log_prob(z)

    def _elites(self, s: Tensor) -> tuple[float, Tensor]:
        """The level min(quantile_{1-rho}(s), 0) and the elite mask (m,).

        Ties at the quantile make the elites strictly above it, or the level would stall.
        """
        level = min(float(torch.quantile(s, 1.0 - self.rho)), 0.0)
        elite = s >= level
        if float(elite.double().mean()) > 2 * self.rho and bool((s > level).any()):
            elite = s > level
        return level, elite

    # --- estimation -----------------------------------------------------------------------
    def run(
        self, oracle: ScoreOracle, budget: int, generator: torch.Generator, confidence: float
    ) -> Outcome:
        calls_before = oracle.n_calls
        found = self.search_modes(oracle, budget, generator)
        return self.run_from(oracle, budget - (oracle.n_calls - calls_before), generator, confidence, found)

    def run_from(self, oracle: ScoreOracle, budget: int, generator: torch.Generator, confidence: float,
                 found: modes.ModeSearch | None) -> Outcome:
        """``run`` after the mode search: adapt from D and the modes ``found``, then estimate."""
        space = BaseSpace(oracle.dist)
        tuned, start = self._start(space, found)
        adapted, used = tuned._adapt(space, oracle.scores, budget, start, generator)
        # the final stage draws, scores and weighs where the model is; only (s, log_w) come back
        final = oracle.spread(lambda k: [WeightedDraws(space, adapted.proposal, n)
                                         for n in shares(budget - used, k) if n], generator)
        s, log_w = (torch.cat(parts) for parts in zip(*final, strict=True))
        # an unnormalised D's estimated normaliser scales every weight: its error adds in quadrature
        allowance = math.hypot(self.misfit_allowance, space.normaliser_rel_se)
        outcome = _final_outcome(s, log_w, adapted, confidence, self.rho, allowance)
        if math.isinf(space.normaliser_rel_se):
            outcome = replace(outcome, trusted=False, warnings=(
                *outcome.warnings, "the normaliser of this unnormalised D was estimated from weights with an "
                "infinite-variance tail (Pareto k > 0.5), so its error, and this interval, are unbounded"))
        if found is not None:
            outcome = replace(outcome, diagnostics={**outcome.diagnostics, **found.diagnostics()})
        if isinstance(space.dist, NoisyEmpirical):
            outcome = self._flag_thin_defence(outcome, space.dist, s.shape[0])
        return outcome

    def defensive_draws_per_point(self, n_final: int, dist: NoisyEmpirical) -> float:
        """Draws of D itself per data point among ``n_final`` final-stage draws."""
        return self.defensive_share * n_final / dist.n_components

    def _flag_thin_defence(self, outcome: Outcome, dist: NoisyEmpirical, n_final: int) -> Outcome:
        """Refuse the upper end when D is drawn too rarely per data point to see what the proposal left.

        Failure mass near data points that the cross-entropy fit dropped is sampled only
        through the defensive share; with fewer than MIN_DEFENSIVE_DRAWS draws per point a
        p spread over many points can be missed with no sign in the weights (the digits
        case of benchmarks/estimation.md: 0.04-0.2 decades low with tight intervals at
        3e4-1.5e5 calls). The estimate is then a likely underestimate: its lower end stands,
        its upper end is refused and the outcome is not trusted.
        """
        per_point = self.defensive_draws_per_point(n_final, dist)
        if per_point >= MIN_DEFENSIVE_DRAWS or not math.isfinite(outcome.log_p):
            return outcome
        warning = (f"D itself was drawn only {per_point:.1f} times per data point: failures near data "
                   "points the proposal left would go unseen, so the estimate may be low and no upper "
                   "end is given; a larger budget checks it")
        return replace(outcome, ci=(outcome.ci[0], 0.0), warnings=(*outcome.warnings, warning), trusted=False,
                       assumes="nothing above the estimate: too few draws of D per data point")

    def log_prob(
        self,
        model: nn.Module,
        dist: Distribution,
        spec: Spec,
        budget: int,
        generator: torch.Generator,
    ) -> Tensor:
        """logmeanexp(log p_D(x) - log q(x) + soft(x)) on fixed draws x from the adapted q.

        q is adapted without gradients; gradients reach the model through the soft spec
        and D's parameters through ``dist.log_prob`` on the (fixed) draws.
        """
        x, log_q = self.fixed_draws(model, dist, spec, budget, generator)
        return self.surrogate(model, dist, spec, x, log_q)

    def fixed_draws(
        self, model: nn.Module, dist: Distribution, spec: Spec, budget: int,
        generator: torch.Generator,
    ) -> tuple[Tensor, Tensor]:
        """Adapt q without gradients; return its draws x (n, *event_shape) and log q_x(x) (n,)."""
        oracle = ScoreOracle(model, dist, spec)
        space = BaseSpace(dist)
        tuned, start = self._start(space, self.search_modes(oracle, budget, generator))
        left = budget - oracle.n_calls
        with torch.no_grad():
            adapted, used = tuned._adapt(space, oracle.scores, left, start, generator)
            z = adapted.proposal.sample(left - used, generator)
            log_q = adapted.proposal.log_prob(z) + space.log_jac
        return space.to_x(z), log_q

    def surrogate(self, model: nn.Module, dist: Distribution, spec: Spec, x: Tensor,
                  log_q: Tensor) -> Tensor:
        """logmeanexp(log p_D(x) - log q(x) + soft(x)): differentiable in the model and D."""
        y = ScoreOracle(model, dist, spec).outputs(x)
        soft = spec.soft(x, y, self.temperature).double()
        return logmeanexp(dist.log_prob(x).double() - log_q + soft)


@dataclass(frozen=True)
class WeightedDraws:
    """``n`` draws z of the proposal: their scores (n,) and log weights ln p_D - ln q (n,)."""

    space: BaseSpace
    proposal: _gmm.Mixture
    n: int

    def __call__(self, oracle: ScoreOracle, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        z = self.proposal.sample(self.n, generator)
        s = oracle.scores(self.space.to_x(z))
        return s, self.space.base_log_prob(z) - self.proposal.log_prob(z)


def _temper(log_w: Tensor, fraction: float) -> Tensor:
    """alpha * log_w (n,) with the largest alpha in [0, 1] whose weights keep ESS >= fraction * n.

    Plain CE weights p/q on the elites are often degenerate early on (a component a
    little further out gets exponentially more weight), and a fit to a handful of
    elites drops every other failure region for good. Tempering only affects which
    proposal is built; the final estimate's weights stay exact, so it stays unbiased.
    """
    target = fraction * log_w.shape[0]
    if float(_gmm.kish_ess(torch.exp(log_w - log_w.max()))) >= target:
        return log_w
    low, high = 0.0, 1.0
    for _ in range(30):
        mid = 0.5 * (low + high)
        scaled = mid * log_w
        if float(_gmm.kish_ess(torch.exp(scaled - scaled.max()))) >= target:
            low = mid
        else:
            high = mid
    return low * log_w


def _final_outcome(s: Tensor, log_w: Tensor, adapted: _Adapted, confidence: float,
                   rho: float, misfit_allowance: float) -> Outcome:
    """Estimate, CI, diagnostics and warnings from the final stage's scores and log weights (n,)."""
    n = s.shape[0]
    hit = s > 0
    terms = torch.where(hit, log_w, torch.full_like(log_w, -math.inf))
    diagnostics = {
        "ce_iterations": len(adapted.levels),
        "levels": [float(v) for v in adapted.levels],
        "reached_event": adapted.reached,
        "n_components": adapted.proposal.n_components,
        "final_draws": int(n),
        "hits": int(hit.sum()),
    }
    warnings: list[str] = []
    if not adapted.reached:
        warnings.append("adaptation did not reach the catastrophe level within its budget; "
                        "the estimate may be far off")
    if not bool(hit.any()):
        return _zero_hit_outcome(s, log_w, diagnostics, warnings, confidence, rho)
    log_p = float(logmeanexp(terms))
    log_second = float(logmeanexp(2 * terms))
    rel_var = max(math.exp(log_second - 2 * log_p) - 1.0, 0.0)
    rel_se = math.sqrt(rel_var / n)
    k_hat, n_eff = pareto_k(terms), ess(terms)
    diagnostics.update({"ess": n_eff, "pareto_k": None if math.isnan(k_hat) else k_hat, "rel_se": rel_se})
    ci = _with_tail_allowance(normal_log_ci(log_p, math.hypot(rel_se, misfit_allowance), confidence),
                              terms, confidence)
    if k_hat > 0.7 or n_eff < 30:
        # the weights' variance is not finite or not estimated: the missing mass can be any
        # size, so the upper end is refused (p <= 1) rather than printed
        warnings.append(f"importance weights are heavy-tailed (Pareto k = {k_hat:.2f}, ESS = {n_eff:.0f}): "
                        "the proposal may miss much of the probability, so no upper end is given")
        return Outcome(log_p, (ci[0], 0.0), diagnostics, tuple(warnings), trusted=False,
                       assumes="nothing above the estimate: heavy-tailed weights")
    return Outcome(log_p, ci, diagnostics, tuple(warnings), trusted=adapted.reached,
                   assumes="the proposal covers every failure region (weights with a finite variance)")


def _with_tail_allowance(ci: tuple[float, float], terms: Tensor, confidence: float) -> tuple[float, float]:
    """The CI with its upper end raised, where needed, to allow a heavier weight tail than drawn.

    A variance-based interval falls short on its upper side when the weights are
    heavy-tailed (most runs have not yet drawn the weights that carry much of p); see
    log_mean_upper_heavier_tail. With too few hits to bound the tail's shape the
    variance-based end is kept (the Pareto k and ESS checks judge those runs).
    """
    upper = log_mean_upper_heavier_tail(terms, confidence)
    if not math.isfinite(upper):
        return ci
    return ci[0], min(max(ci[1], upper), 0.0)


def _zero_hit_outcome(s: Tensor, log_w: Tensor, diagnostics: dict, warnings: list[str],
                      confidence: float, rho: float) -> Outcome:
    """No catastrophe drawn: -inf, with the upper end of a CI on P[s >= g] for the top-rho level g.

    {s > 0} lies inside {s >= g} whenever g <= 0, so that upper end bounds p.
    """
    g = float(torch.quantile(s, 1.0 - rho))
    terms = torch.where(s >= g, log_w, torch.full_like(log_w, -math.inf))
    log_upper_p = float(logmeanexp(terms))
    rel_var = max(math.exp(float(logmeanexp(2 * terms)) - 2 * log_upper_p) - 1.0, 0.0)
    _, high = normal_log_ci(log_upper_p, math.sqrt(rel_var / s.shape[0]), confidence)
    diagnostics.update({"ess": 0.0, "pareto_k": None, "bound_level": g})
    warnings.append(f"no catastrophe in {s.shape[0]:,} proposal draws: the upper end is an importance-"
                    f"sampling estimate of P[score >= {g:.3g}], a heuristic, not a proven bound")
    return Outcome(log_p=-math.inf, ci=(-math.inf, high), diagnostics=diagnostics,
                   warnings=tuple(warnings), heuristic=True, trusted=False,
                   assumes="the proposal reaches every region where the score is high")
