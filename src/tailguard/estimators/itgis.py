"""Independent token gradient importance sampling (ITGIS).

Wu & Hilton (2024), "Estimating the probabilities of rare outputs in language
models" (arXiv 2410.13211), section 3.1. D draws every context position
independently (``IndependentTokens``); the proposal keeps that form,

    q_i(v) ∝ p_i(v) exp(g_i(v) / T),

where g (ctx, vocab) is an exponential moving average (decay 0.9) of the
batch-mean gradient of the spec's score with respect to the one-hot input: a
first-order guess of how much each token at each position raises the score.
Draws come in batches of 256; every batch is drawn from the proposal built from
the earlier batches only, so its weights w = prod_i p_i / q_i are exact for that
batch and the pooled mean of w * 1[score > 0] over all batches is unbiased. The
CI comes from the sample variance of those terms (delta method on log p); with
no hit at all the estimate is 0 with a finite upper bound (``_zero_hit_bound``).

The gradient comes from ``_token_grad``: through one-hot float inputs when the
model takes them, else through the ``nn.Embedding`` that looks its ids up (any
Hugging Face model); ``unsupported_reason`` says when the model offers neither.
Each row pushed through the model, a forward pass with its backward pass, is one
model call; the scores and the gradient of a batch come from the same pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._logspace import ess, logmeanexp, normal_log_ci, pareto_k
from ..dists.base import Distribution
from ..dists.tokens import IndependentTokens
from ..errors import InvalidArgumentError
from ..oracle import ScoreOracle
from ..specs import Spec
from ._token_grad import require_gradient_route, token_gradient_problem
from .base import Outcome, register

#: Pareto k above which the weights are too heavy-tailed for the CI to be trusted (PSIS)
PARETO_K_LIMIT = 0.7


@register
@dataclass(frozen=True)
class IndependentTokenGIS:
    """Independent token gradient importance sampling (token inputs).

    Settings: proposal temperature ``temperature`` (T), ``batch_size`` draws per
    proposal and gradient moving-average ``decay``.
    """

    name: ClassVar[str] = "itgis"
    temperature: float = 0.15
    batch_size: int = 256
    decay: float = 0.9

    def __post_init__(self) -> None:
        if not self.temperature > 0.0:
            raise InvalidArgumentError(f"temperature must be > 0, got {self.temperature}")
        if self.batch_size < 2:
            raise InvalidArgumentError(f"batch_size must be >= 2, got {self.batch_size}")
        if not 0.0 <= self.decay < 1.0:
            raise InvalidArgumentError(f"decay must be in [0, 1), got {self.decay}")

    def unsupported_reason(self, model: nn.Module, dist: Distribution, spec: Spec) -> str | None:
        return token_gradient_problem(self.name, model, dist, spec)

    def min_budget(self) -> int:
        return self.batch_size

    # --- the run ------------------------------------------------------------------------------
    def run(self, oracle: ScoreOracle, budget: int, generator: torch.Generator, confidence: float) -> Outcome:
        dist = oracle.dist
        assert isinstance(dist, IndependentTokens)
        route = require_gradient_route(self.name, oracle.model, dist)
        log_p = dist.log_probs().detach()
        g = torch.zeros_like(log_p)
        terms, bound_terms = [], []
        spent = 0
        while spent < budget:
            n = min(self.batch_size, budget - spent)
            log_q, log_z = _proposal(log_p, g, self.temperature)
            x = torch.multinomial(torch.exp(log_q), n, replacement=True, generator=generator).T
            s, grad = route.scores_and_gradient(oracle, x)
            picked = g.gather(1, x.T).T  # (n, ctx): g_i(x_i)
            log_w = (log_z - picked / self.temperature).sum(1)
            terms.append(torch.where(s > 0, log_w, -math.inf))
            bound_terms.append(math.log(n) - _log_max_weight(log_p, g, log_z, self.temperature))
            g = self.decay * g + (1.0 - self.decay) * grad.mean(0)
            spent += n
        return _outcome(torch.cat(terms), torch.tensor(bound_terms), confidence,
                        {"temperature": self.temperature, "gradient_route": route.name})


def _proposal(log_p: Tensor, g: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """log q (ctx, vocab) and the per-position log normalisers log Z_i (ctx,).

    log q_i(v) = log p_i(v) + g_i(v)/T - log Z_i, so log p_i(v) - log q_i(v) = log Z_i - g_i(v)/T.
    """
    tilted = log_p + g / temperature
    log_z = torch.logsumexp(tilted, 1)
    return tilted - log_z[:, None], log_z


def _log_max_weight(log_p: Tensor, g: Tensor, log_z: Tensor, temperature: float) -> float:
    """log of the largest weight p(x)/q(x) over all inputs D can produce (for the zero-hit bound)."""
    lowest = torch.where(torch.isfinite(log_p), g, math.inf).min(1).values
    return float((log_z - lowest / temperature).sum())


def _outcome(log_terms: Tensor, bound_terms: Tensor, confidence: float, settings: dict[str, Any]) -> Outcome:
    """Pooled estimate, CI, diagnostics and warnings from log(w * 1[s > 0]) of every draw (N,)."""
    n = log_terms.numel()
    hits = int(torch.isfinite(log_terms).sum())
    diagnostics: dict[str, Any] = {**settings, "hits": hits, "draws": n, "n_batches": bound_terms.numel()}
    if hits == 0:
        high = _zero_hit_bound(bound_terms, confidence)
        diagnostics.update({"ess": 0.0, "pareto_k": None, "rel_se": None})
        return Outcome(
            -math.inf, (-math.inf, high), diagnostics,
            (f"no catastrophe in {n:,} draws from the proposals: only an upper bound",),
        )
    log_p = float(logmeanexp(log_terms))
    second = float(logmeanexp(2 * log_terms))
    rel_se = math.sqrt(max(math.expm1(second - 2 * log_p), 0.0) / max(n - 1, 1))
    k_hat = pareto_k(log_terms)
    diagnostics.update({"ess": ess(log_terms), "pareto_k": None if math.isnan(k_hat) else k_hat,
                        "rel_se": rel_se})
    warnings: tuple[str, ...] = ()
    if k_hat > PARETO_K_LIMIT:
        warnings = (f"importance weights are heavy-tailed (Pareto k = {k_hat:.2f} > {PARETO_K_LIMIT}): "
                    "the CI cannot be trusted",)
    return Outcome(log_p, normal_log_ci(log_p, rel_se, confidence), diagnostics, warnings,
                   trusted=not warnings, assumes="importance weights of finite variance (a normal interval)")


def _zero_hit_bound(bound_terms: Tensor, confidence: float) -> float:
    """Upper end (natural log) of the CI for p when no draw was a catastrophe.

    Batch b draws n_b inputs from q_b, and q_b(C) >= p / W_b where W_b is the largest
    weight p/q_b over all inputs, so P[no hit anywhere] <= exp(-p sum_b n_b / W_b).
    Setting that to (1 - confidence) / 2, as the Clopper-Pearson bound does, gives
    p <= ln(2 / (1 - confidence)) / sum_b n_b / W_b; ``bound_terms`` holds log(n_b / W_b).
    """
    log_quantile = math.log(math.log(2.0 / (1.0 - confidence)))
    return min(log_quantile - float(torch.logsumexp(bound_terms, 0)), 0.0)
