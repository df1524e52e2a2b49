"""Conditioned D: P[C | R] against exact truth, its pieces, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from torch import nn

import tailguard as tg
from tailguard.bench.conditioned import independent, log_both_tails, nearly_disjoint
from tailguard.dists.conditioned import Conditioned
from tailguard.errors import InvalidArgumentError, ModelOutputError, ShapeMismatchError, UnsupportedError
from tailguard.estimators._space import BaseSpace
from tailguard.estimators.conditioned import MIN_START_BUDGET, fitted_proposal
from tailguard.estimators.conditioned_bound import bernstein_lower_mean, zero_hit_bound
from tailguard.estimators.restricted import Both, Recognised, Within


def _first(x: torch.Tensor) -> torch.Tensor:
    return x[:, 0] - 1.0


def test_no_sampler_and_an_unnormalised_density():
    d = Conditioned(tg.Gaussian(torch.zeros(3)), _first)
    with pytest.raises(UnsupportedError, match="tg.estimate"):
        d.sample(4, torch.Generator())
    x = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    lp = d.log_prob(x)
    assert lp[1] == -math.inf and torch.isclose(lp[0], d.base.log_prob(x)[0])


def test_bad_recognisers_are_named():
    base = tg.Gaussian(torch.zeros(3))
    with pytest.raises(InvalidArgumentError, match="recogniser"):
        Conditioned(base, 3.0)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="base"):
        Conditioned("gauss", _first)  # type: ignore[arg-type]
    x = torch.zeros(5, 3)
    with pytest.raises(ShapeMismatchError, match="recogniser returned"):
        Conditioned(base, lambda x: x).recognise(x)
    with pytest.raises(ModelOutputError, match="NaN"):
        Conditioned(base, lambda x: x[:, 0] * math.nan).recognise(x)


def test_both_is_the_min_and_within_is_minus_inf_outside_r():
    d = Conditioned(tg.Gaussian(torch.zeros(2)), _first)
    spec = tg.OutputAbove(0, 0.5)
    x = torch.tensor([[2.0, 0.0], [0.0, 0.0], [3.0, 0.0]])
    y = torch.tensor([[1.0], [1.0], [0.0]])
    both = Both(spec, Recognised(d)).score(x, y)
    assert torch.equal(both, torch.tensor([0.5, -1.0, -0.5], dtype=torch.float64))
    within = Within(spec, Recognised(d)).score(x, y)
    assert within[0] == 0.5 and within[1] == -math.inf and within[2] == -0.5


def test_correlated_truth_matches_plain_integration():
    # P[X > 0, Y > 0] = 1/4 + asin(rho) / (2 pi) for a standard bivariate normal
    for rho in (-0.5, 0.3):
        assert math.exp(log_both_tails(0.0, 0.0, rho)) == pytest.approx(0.25 + math.asin(rho) / (2 * math.pi),
                                                                        rel=1e-8)


@pytest.mark.parametrize("case", [independent(1e-6, 1e-3), nearly_disjoint(1e-5, 1e-3)], ids=lambda c: c.name)
def test_estimate_covers_the_exact_conditional(case):
    model, dist, spec = case.build()
    est = tg.estimate(model, dist, spec, budget=60_000, seed=0)
    low, high = est.ci_log10
    assert low <= case.log10_truth <= high
    assert abs(est.log10_p - case.log10_truth) < 0.3
    assert est.n_model_calls <= 60_000
    base_r = est.diagnostics["base_recognised"]
    assert base_r["ci_log10"][0] <= case.log10_base_r <= base_r["ci_log10"][1]
    assert tg.Estimate.from_json(est.to_json()).log10_p == est.log10_p


def test_log_prob_is_differentiable_and_near_the_truth():
    case = independent(1e-4, 1e-2, dim=4)
    model, dist, spec = case.build()
    model.weight.requires_grad_(True)
    lp = tg.log_prob(model, dist, spec, method="is", budget=20_000, seed=0)
    lp.backward()
    assert model.weight.grad is not None and torch.isfinite(model.weight.grad).all()
    assert float(model.weight.grad.abs().sum()) > 0
    # the surrogate (a logistic of the margin) is not the indicator: within a factor of 3
    assert abs(float(lp.detach()) / math.log(10) - case.log10_truth) < 0.5
    with pytest.raises(UnsupportedError, match="'is'"):
        tg.log_prob(model, dist, spec, method="moments")


def test_log_prob_fits_base_given_r_once_per_d_and_again_when_base_changes():
    case = independent(1e-4, 1e-2, dim=4)
    model, dist, spec = case.build()
    calls: list[int] = []
    recogniser = dist.recogniser
    counted = Conditioned(dist.base, lambda x: calls.append(x.shape[0]) or recogniser(x))
    first = float(tg.log_prob(model, counted, spec, method="is", budget=5_000, seed=0))
    fitting = sum(calls)
    assert fitting > 100_000  # the P_base[R] splitting behind the chain starts
    calls.clear()
    again = float(tg.log_prob(model, counted, spec, method="is", budget=5_000, seed=0))
    assert sum(calls) == 5_000  # only the final draws are recognised: the fit is reused
    assert again == first  # and the caller's draws are those of the first call
    later = [float(tg.log_prob(model, counted, spec, method="is", budget=5_000, seed=s)) for s in (1, 2)]
    assert all(abs(v / math.log(10) - case.log10_truth) < 0.5 for v in later)
    with torch.no_grad():
        dist.base.mean += 0.01  # base moved: base given R has too, so the fit is redone
    calls.clear()
    tg.log_prob(model, counted, spec, method="is", budget=5_000, seed=0)
    assert sum(calls) > 100_000


def test_a_zero_hit_conditional_gets_an_upper_bound_instead_of_a_refusal():
    case = independent(1e-6, 1e-3, dim=4)
    model, dist, spec = case.build()
    never = nn.Sequential(model, nn.Tanh())  # its output never exceeds 1: P[C | R] = 0
    est = tg.estimate(never, dist, tg.OutputAbove(0, 2.0), budget=60_000, seed=0)
    assert est.log10_p == -math.inf and est.trusted
    assert est.diagnostics["combined_by"] == "zero-hit bound"
    assert est.ci_log10[1] < -2.5  # about 3.7 / 32,000 draws, over the draws' weight spread
    assert est.n_model_calls <= 60_000
    assert "no catastrophe in R" in " ".join(est.warnings)


def test_the_zero_hit_bound_holds_with_c_where_the_weights_are_largest():
    # R = {x0 > t}, C = a slab of R along its edge nearest base's centre, where p_base / q peaks:
    # P[C | R] = 1e-4 exactly; draws that miss C must still bound it from above
    t = float(stats.norm.isf(1e-6))
    width = float(stats.norm.isf(stats.norm.sf(t) * (1 - 1e-4))) - t
    dist = Conditioned(tg.Gaussian(torch.zeros(4)), lambda x: x[:, 0] - t)
    model = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-1.0, 0.0, 0.0, 0.0]]))
    spec = tg.OutputAbove(0, -(t + width))
    space = BaseSpace(dist.base)
    bounds = []
    for seed in range(5):
        generator = torch.Generator().manual_seed(seed)
        fitted = fitted_proposal(dist, space, MIN_START_BUDGET, generator)
        found = zero_hit_bound(model, dist, spec, space, fitted, 20_000, generator, 0.95)
        assert found.recognised == 20_000
        if found.hits == 0:
            bounds.append(found.log10_high)
    assert len(bounds) >= 3
    assert all(b is not None and -4.0 < b < -2.0 for b in bounds)


def test_the_bernstein_lower_bound_covers_the_mean():
    generator = torch.Generator().manual_seed(0)
    covered = 0
    for _ in range(200):
        y = torch.rand(400, generator=generator) ** 4  # mean 0.2
        covered += bernstein_lower_mean(y, 400, 0.95) <= 0.2
    assert covered >= 195  # a 95 % bound that is conservative by construction
    assert bernstein_lower_mean(torch.ones(3), 1, 0.95) == 0.0


def test_recognised_trigger_task_draws_exactly_inside_a_condition_no_sample_meets():
    from tailguard.tasks import recognised_trigger as rt

    assert rt.LOG10_P_TRIGGER <= -8.0
    x = rt.exact_triggered_draws(20_000, torch.Generator().manual_seed(0))
    assert bool((rt.recogniser(x) > 0).all())
    # above LEVEL a standard normal has mean phi(a) / Phi_bar(a); the other features are untouched
    a = rt.LEVEL
    tail_mean = math.exp(-a * a / 2) / math.sqrt(2 * math.pi) / (0.5 * math.erfc(a / math.sqrt(2)))
    assert abs(float(x[:, 0].mean()) - tail_mean) < 0.01
    assert abs(float(x[:, 6].std()) - 1.0) < 0.03
    plain = rt.deployment().sample(200_000, torch.Generator().manual_seed(1))
    assert not bool((rt.recogniser(plain) > 0).any())
