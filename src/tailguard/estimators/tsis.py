"""Trigger-seeded importance sampling (TSIS) for token inputs.

Under independent token inputs the catastrophic inputs ("triggers") of a small
transformer are few and concentrated: in the enumerable benchmark one context
usually carries most of P[C], and it needs two or three rare tokens at once, a
conjunction that a first-order gradient tilt (``itgis``) often never samples
(benchmarks/lm/enumerable.md). TSIS looks for triggers first and then samples
around them, in three stages:

1. **Search** (``search_share`` of the budget). A beam search from D's mode and
   pilot draws on J_lam(x) = log p(x) + lam * min(s(x), 0) for several lam at once
   (``_trigger_search.beam_search``), then the single-token neighbours of the most probable triggers
   found (``expand_found``). Every context the search scores with s > 0 joins the found
   set S; each is scored once.
2. **Adaptation** (``adapt_share``). Batches from the mixture proposal below;
   new hits join S and the tilt is updated as in ``itgis``.
3. **Estimation** (the rest), with S and the proposal frozen:

       P[C] = p(S) + E_q[ (p(x) / q(x)) 1[s(x) > 0] 1[x not in S] ],

   p(S) summed exactly (every member was scored), the remainder by importance
   sampling with i.i.d. draws from q conditioned on x not in S (rejecting members of
   S costs no model call), so the estimate is unbiased. p(S) is a proven lower bound,
   which the CI never goes below. Its upper end comes from the sample variance of
   the draws (delta method on log p), widened by a Good-Turing allowance for triggers
   never hit, only when the hits are many and tame enough for a normal interval
   (effective number MIN_HIT_ESS or more, Pareto k at most PARETO_K_LIMIT).
   Otherwise it is proven: every weight is at most 1 / defensive, so the rest is at
   most that times the Clopper-Pearson bound on the proposal's chance of a hit. On
   the nn.Embedding models of benchmarks/lm/enumerable_embedding.md the normal
   interval, taken from 2 to 19 hits of effective number 1 to 12, missed the truth
   in 19 of 31 runs (by 0.004 % to 1.7 %: mass the proposal rarely reaches).

On the enumerable benchmark (benchmarks/lm/enumerable.md) the search alone finds
nearly all of P[C]: there p(S) is within 1e-6 of the exact value for most targets.

The proposal q is a mixture of product distributions, each a (ctx, vocab) table:
D itself (share ``defensive``, so every weight is at most 1 / defensive), the
``itgis`` tilt, and, for each of the most probable found triggers x*,
"neighbourhoods" that keep each token x*_i with probability 1 - e and redraw it
from D with probability e (e in NEIGHBOURHOOD_SPREADS), which reach the
triggers that differ from x* in a few positions.

The tilt, and the ranking of single-token changes when the vocabulary has more
than ``candidates`` + 1 tokens, follow a guide (``_trigger_search``): the gradient
of the score with respect to the one-hot input when the model gives one
(``_token_grad``: one-hot inputs or an ``nn.Embedding``), else, or with
``gradient=False``, the gradient-free main effects of the tokens on the scores seen
so far. Nothing else depends on it: the estimate stays unbiased and its CI valid on
a black-box model, which only finds its triggers less directly. The diagnostics
name the guide ("guide") and, for the gradient-free path, why ("gradient_free_because").

One model call is one row through the model (a backward pass, where the
adaptation batches need the gradient, costs no extra call).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._logspace import binomial_log_ci, ess, normal_log_ci, pareto_k
from ..dists.base import Distribution
from ..dists.tokens import IndependentTokens
from ..errors import InvalidArgumentError
from ..oracle import ScoreOracle
from ..specs import Spec
from ._token_grad import gradient_route, token_input_problem
from ._trigger_search import (
    FoundSet,
    GradientGuide,
    Guide,
    ScoreEffects,
    TriggerSearch,
    beam_search,
    expand_found,
)
from .base import Outcome, register
from .itgis import PARETO_K_LIMIT, _proposal

#: chance that a neighbourhood component redraws each position of its trigger from D
NEIGHBOURHOOD_SPREADS = (0.2, 0.5)
#: relative slack under the found mass in the CI's lower end (float64 sums of many masses differ by less)
ROUNDING_SLACK = 1e-9
#: fewest effective hits outside the found set for which the upper end is a normal interval
MIN_HIT_ESS = 30.0
PROVEN = ("nothing: the found triggers' mass is summed exactly and the rest bounded by the largest "
          "weight times an exact binomial bound")
#: share of the search budget for the beam; the rest expands the neighbourhoods of found triggers
BEAM_SHARE = 0.7
#: share of the mixture given to the gradient tilt once triggers are known (all but D's share before)
TILT_SHARE = 0.2


@register
@dataclass(frozen=True)
class TriggerSeededIS:
    """Trigger-seeded importance sampling (token inputs).

    Settings: shares of the budget for the search and the adaptation batches;
    ``beam_width`` contexts in the search beam; ``candidates`` tokens tried per
    position and step (every token when the vocabulary has at most candidates + 1);
    ``components`` found triggers that seed neighbourhoods; ``defensive`` share of D
    in the proposal; ``temperature`` of the tilt; ``batch_size`` draws per
    adaptation batch; ``gradient``: follow the score's gradient when the model gives
    one (False: the gradient-free guide even then).
    """

    name: ClassVar[str] = "tsis"
    search_share: float = 0.3
    adapt_share: float = 0.2
    beam_width: int = 16
    candidates: int = 16
    components: int = 32
    defensive: float = 0.1
    temperature: float = 0.15
    batch_size: int = 256
    gradient: bool = True

    def __post_init__(self) -> None:
        shares = {"search_share": self.search_share, "adapt_share": self.adapt_share}
        for key, value in shares.items():
            if not 0.0 <= value < 1.0:
                raise InvalidArgumentError(f"{key} must be in [0, 1), got {value}")
        if self.search_share + self.adapt_share > 0.9:
            raise InvalidArgumentError(
                "search_share + adapt_share must leave at least a tenth of the budget for the estimate, "
                f"got {self.search_share + self.adapt_share:g}"
            )
        for key, count in {"beam_width": self.beam_width, "candidates": self.candidates,
                           "components": self.components, "batch_size": self.batch_size}.items():
            if not isinstance(count, int) or count < 1:
                raise InvalidArgumentError(f"{key} must be an int >= 1, got {count!r}")
        if not 0.0 < self.defensive < 1.0:
            raise InvalidArgumentError(f"defensive must be in (0, 1), got {self.defensive}")
        if not self.temperature > 0.0:
            raise InvalidArgumentError(f"temperature must be > 0, got {self.temperature}")
        if not isinstance(self.gradient, bool):
            raise InvalidArgumentError(f"gradient must be True or False, got {self.gradient!r}")

    def unsupported_reason(self, model: nn.Module, dist: Distribution, spec: Spec) -> str | None:
        return token_input_problem(self.name, dist, spec)

    def min_budget(self) -> int:
        return 4 * self.batch_size

    # --- the run ------------------------------------------------------------------------------
    def run(self, oracle: ScoreOracle, budget: int, generator: torch.Generator, confidence: float) -> Outcome:
        dist = oracle.dist
        assert isinstance(dist, IndependentTokens)
        guide, free_because = self._guide(oracle.model, dist)
        search = TriggerSearch(oracle, dist, guide, self.candidates)
        search_budget = int(self.search_share * budget)
        beam_search(search, int(BEAM_SHARE * search_budget), self.beam_width, generator)
        expand_found(search, search_budget, self.components)
        log_p, found = search.log_p, search.found
        g = torch.zeros_like(log_p)
        spent = search_calls = search.spent
        adapt_end = spent + int(self.adapt_share * budget)
        while adapt_end - spent >= self.batch_size:
            mixture = self._mixture(log_p, g, found)
            x = mixture.sample(self.batch_size, generator)
            s, g_batch = guide.scores(oracle, x)
            found.add(x, s)
            g = 0.9 * g + 0.1 * g_batch
            spent += self.batch_size
        mixture = self._mixture(log_p, g, found)
        n = budget - spent
        x, log_q = _draws_outside(mixture, found, n, generator)
        s = oracle.scores(x)
        log_terms = torch.where(s > 0, log_p.gather(1, x.T).sum(0) - log_q, -math.inf)
        found_mass = found.log_mass()
        seen_once = seen_once_hits(x, s > 0)
        found.add(x, s)
        diagnostics = {"search_calls": search_calls, "found_triggers": len(found), "draws": n,
                       "log10_found_mass": found_mass / math.log(10),
                       "proposal_components": mixture.weights.numel(), "guide": guide.path}
        if free_because is not None:
            diagnostics["gradient_free_because"] = free_because
        return found_plus_sampled_outcome(found_mass, log_terms, seen_once, found.log_mass(),
                                          math.log(1.0 / self.defensive), confidence, diagnostics)

    def _guide(self, model: nn.Module, dist: IndependentTokens) -> tuple[Guide, str | None]:
        """The gradient guide where a gradient is given and wanted, else the gradient-free one, and why."""
        if not self.gradient:
            return ScoreEffects(dist.ctx, dist.vocab), "asked for (gradient=False)"
        route = gradient_route(model, dist)
        if isinstance(route, str):
            return ScoreEffects(dist.ctx, dist.vocab), route
        return GradientGuide(route), None

    def _mixture(self, log_p: Tensor, g: Tensor, found: FoundSet) -> ProductMixture:
        """D, the tilt and neighbourhoods of the most probable found triggers, as one mixture."""
        log_tilt, _ = _proposal(log_p, g, self.temperature)
        triggers, log_masses = found.top(self.components)
        tables, weights = [log_p, log_tilt], [self.defensive]
        if triggers.shape[0] == 0:
            weights.append(1.0 - self.defensive)
            return ProductMixture(torch.stack(tables), torch.tensor(weights, dtype=torch.float64))
        weights.append(TILT_SHARE)
        # half the neighbourhood share by each trigger's probability, half evenly
        share = torch.softmax(log_masses, 0) / 2 + 0.5 / triggers.shape[0]
        share = share * (1.0 - self.defensive - TILT_SHARE) / len(NEIGHBOURHOOD_SPREADS)
        for spread in NEIGHBOURHOOD_SPREADS:
            tables.extend(_neighbourhood(log_p, triggers, spread))
            weights.extend(share.tolist())
        return ProductMixture(torch.stack(tables), torch.tensor(weights, dtype=torch.float64))


class ProductMixture:
    """sum_k weights[k] prod_i exp(log_tables[k, i, x_i]): a mixture of independent-token distributions."""

    def __init__(self, log_tables: Tensor, weights: Tensor):
        self.log_tables = log_tables  # (K, ctx, vocab), float64
        self.weights = weights / weights.sum()  # (K,)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """Token ids (n, ctx)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        ctx, vocab = self.log_tables.shape[1:]
        probs = torch.exp(self.log_tables[k]).reshape(n * ctx, vocab)
        return torch.multinomial(probs, 1, generator=generator).reshape(n, ctx)

    def log_prob(self, x: Tensor) -> Tensor:
        """log q(x) (n,), float64."""
        index = x.T[None].expand(self.log_tables.shape[0], -1, -1)  # (K, ctx, n)
        per_component = self.log_tables.gather(2, index).sum(1)  # (K, n)
        return torch.logsumexp(per_component + torch.log(self.weights)[:, None], 0)


def _draws_outside(mixture: ProductMixture, found: FoundSet, n: int,
                   generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """n draws (n, ctx) from the mixture conditioned on lying outside the found set, and their log q'.

    q'(x) = q(x) 1[x not in S] / (1 - q(S)); q(S) is a finite sum, and rejecting members
    of S costs no model call, so no call is spent on a context whose mass is already counted.
    """
    members, _ = found.top(len(found))
    log_q_found = float(torch.logsumexp(mixture.log_prob(members), 0)) if len(found) else -math.inf
    if log_q_found > math.log1p(-1e-9):
        raise InvalidArgumentError("the proposal has no mass outside the found triggers")
    kept: list[Tensor] = []
    have = 0
    while have < n:
        x = mixture.sample(2 * (n - have) + 16, generator)
        x = x[~found.contains(x)][: n - have]
        kept.append(x)
        have += x.shape[0]
    x = torch.cat(kept)
    return x, mixture.log_prob(x) - math.log1p(-math.exp(log_q_found))


def _neighbourhood(log_p: Tensor, triggers: Tensor, spread: float) -> list[Tensor]:
    """log tables (ctx, vocab), one per trigger (m, ctx): keep x*_i w.p. 1 - spread, else draw from D."""
    keep = torch.nn.functional.one_hot(triggers, log_p.shape[1]).double()  # (m, ctx, vocab)
    probs = (1.0 - spread) * keep + spread * torch.exp(log_p)[None]
    return list(torch.log(probs).unbind(0))


def seen_once_hits(x: Tensor, hit: Tensor) -> Tensor:
    """Bool (n,): hits (rows of x (n, ctx) where ``hit``) whose context occurs exactly once among them."""
    rows = [tuple(r) for r in x[hit].tolist()]
    counts = Counter(rows)
    once = torch.zeros_like(hit)
    once[hit] = torch.tensor([counts[r] == 1 for r in rows], dtype=torch.bool)
    return once


def found_plus_sampled_outcome(found_log_mass: float, log_terms: Tensor, seen_once: Tensor,
                               final_log_mass: float, log_max_weight: float, confidence: float,
                               diagnostics: dict[str, Any]) -> Outcome:
    """p(S) + mean of the i.i.d. terms; the CI never below the found mass, its upper end normal or proven.

    The normal upper end only knows the triggers the draws reached, so it also gets the
    weighted mass of the triggers hit exactly once (Good-Turing: what was seen once is
    the best guess of what was not seen at all). With too few or too heavy-tailed hits
    for a normal interval the upper end is ``_proven_high`` instead, as it is with none.
    """
    n = log_terms.numel()
    hits = int(torch.isfinite(log_terms).sum())
    terms = torch.exp(log_terms)  # each at most 1 / defensive
    found = math.exp(found_log_mass) if math.isfinite(found_log_mass) else 0.0
    total = found + float(terms.mean())
    floor = final_log_mass + math.log1p(-ROUNDING_SLACK)  # a proven lower bound, less rounding
    k_hat = pareto_k(log_terms) if hits else math.nan
    diagnostics = {**diagnostics, "hits": hits, "ess": ess(log_terms) if hits else 0.0,
                   "pareto_k": None if math.isnan(k_hat) else k_hat,
                   "rel_se": float(terms.std()) / math.sqrt(n) / total if hits else None}
    proven_high = _proven_high(found, hits, n, log_max_weight, confidence)
    if total == 0.0:
        return Outcome(-math.inf, (-math.inf, proven_high), {**diagnostics, "upper_end": "proven"},
                       (f"no catastrophe found by the search or in {n:,} draws: only an upper bound",),
                       assumes=PROVEN)
    log_p = max(math.log(total), final_log_mass)
    if diagnostics["ess"] < MIN_HIT_ESS or k_hat > PARETO_K_LIMIT:
        return Outcome(log_p, (floor, max(proven_high, log_p)), {**diagnostics, "upper_end": "proven"},
                       assumes=PROVEN)
    low, high = normal_log_ci(math.log(total), diagnostics["rel_se"], confidence)
    unseen = float(torch.exp(log_terms[seen_once]).sum()) / n
    high = min(math.log(math.exp(high) + unseen), 0.0)
    diagnostics.update({"unseen_allowance": unseen, "upper_end": "normal"})
    return Outcome(log_p, (max(low, floor), max(high, log_p)), diagnostics,
                   assumes="a normal interval for the mass outside the found triggers, plus a Good-Turing "
                           "allowance for triggers never hit")


def _proven_high(found: float, hits: int, n: int, log_max_weight: float, confidence: float) -> float:
    """log of an upper end that holds whatever the weights: p(S) + max weight x a bound on q'(C outside S).

    Each term is w(x) 1[x in C] with w <= the largest weight W, so the rest of C, the
    terms' mean under q', is at most W q'(C outside S), and ``hits`` in n draws bound
    q'(C outside S) exactly (Clopper-Pearson).
    """
    _, log_hit_high = binomial_log_ci(hits, n, confidence)
    return math.log(min(found + math.exp(log_max_weight + log_hit_high), 1.0))
