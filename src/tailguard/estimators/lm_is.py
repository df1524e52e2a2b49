"""Importance sampling for an LM-written D, with a proposal steered from D's own conditionals.

When D is a language model (``LMDistribution``) the catastrophic messages are a tiny
set that plain sampling never reaches, but every message's exact probability p_D(x)
is known. The proposal q is built from D's next-token conditionals, so one LM pass
per draw gives both q(x) and p_D(x):

* D itself, with share ``defensive`` (every weight p_D / q is then at most 1 / defensive,
  and what the other components never write is still sampled; Hesterberg 1995);
* a token-level tilt, q(v | x_<t) proportional to p_D(v | x_<t) exp(theta[t, v]),
  learnt by the cross-entropy method (Rubinstein 1999; De Boer et al. 2005): each
  adaptation batch keeps its elites (the ``elite_fraction`` best scores, or the
  catastrophes once there are enough) and moves theta by ``smoothing`` times the log
  ratio of the elites' token frequencies at each position to the tilt's own;
* neighbourhoods of the most probable catastrophic messages found so far ("triggers"
  x*), topped up with the best near misses: at each position keep x*_t with
  probability 1 - e, else draw from D's conditional (e in NEIGHBOURHOOD_SPREADS),
  which reach messages that differ from them in a few tokens, the way ``tsis`` does
  for independent tokens.

After each adaptation batch the single-token changes of a few found messages and of
the best near misses (ranked by J_lam = log p_D + lam min(s, 0) for each lam in
SEARCH_LAMBDAS) are scored, their p_D from one LM pass each: catastrophes of a
next-token policy are conjunctions of a few particular tokens, which a product-form
tilt learns slowly and the draws rarely write (docs/design/013-lm-estimation.md).

Every distinct catastrophic message met on the way joins a found set S with its exact
probability, and the estimate, with S and q frozen, is

    P[C] = p_D(S) + E_q[ (p_D(x) / q(x)) 1[s(x) > 0] 1[x not in S] ],

p_D(S) a proven lower bound, the rest unbiased; the interval is the one ``tsis``
gives such a sum (normal when the hits outside S are many and tame, else proven:
the largest weight times a Clopper-Pearson bound). Draws that land in S need no
policy call.

Cost: one model call is one row through the policy, one LM call one message written
or scored by D's LM; the budget counts both (``counts_lm_calls``). Draws from D's own
component are plain draws of D, and their exact binomial interval is kept: with no
catastrophe anywhere the upper end is the smaller of the two bounds.

A spec that states each message's exact chance of a catastrophe pi(x) (``log_chance``,
e.g. ``SampledTokenIn``: the policy's sampled reply) is estimated as E_q[w pi]: the
reply is importance-sampled too, steered into the catastrophe, and its weight is pi(x)
exactly (Rao-Blackwell). No message is then certainly catastrophic, so there is no found
set; the search climbs log pi, and the interval is ``mean_chance_outcome``'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._logspace import binomial_log_ci, ess, normal_log_ci, pareto_k
from ..dists.base import Distribution
from ..dists.lm import LMDistribution, continuation_logits, vocab_size
from ..errors import InvalidArgumentError
from ..oracle import ScoreOracle
from ..specs import Spec
from .base import Outcome, register
from .itgis import PARETO_K_LIMIT
from .tsis import MIN_HIT_ESS, found_plus_sampled_outcome, seen_once_hits

#: chance that a neighbourhood component redraws each token of its trigger from D
NEIGHBOURHOOD_SPREADS = (0.15, 0.4)
#: share of the mixture given to the tilt once triggers are known (all but D's share before)
TILT_SHARE = 0.3
#: fewest catastrophes in a batch that become the elites by themselves
MIN_ELITE_HITS = 8
#: weights of the score against log p_D when near misses are ranked
SEARCH_LAMBDAS = (1.0, 4.0, 16.0)
#: messages (found, and near misses under each lam) whose single-token changes follow each batch
EXPAND_PER_BATCH = 4
#: tokens tried per position in those changes (all when the vocabulary is no larger)
CHANGE_TOKENS = 16


def spent_calls(oracle: ScoreOracle) -> int:
    """Policy calls plus LM calls made so far through this oracle and its LM-written D."""
    dist = oracle.dist
    return oracle.n_calls + (dist.lm_calls if isinstance(dist, LMDistribution) else 0)


def has_chance(spec: Spec) -> bool:
    """Whether ``spec`` states each input's exact chance of a catastrophe (``log_chance(x, y)``)."""
    return callable(getattr(spec, "log_chance", None))


def log_chances(oracle: ScoreOracle, x: Tensor) -> Tensor:
    """log pi(x) (n,), float64: each message's exact chance of a catastrophe, for a spec that states it."""
    spec, model = oracle.spec, oracle.model
    return oracle.features(x, lambda rows: spec.log_chance(rows, model(rows)))  # type: ignore[attr-defined]


def mean_chance_outcome(log_terms: Tensor, log_max_term: float, confidence: float,
                        diagnostics: dict[str, Any]) -> Outcome:
    """The mean of i.i.d. terms t = w(x) pi(x) in [0, e^log_max_term] (given as log t (n,)), and its CI.

    Normal (delta method on log P) when the terms are tame: effective number at least
    MIN_HIT_ESS and Pareto k at most PARETO_K_LIMIT. Otherwise the empirical Bernstein
    bounds of Maurer & Pontil (2009, Theorem 4), which hold for any terms in [0, W]
    whatever their tail, at (1 - confidence) / 2 on each side.
    """
    n = log_terms.numel()
    terms = torch.exp(log_terms)
    mean = float(terms.mean())
    k_hat = pareto_k(log_terms) if mean > 0 else math.nan
    effective = ess(log_terms) if mean > 0 else 0.0
    rel_se = float(terms.std()) / math.sqrt(n) / mean if mean > 0 else math.inf
    diagnostics = {**diagnostics, "terms": n, "ess": effective, "rel_se": rel_se,
                   "pareto_k": None if math.isnan(k_hat) else k_hat}
    if mean > 0 and effective >= MIN_HIT_ESS and k_hat <= PARETO_K_LIMIT:
        return Outcome(math.log(mean), normal_log_ci(math.log(mean), rel_se, confidence),
                       {**diagnostics, "interval": "normal"},
                       assumes="a normal interval for the mean of the exact chances (weighted)")
    width = math.exp(log_max_term)
    log_term = math.log(4.0 / (1.0 - confidence))  # ln(2 / delta), delta = (1 - confidence) / 2
    variance = float((terms / width).var()) if n > 1 else 0.25
    slack = width * (math.sqrt(2.0 * variance * log_term / n) + 7.0 * log_term / (3.0 * max(n - 1, 1)))
    low = math.log(mean - slack) if mean > slack else -math.inf
    high = math.log(min(mean + slack, 1.0))
    return Outcome(math.log(mean) if mean > 0 else -math.inf, (low, high),
                   {**diagnostics, "interval": "empirical Bernstein"},
                   assumes=f"nothing: every term lies in [0, {width:.3g}] (empirical Bernstein bounds)")


def policy_budget(estimator: object, dist: Distribution, budget: int) -> int:
    """What an estimator may spend through the oracle: all of ``budget``, or half on an LM-written D.

    Estimators that count LM calls themselves (``counts_lm_calls``) get the whole budget;
    for the others every policy call on an LM-written D comes with one LM call (the draw,
    or a move of splitting), so they get half.
    """
    if isinstance(dist, LMDistribution) and not getattr(estimator, "counts_lm_calls", False):
        return max(budget // 2, 1)
    return budget


@dataclass
class FoundMessages:
    """Distinct catastrophic messages with their exact log-probabilities under D."""

    log_masses: dict[tuple[int, ...], float] = field(default_factory=dict)

    def add(self, x: Tensor, log_d: Tensor, hit: Tensor) -> None:
        self.log_masses.update(zip(map(tuple, x[hit].tolist()), log_d[hit].tolist(), strict=True))

    def contains(self, x: Tensor) -> Tensor:
        return torch.tensor([tuple(r) in self.log_masses for r in x.tolist()], dtype=torch.bool)

    def log_mass(self) -> float:
        if not self.log_masses:
            return -math.inf
        return float(torch.logsumexp(torch.tensor(list(self.log_masses.values()), dtype=torch.float64), 0))

    def top(self, k: int, length: int) -> Tensor:
        ranked = sorted(self.log_masses.items(), key=lambda item: -item[1])[:k]
        return torch.tensor([row for row, _ in ranked], dtype=torch.long).reshape(len(ranked), length)


@dataclass
class NearMisses:
    """Scored messages that are not catastrophes yet, ranked by J_lam = log p_D + lam min(s, 0).

    J trades how likely D makes a message against how close it is to a catastrophe:
    small lam keeps the probable messages, large lam the nearly catastrophic ones, and
    single-token changes of the best under each lam find probable catastrophes either way
    (the objective of ``tsis``'s search, ``_trigger_search``).
    """

    size: int
    seen: dict[tuple[int, ...], tuple[float, float]] = field(default_factory=dict)  # (log p_D, score)
    expanded: set[tuple[int, ...]] = field(default_factory=set)

    def add(self, x: Tensor, log_d: Tensor, s: Tensor) -> None:
        miss = s <= 0
        self.seen.update(zip(map(tuple, x[miss].tolist()),
                             zip(log_d[miss].tolist(), s[miss].tolist(), strict=True), strict=True))
        if len(self.seen) > self.size:
            best = sorted(self.seen.items(), key=lambda item: -_objective(item[1], SEARCH_LAMBDAS[1]))
            self.seen = dict(best[: self.size])

    def top(self, k: int, length: int, lam: float = SEARCH_LAMBDAS[1], fresh: bool = False) -> Tensor:
        """The k best under J_lam (m, length); ``fresh``: only those not expanded yet (then marked)."""
        rows = [row for row, _ in sorted(self.seen.items(), key=lambda item: -_objective(item[1], lam))
                if not (fresh and row in self.expanded)][:k]
        if fresh:
            self.expanded.update(rows)
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), length)


def _objective(value: tuple[float, float], lam: float) -> float:
    log_d, s = value
    return log_d + lam * min(s, 0.0)


def single_token_changes(states: Tensor, tokens: Tensor) -> Tensor:
    """Every message (m, length) that differs from a row of states (r, length) in one position,
    the new token taken from ``tokens`` (length, c): distinct, none equal to its state."""
    r, length = states.shape
    c = tokens.shape[1]
    rows = states[:, None, None, :].expand(r, length, c, length).clone()
    position = torch.arange(length)[None, :, None].expand(r, length, c)
    rows.scatter_(3, position[..., None], tokens[None, :, :, None].expand(r, length, c, 1))
    rows = rows.reshape(-1, length)
    changed = (rows != states.repeat_interleave(length * c, 0)).any(1)
    return torch.unique(rows[changed], dim=0)


@dataclass(frozen=True)
class SteeredDraws:
    """Draws of a steered mixture: ids (n, length), log p_D (n,), log q (n,), component (n,)."""

    x: Tensor
    log_d: Tensor
    log_q: Tensor
    component: Tensor

    @property
    def log_w(self) -> Tensor:
        return self.log_d - self.log_q


class SteeredMixture:
    """defensive D + tilt theta (length, vocab) + neighbourhoods of triggers (m, length).

    Component 0 is D, 1 the tilt, then one per (spread, trigger). Every component's
    conditional is a function of D's conditional at the same prefix, so sampling and the
    mixture density need one LM pass per message.
    """

    def __init__(self, theta: Tensor | None, triggers: Tensor, defensive: float):
        self.theta = theta
        #: a tilt of zero is D itself, so its draws are plain draws of D too
        self.flat_tilt = theta is None or not bool(theta.any())
        self.triggers = triggers
        m = triggers.shape[0]
        neighbourhood = (1.0 - defensive - TILT_SHARE) if m else 0.0
        tilt = 1.0 - defensive - neighbourhood
        k = m * len(NEIGHBOURHOOD_SPREADS)
        weights = [defensive, tilt] + [neighbourhood / k] * k if k else [defensive, tilt]
        self.log_weights = torch.log(torch.tensor(weights, dtype=torch.float64))
        self.spreads = torch.tensor(NEIGHBOURHOOD_SPREADS, dtype=torch.float64).repeat_interleave(m)
        self.kept = triggers.repeat(len(NEIGHBOURHOOD_SPREADS), 1)  # (K - 2, length)

    @property
    def n_components(self) -> int:
        return self.log_weights.numel()

    def from_d(self, component: Tensor) -> Tensor:
        """Bool (n,): the draws whose component is D itself (D's share, and a tilt still at zero)."""
        return (component == 0) | ((component == 1) & self.flat_tilt)

    def _component_log_q(self, t: int, log_d: Tensor) -> Tensor:
        """log q_k(v | prefix) for every component and token: (b, K, vocab)."""
        assert self.theta is not None
        tilted = torch.log_softmax(log_d + self.theta[t], dim=1)
        parts = [log_d[:, None], tilted[:, None]]
        if self.kept.shape[0]:
            keep = torch.nn.functional.one_hot(self.kept[:, t], log_d.shape[1]).double()  # (K - 2, vocab)
            spread = self.spreads[:, None]
            parts.append(torch.log((1.0 - spread) * keep[None] + spread * torch.exp(log_d)[:, None]))
        return torch.cat(parts, dim=1)

    def sample(self, dist: LMDistribution, n: int, generator: torch.Generator) -> SteeredDraws:
        component = torch.multinomial(torch.exp(self.log_weights), n, replacement=True, generator=generator)
        per_component = torch.zeros(n, self.n_components, dtype=torch.float64)
        log_d_sum = torch.zeros(n, dtype=torch.float64)
        if self.theta is None:
            self.theta = torch.zeros(dist.length, _vocab(dist), dtype=torch.float64)

        def draw(t: int, log_d: Tensor, start: int) -> Tensor:
            rows = slice(start, start + log_d.shape[0])
            log_q = self._component_log_q(t, log_d)  # (b, K, vocab)
            own = log_q[torch.arange(log_d.shape[0]), component[rows]]
            v = torch.multinomial(torch.exp(own), 1, generator=generator)[:, 0]
            per_component[rows] += log_q.gather(2, v[:, None, None].expand(-1, self.n_components, 1))[..., 0]
            log_d_sum[rows] += log_d.gather(1, v[:, None])[:, 0]
            return v

        x = dist.sample_steered(n, generator, draw)
        log_q = torch.logsumexp(per_component + self.log_weights, dim=1)
        return SteeredDraws(x, log_d_sum, log_q, component)


def _vocab(dist: LMDistribution) -> int:
    """The LM's vocabulary size, from its config or one forward pass of the prompt."""
    size = vocab_size(dist.lm)
    if size is not None:
        return size
    with torch.no_grad():
        empty = torch.zeros(1, 0, dtype=torch.long, device=dist.prompt_ids.device)
        return int(continuation_logits(dist.lm, dist.prompt_ids, empty, 1).shape[-1])


@dataclass
class Adapted:
    """What the adaptation learnt: the tilt, the found set, and the plain draws of D it made."""

    theta: Tensor | None
    found: FoundMessages
    near: NearMisses
    found_expanded: set[tuple[int, ...]] = field(default_factory=set)
    plain_draws: int = 0
    plain_hits: int = 0
    batches: int = 0
    levels: list[float] = field(default_factory=list)

    @property
    def found_any(self) -> bool:
        return bool(self.found.log_masses)


@register
@dataclass(frozen=True)
class LMImportanceSampling:
    """Importance sampling of an LM-written D with a steered proposal (see the module docstring).

    Settings: ``adapt_share`` of the budget for the cross-entropy batches of
    ``batch_size`` draws; ``elite_fraction`` of each batch that the tilt learns from;
    ``defensive`` share of D in the proposal; ``components`` most probable found
    messages that seed neighbourhoods; ``smoothing`` of the tilt's updates and its
    bound ``max_tilt`` (nats).
    """

    name: ClassVar[str] = "lm-is"
    counts_lm_calls: ClassVar[bool] = True
    adapt_share: float = 0.4
    batch_size: int = 256
    elite_fraction: float = 0.1
    defensive: float = 0.1
    components: int = 16
    smoothing: float = 0.7
    max_tilt: float = 8.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.adapt_share <= 0.9:
            raise InvalidArgumentError(f"adapt_share must be in [0, 0.9], got {self.adapt_share}")
        for key, value in {"elite_fraction": self.elite_fraction, "defensive": self.defensive,
                           "smoothing": self.smoothing}.items():
            if not 0.0 < value < 1.0:
                raise InvalidArgumentError(f"{key} must be in (0, 1), got {value}")
        for key, count in {"batch_size": self.batch_size, "components": self.components}.items():
            if not isinstance(count, int) or count < 1:
                raise InvalidArgumentError(f"{key} must be an int >= 1, got {count!r}")
        if not self.max_tilt > 0.0:
            raise InvalidArgumentError(f"max_tilt must be > 0, got {self.max_tilt}")

    def unsupported_reason(self, model: nn.Module, dist: Distribution, spec: Spec) -> str | None:
        if not isinstance(dist, LMDistribution):
            return f"it needs an LM-written D (LMDistribution), got {type(dist).__name__}"
        if not spec.continuous:
            return f"{type(spec).__name__} gives no graded score for the proposal to climb"
        return None

    def min_budget(self) -> int:
        return 4 * self.batch_size

    def run(self, oracle: ScoreOracle, budget: int, generator: torch.Generator, confidence: float) -> Outcome:
        start = spent_calls(oracle)
        adapted = self.adapt(oracle, int(self.adapt_share * budget), generator)
        return self.finish(oracle, adapted, budget - (spent_calls(oracle) - start), generator, confidence)

    # --- adaptation ---------------------------------------------------------------------------
    def adapt(self, oracle: ScoreOracle, budget: int, generator: torch.Generator) -> Adapted:
        """Cross-entropy batches while ``budget`` calls (policy and LM) allow: the tilt and found set."""
        dist = oracle.dist
        assert isinstance(dist, LMDistribution)
        adapted = Adapted(theta=None, found=FoundMessages(), near=NearMisses(8 * self.components))
        start = spent_calls(oracle)
        while spent_calls(oracle) - start + 2 * self.batch_size <= budget:
            mixture = self._mixture(adapted, dist.length)
            draws = mixture.sample(dist, self.batch_size, generator)
            s = self._scores(oracle, draws.x, adapted.found)
            hit = s > 0
            adapted.found.add(draws.x, draws.log_d, hit)
            adapted.near.add(draws.x, draws.log_d, s)
            plain = mixture.from_d(draws.component)
            adapted.plain_draws += int(plain.sum())
            adapted.plain_hits += int((hit & plain).sum())
            adapted.theta = self._updated_tilt(mixture, draws, s, adapted)
            adapted.batches += 1
            self._expand(oracle, adapted, budget - (spent_calls(oracle) - start))
        return adapted

    def _expand(self, oracle: ScoreOracle, adapted: Adapted, budget: int) -> None:
        """Score the single-token changes of the best near misses and found messages not yet expanded.

        The steered draws climb the score through D's typical messages; these local changes
        reach the catastrophes one or two unlikely tokens away, which the draws rarely write.
        """
        dist = oracle.dist
        assert isinstance(dist, LMDistribution) and adapted.theta is not None
        states = torch.cat([adapted.found.top(EXPAND_PER_BATCH, dist.length),
                            *(adapted.near.top(EXPAND_PER_BATCH, dist.length, lam, fresh=True)
                              for lam in SEARCH_LAMBDAS)])
        states = states[~torch.tensor([tuple(r) in adapted.found_expanded for r in states.tolist()],
                                      dtype=torch.bool)] if states.shape[0] else states
        adapted.found_expanded.update(map(tuple, states.tolist()))
        if states.shape[0] == 0:
            return
        vocab = adapted.theta.shape[1]
        tokens = (torch.arange(vocab).expand(dist.length, -1) if vocab <= CHANGE_TOKENS
                  else adapted.theta.topk(CHANGE_TOKENS, dim=1).indices)
        rows = single_token_changes(states, tokens)
        rows = rows[~adapted.found.contains(rows)]
        if rows.shape[0] == 0 or 2 * rows.shape[0] > budget:
            return
        with torch.no_grad():
            log_d = dist.log_prob(rows)
        s = self._scores(oracle, rows, adapted.found)
        adapted.found.add(rows, log_d, s > 0)
        adapted.near.add(rows, log_d, s)

    def _mixture(self, adapted: Adapted, length: int) -> SteeredMixture:
        """Neighbourhoods of the most probable catastrophes found, topped up with the best near misses."""
        seeds = adapted.found.top(self.components, length)
        if seeds.shape[0] < self.components:
            seeds = torch.cat([seeds, adapted.near.top(self.components - seeds.shape[0], length)])
        return SteeredMixture(adapted.theta, seeds, self.defensive)

    @staticmethod
    def _scores(oracle: ScoreOracle, x: Tensor, found: FoundMessages) -> Tensor:
        """Scores (n,) of x; members of the found set are known catastrophes and cost no call.

        For a spec that states chances the score climbed is log pi (n,), never above 0.
        """
        if has_chance(oracle.spec):
            return log_chances(oracle, x)
        known = found.contains(x)
        s = torch.ones(x.shape[0], dtype=torch.float64)
        if bool((~known).any()):
            s[~known] = oracle.scores(x[~known])
        return s

    def _updated_tilt(self, mixture: SteeredMixture, draws: SteeredDraws, s: Tensor,
                      adapted: Adapted) -> Tensor:
        """theta moved toward the elites' token frequencies, position by position."""
        assert mixture.theta is not None
        theta = mixture.theta
        hits = int((s > 0).sum())
        quantile = float(torch.quantile(s, 1.0 - self.elite_fraction))
        level = 0.0 if hits >= MIN_ELITE_HITS else min(quantile, 0.0)
        elite = s > 0 if level == 0.0 else s >= level
        adapted.levels.append(level)
        from_tilt = draws.component == 1
        if not bool(from_tilt.any()) or not bool(elite.any()):
            return theta
        vocab = theta.shape[1]
        wanted = _frequencies(draws.x[elite], vocab)
        had = _frequencies(draws.x[from_tilt], vocab)
        floor = 0.5 / max(int(from_tilt.sum()), 1)
        step = torch.log(wanted + floor) - torch.log(had + floor)
        return (theta + self.smoothing * step).clamp(-self.max_tilt, self.max_tilt)

    # --- estimation ---------------------------------------------------------------------------
    def finish(self, oracle: ScoreOracle, adapted: Adapted, budget: int, generator: torch.Generator,
               confidence: float) -> Outcome:
        """The estimate from the frozen mixture with what is left of ``budget``."""
        dist = oracle.dist
        assert isinstance(dist, LMDistribution)
        mixture = self._mixture(adapted, dist.length)
        n = max(budget // 2, 1)
        draws = mixture.sample(dist, n, generator)
        if has_chance(oracle.spec):
            log_terms = draws.log_w + log_chances(oracle, draws.x)
            return mean_chance_outcome(log_terms, -math.log(self.defensive), confidence, {
                "adaptation_batches": adapted.batches, "levels": adapted.levels, "draws": n,
                "proposal_components": mixture.n_components})
        found = adapted.found
        known = found.contains(draws.x)
        s = self._scores(oracle, draws.x, found)
        hit = s > 0
        outside = hit & ~known
        log_terms = torch.where(outside, draws.log_w, torch.full_like(draws.log_w, -math.inf))
        found_mass = found.log_mass()
        seen_once = seen_once_hits(draws.x, outside)
        found.add(draws.x, draws.log_d, hit)
        plain = mixture.from_d(draws.component)
        plain_draws = adapted.plain_draws + int(plain.sum())
        plain_hits = adapted.plain_hits + int((hit & plain).sum())
        diagnostics: dict[str, Any] = {
            "adaptation_batches": adapted.batches, "levels": adapted.levels, "draws": n,
            "found_messages": len(found.log_masses), "log10_found_mass": found_mass / math.log(10),
            "proposal_components": mixture.n_components, "draws_in_found_set": int(known.sum()),
            "plain_draws": plain_draws, "plain_hits": plain_hits,
        }
        outcome = found_plus_sampled_outcome(found_mass, log_terms, seen_once, found.log_mass(),
                                             -math.log(self.defensive), confidence, diagnostics)
        if math.isinf(outcome.log_p) and plain_draws:
            plain_high = binomial_log_ci(0, plain_draws, confidence)[1]
            outcome = Outcome(outcome.log_p, (-math.inf, min(outcome.ci[1], plain_high)), outcome.diagnostics,
                              outcome.warnings, assumes=outcome.assumes)
        return outcome


def _frequencies(x: Tensor, vocab: int) -> Tensor:
    """Token frequencies (length, vocab) per position of ids x (n, length)."""
    n, length = x.shape
    cells = (x + vocab * torch.arange(length)).reshape(-1)
    counts = torch.zeros(length * vocab, dtype=torch.float64).index_add_(
        0, cells, torch.ones(cells.numel(), dtype=torch.float64))
    return counts.reshape(length, vocab) / max(n, 1)

