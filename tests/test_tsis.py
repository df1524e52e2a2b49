"""Trigger-seeded importance sampling, judged by exhaustive enumeration of small token models."""

import math

import pytest
import torch

import tailguard as tg
from tailguard._logspace import binomial_log_ci
from tailguard.estimators._trigger_search import FoundSet
from tailguard.estimators.base import build
from tailguard.estimators.tsis import (
    ProductMixture,
    TriggerSeededIS,
    _draws_outside,
    found_plus_sampled_outcome,
)

from .test_tokens import RARE, BlackBox, TokenMLP, all_inputs, case, exact_log10, peaked_probs

BUDGET = 2**14


@pytest.mark.parametrize("spec_args", RARE, ids=lambda a: f"m{a[0]}p{a[1]}t{a[3]}")
def test_tsis_matches_exhaustive_enumeration_with_a_covering_ci(spec_args):
    model, dist, spec, truth = case(*spec_args)
    assert -9.0 <= truth <= -5.0
    for seed in range(2):
        est = tg.estimate(model, dist, spec, "tsis", budget=BUDGET, seed=seed)
        assert abs(est.log10_p - truth) < 0.1, (est.log10_p, truth)
        assert est.ci_log10[0] <= truth <= est.ci_log10[1]
        assert est.n_model_calls <= BUDGET
        # the found set is a proven lower bound: never above the truth
        assert est.diagnostics["log10_found_mass"] <= truth + 1e-9


def test_tsis_finds_a_trigger_that_needs_two_rare_tokens_at_once():
    """The target wins only when two positions both hold a token D rarely draws (p = 4e-6)."""
    ctx, vocab, rare = 4, 6, 5
    probs = torch.full((ctx, vocab), 0.998 / (vocab - 1), dtype=torch.float64)
    probs[:, rare] = 0.002
    probs = probs / probs.sum(1, keepdim=True)
    dist = tg.IndependentTokens(probs)

    class Conjunction(torch.nn.Module):
        def forward(self, x):
            if not x.is_floating_point():
                x = torch.nn.functional.one_hot(x, vocab).float()
            count = x[:, 1, rare] + x[:, 3, rare]  # each rare token helps; only both together win
            return torch.stack([torch.full_like(count, 1.5), count], 1)

    model = Conjunction()
    truth = 2 * math.log10(probs[1, rare].item())
    est = tg.estimate(model, dist, tg.ClassIs(1), "tsis", budget=4096, seed=0)
    assert abs(est.log10_p - truth) < 0.01 and est.ci_log10[0] <= truth <= est.ci_log10[1]


def test_impossible_target_gives_minus_inf_with_a_finite_upper_bound():
    model, dist, spec, _ = case(0, 1, 0.1, 3)
    with torch.no_grad():
        model.out_bias[3] = -1e3
    est = tg.estimate(model, dist, spec, "tsis", budget=4096, seed=0)
    assert est.log10_p == -math.inf
    assert math.isfinite(est.ci_log10[1]) and est.ci_log10[1] < 0.0
    assert est.warnings and "upper bound" in est.warnings[0]


def test_tsis_repeats_itself_and_round_trips():
    model, dist, spec, _ = case(2, 2, 0.1, 4)
    a = tg.estimate(model, dist, spec, "tsis", budget=4096, seed=5)
    b = tg.estimate(model, dist, spec, "tsis", budget=4096, seed=5)
    assert (a.log10_p, a.ci_log10) == (b.log10_p, b.ci_log10)
    assert tg.Estimate.from_json(a.to_json()) == a


def test_product_mixture_is_a_normalised_density_and_samples_from_it():
    dist = tg.IndependentTokens(peaked_probs(0.5, 0, ctx=3, vocab=4))
    log_p = dist.log_probs()
    tables = torch.stack([log_p, torch.log(torch.full_like(log_p, 0.25))])
    mixture = ProductMixture(tables, torch.tensor([0.3, 0.7], dtype=torch.float64))
    x = all_inputs(3, 4)
    assert torch.logsumexp(mixture.log_prob(x), 0).exp().item() == pytest.approx(1.0, abs=1e-12)
    draws = mixture.sample(40_000, torch.Generator().manual_seed(0))
    first = torch.bincount(draws[:, 0], minlength=4).double() / 40_000
    expected = 0.3 * dist.probs[0].double() + 0.7 * 0.25
    assert torch.allclose(first, expected, atol=0.01)


def test_draws_outside_the_found_set_have_the_conditioned_density():
    dist = tg.IndependentTokens(peaked_probs(0.5, 1, ctx=2, vocab=3))
    found = FoundSet(dist.log_probs())
    x = all_inputs(2, 3)
    found.add(x[:4], torch.ones(4, dtype=torch.float64))
    mixture = ProductMixture(dist.log_probs()[None], torch.ones(1, dtype=torch.float64))
    draws, log_q = _draws_outside(mixture, found, 30_000, torch.Generator().manual_seed(0))
    assert draws.shape == (30_000, 2) and not found.contains(draws).any()
    log_outside = math.log1p(-math.exp(float(torch.logsumexp(dist.log_prob(x[:4]), 0))))
    assert torch.allclose(log_q, dist.log_prob(draws) - log_outside)
    # frequencies follow the conditioned density
    counts = torch.stack([(draws == row).all(1).sum() for row in x[4:]]).double() / 30_000
    assert torch.allclose(counts, torch.exp(dist.log_prob(x[4:]) - log_outside), atol=0.01)


@pytest.mark.parametrize("settings", [
    {"search_share": 1.2}, {"search_share": 0.6, "adapt_share": 0.4}, {"beam_width": 0},
    {"defensive": 0.0}, {"temperature": -1.0}, {"candidates": 2.5}, {"gradient": "no"},
])
def test_bad_settings_are_rejected(settings):
    with pytest.raises(tg.InvalidArgumentError):
        build("tsis", settings)


def test_tsis_declines_what_it_cannot_do_and_no_model_for_want_of_a_gradient():
    dist = tg.IndependentTokens(peaked_probs(0.5, 0))
    tsis = TriggerSeededIS()
    assert tsis.unsupported_reason(BlackBox(), dist, tg.ClassIs(0)) is None
    assert "IndependentTokens" in tsis.unsupported_reason(torch.nn.Linear(3, 2), tg.Gaussian(torch.zeros(3)),
                                                          tg.ClassIs(0))
    predicate = tg.Predicate(lambda x, y: y.argmax(1) == 0)
    assert tsis.unsupported_reason(TokenMLP(0), dist, predicate) is not None
    assert exact_log10(TokenMLP(0), dist, 0) > -math.inf  # the model itself is fine


def test_the_upper_end_is_proven_unless_many_tame_hits_support_a_normal_interval():
    """Few hits outside the found set: p(S) + max weight x Clopper-Pearson; many equal ones: normal."""
    n, log_max_weight = 10_000, math.log(10.0)
    few = torch.full((n,), -math.inf, dtype=torch.float64)
    few[:3] = math.log(1e-7)
    seen_once = torch.zeros(n, dtype=torch.bool)
    out = found_plus_sampled_outcome(math.log(1e-6), few, seen_once, math.log(1e-6), log_max_weight,
                                     0.95, {})
    _, log_hit_high = binomial_log_ci(3, n, 0.95)
    assert out.diagnostics["upper_end"] == "proven" and out.diagnostics["ess"] == pytest.approx(3.0)
    assert out.ci == (pytest.approx(math.log(1e-6) + math.log1p(-1e-9)),
                      pytest.approx(math.log(1e-6 + 10.0 * math.exp(log_hit_high))))
    many = torch.full((n,), -math.inf, dtype=torch.float64)
    many[:500] = math.log(1e-7)
    out = found_plus_sampled_outcome(math.log(1e-6), many, seen_once, math.log(1e-6), log_max_weight,
                                     0.95, {})
    assert out.diagnostics["upper_end"] == "normal"
    total = 1e-6 + 500 * 1e-7 / n
    assert out.log_p == pytest.approx(math.log(total)) and out.ci[1] < math.log(1.1 * total)
