"""Metropolis-Hastings importance sampling (MHIS) for token inputs.

Wu & Hilton (2024), "Estimating the probabilities of rare outputs in language
models" (arXiv 2410.13211), section 3.2. Markov chains target the tilted
distribution q(x) ∝ p(x) exp(s(x) / T) (s the spec's score), which puts far more
mass than D on inputs close to the catastrophe; since p / q ∝ exp(-s / T), the
self-normalised estimate

    p_hat = mean(1[s > 0] exp(-s / T)) / mean(exp(-s / T))

over the chains' states is consistent for P_D[s > 0]. A move picks one position
uniformly and redraws it from p_i(v) exp(g_i(v) / T), g the gradient of s with
respect to the one-hot input at the current state (a first-order guess of each
token's effect; ``_token_grad`` gets it through one-hot inputs or the model's
``nn.Embedding``), and is accepted with the Metropolis-Hastings ratio that includes
the reverse move's probability under the gradient at the proposed state, so the
chain is exact for q whatever the quality of the guess.

T: the paper tuned it per model and distribution. Here it starts at the standard
deviation of the scores of a pilot of plain draws from D and, during burn-in only,
is cooled or warmed every ADAPT_EVERY steps until between 10 % and 50 % of the
chains' states are catastrophes (measured on the enumerable cases, q puts 5-60 % of
its mass on C at the temperatures that work). After burn-in T is fixed, so the
kept states are those of an ordinary Metropolis-Hastings chain for q.

The CI treats the chains as independent replicates of the ratio estimate (delta
method across chain means); it is approximate (a chain that never left one mode
shows no spread), and so is the upper bound given when no state is a catastrophe:
that outcome is marked heuristic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._logspace import ess, normal_log_ci
from ..dists.base import Distribution
from ..dists.tokens import IndependentTokens
from ..errors import InvalidArgumentError
from ..oracle import ScoreOracle
from ..specs import Spec
from ._token_grad import require_gradient_route, token_gradient_problem
from .base import Outcome, register

#: the temperature is kept in this range
TEMPERATURE_RANGE = (0.02, 20.0)
#: during burn-in, every ADAPT_EVERY steps the temperature moves to keep this share of states in C
ADAPT_EVERY, TARGET_HITS = 10, (0.1, 0.5)
#: below this effective sample size of the self-normalising weights the CI is flagged
MIN_WEIGHTS_ESS = 100


@register
@dataclass(frozen=True)
class MetropolisHastingsIS:
    """MHIS (token inputs). Settings: ``chains``, ``burn_in`` fraction of each chain's steps,
    ``pilot`` draws from D that start the temperature (``temperature`` > 0 fixes it instead)."""

    name: ClassVar[str] = "mhis"
    chains: int = 32
    burn_in: float = 0.3
    pilot: int = 512
    temperature: float = 0.0

    def __post_init__(self) -> None:
        for key in ("chains", "pilot"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 2:
                raise InvalidArgumentError(f"{key} must be an int >= 2, got {value!r}")
        if not 0.0 <= self.burn_in < 1.0:
            raise InvalidArgumentError(f"burn_in must be in [0, 1), got {self.burn_in}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0.0):
            raise InvalidArgumentError(f"temperature must be >= 0 (0: pilot), got {self.temperature}")

    def unsupported_reason(self, model: nn.Module, dist: Distribution, spec: Spec) -> str | None:
        return token_gradient_problem(self.name, model, dist, spec)

    def min_budget(self) -> int:
        return self.pilot + 10 * self.chains

    def run(self, oracle: ScoreOracle, budget: int, generator: torch.Generator, confidence: float) -> Outcome:
        dist = oracle.dist
        assert isinstance(dist, IndependentTokens)
        route = require_gradient_route(self.name, oracle.model, dist)
        log_p = dist.log_probs().detach()
        pilot = dist.sample(self.pilot, generator)
        pilot_scores = oracle.scores(pilot)
        temperature = start = self.temperature or _pilot_temperature(pilot_scores)
        x = pilot[pilot_scores.argsort(descending=True)[: self.chains]]
        s, g = route.scores_and_gradient(oracle, x)
        steps = (budget - self.pilot - self.chains) // self.chains
        kept_s, accepted, recent_hits = [], 0, 0.0
        burn_in = int(self.burn_in * steps)
        for step in range(steps):
            if step < burn_in and not self.temperature and step % ADAPT_EVERY == ADAPT_EVERY - 1:
                temperature = _adapted(temperature, recent_hits / (ADAPT_EVERY * self.chains), start)
                recent_hits = 0.0
            x_new, log_forward = _propose(x, g, log_p, temperature, generator)
            s_new, g_new = route.scores_and_gradient(oracle, x_new)
            log_reverse = _move_log_prob(x_new, x, g_new, log_p, temperature)
            log_target_ratio = (dist.log_prob(x_new) - dist.log_prob(x)) + (s_new - s) / temperature
            accept = torch.rand(x.shape[0], generator=generator, dtype=torch.float64).log() < (
                log_target_ratio + log_reverse - log_forward)
            x = torch.where(accept[:, None], x_new, x)
            s = torch.where(accept, s_new, s)
            g = torch.where(accept[:, None, None], g_new, g)
            accepted += int(accept.sum())
            recent_hits += float((s > 0).sum())
            if step >= burn_in:
                kept_s.append(s)
        states = torch.stack(kept_s, 1) if kept_s else s[:, None]  # (chains, kept steps)
        diagnostics = {"temperature": temperature, "chains": self.chains, "steps": steps,
                       "gradient_route": route.name,
                       "acceptance": accepted / max(steps * self.chains, 1),
                       "hits": int((states > 0).sum()), "pilot_hits": int((pilot_scores > 0).sum())}
        return _ratio_outcome(states, temperature, confidence, diagnostics)


def _pilot_temperature(scores: Tensor) -> float:
    """The pilot scores' standard deviation, clipped to TEMPERATURE_RANGE: where the adaptation starts."""
    low, high = TEMPERATURE_RANGE
    return min(max(float(scores.std()), low), high)


def _adapted(temperature: float, hit_fraction: float, start: float) -> float:
    """Cool when too few chain states are catastrophes, warm when too many (burn-in only).

    Never below a fifth of the starting temperature: colder, the weights exp(-s / T) of
    the states far from C explode and one excursion decides the estimate.
    """
    low, high = max(TEMPERATURE_RANGE[0], start / 5), TEMPERATURE_RANGE[1]
    if hit_fraction < TARGET_HITS[0]:
        temperature *= 0.8
    elif hit_fraction > TARGET_HITS[1]:
        temperature *= 1.25
    return min(max(temperature, low), high)


def _gradient_logits(g: Tensor, log_p: Tensor, temperature: float) -> Tensor:
    """log p_i(v) + g_i(v) / T for every chain (n, ctx, vocab), normalised per position."""
    logits = log_p[None] + g / temperature
    return logits - torch.logsumexp(logits, 2, keepdim=True)


def _propose(x: Tensor, g: Tensor, log_p: Tensor, temperature: float,
             generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Redraw one uniform position per chain from the gradient-tilted categorical; (x', log q(x' | x))."""
    n, ctx = x.shape
    position = torch.randint(ctx, (n,), generator=generator)
    logits = _gradient_logits(g, log_p, temperature)[torch.arange(n), position]  # (n, vocab)
    token = torch.multinomial(logits.exp(), 1, generator=generator)[:, 0]
    x_new = x.clone()
    x_new[torch.arange(n), position] = token
    return x_new, _move_log_prob(x, x_new, g, log_p, temperature)


def _move_log_prob(x_from: Tensor, x_to: Tensor, g_from: Tensor, log_p: Tensor, temperature: float) -> Tensor:
    """log q(x_to | x_from) (n,) of the one-position move; x_to differs from x_from in at most one place.

    A move that changes nothing could have picked any position: its probability sums over them.
    """
    n, ctx = x_from.shape
    logits = _gradient_logits(g_from, log_p, temperature)  # (n, ctx, vocab)
    picked = logits.gather(2, x_to[:, :, None]).squeeze(2)  # (n, ctx): log q_i(x_to_i)
    changed = x_from != x_to
    one = picked.masked_fill(~changed, 0.0).sum(1)  # the changed position's term
    same = torch.logsumexp(picked, 1)  # all positions redrawn to their own token
    return torch.where(changed.any(1), one, same) - math.log(ctx)


def _ratio_outcome(states: Tensor, temperature: float, confidence: float,
                   diagnostics: dict[str, Any]) -> Outcome:
    """Self-normalised estimate from the scores (chains, steps) and its CI across chains (in logs)."""
    log_w = -states / temperature
    shift = float(log_w.max())
    w = torch.exp(log_w - shift)
    num = (w * (states > 0)).mean(1)  # per chain
    den = w.mean(1)
    p_hat = float(num.mean() / den.mean())
    chains = states.shape[0]
    if p_hat == 0.0:
        n = states.numel()
        # as if the states were independent draws from q and the next one a hit of weight <= 1
        log_bound = math.log(math.log(2.0 / (1.0 - confidence)) / n / float(den.mean())) - shift
        return Outcome(-math.inf, (-math.inf, min(log_bound, 0.0)), diagnostics,
                       ("no chain reached a catastrophe: only an approximate upper bound "
                        "(it treats the chains' states as independent), so the outcome is heuristic",),
                       heuristic=True)
    weights_ess = ess(log_w.flatten())
    diagnostics = {**diagnostics, "weights_ess": weights_ess}
    residual = num - p_hat * den
    rel_se = float(residual.std()) / math.sqrt(chains) / float(num.mean())
    log_p = math.log(p_hat)
    warnings: tuple[str, ...] = ()
    if int((num > 0).sum()) < 2 or weights_ess < MIN_WEIGHTS_ESS:
        warnings = (f"the estimate rests on few states ({int((num > 0).sum())} chains reached a catastrophe, "
                    f"ESS of the weights exp(-s/T) {weights_ess:.0f}): the CI cannot be trusted",)
    return Outcome(log_p, normal_log_ci(log_p, rel_se, confidence), {**diagnostics, "rel_se": rel_se},
                   warnings, trusted=not warnings,
                   assumes="chains that mixed, taken as independent replicates of the ratio estimate")
