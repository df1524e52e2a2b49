"""Unnormalized D: a density known up to a constant, estimated without ever being sampled."""

from __future__ import annotations

import math

import pytest
import torch

import tailguard as tg
from tailguard.dists.unnormalized import Unnormalized
from tailguard.errors import InvalidArgumentError, ModelOutputError, ShapeMismatchError, UnsupportedError

LOG_C = 3.7  # the constant the density is off by; no estimator is told it


def _logistic(x: torch.Tensor) -> torch.Tensor:
    """A product of standard logistic densities times e^LOG_C: heavier tails than a Gaussian."""
    return (-x - 2 * torch.nn.functional.softplus(-x)).sum(1) + LOG_C


def _first_coordinate(d: int) -> torch.nn.Module:
    lin = torch.nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[0, 0] = 1.0
    return lin


def test_sample_refuses_and_names_the_alternative():
    with pytest.raises(UnsupportedError, match="'is' or 'splitting'"):
        Unnormalized(_logistic, (3,)).sample(2, torch.Generator())
    with pytest.raises(UnsupportedError, match="'is' or 'splitting'"):
        tg.estimate(_first_coordinate(3), Unnormalized(_logistic, (3,)), tg.OutputAbove(0, 1.0), method="mc",
                    budget=1_000)


def test_bad_densities_are_named():
    with pytest.raises(InvalidArgumentError, match="log_density"):
        Unnormalized(3.0, (2,))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="event_shape"):
        Unnormalized(_logistic, (0,))
    with pytest.raises(ShapeMismatchError, match="log_density returned"):
        Unnormalized(lambda x: x, (2,)).log_density_of(torch.zeros(4, 2))
    with pytest.raises(ModelOutputError, match="NaN"):
        Unnormalized(lambda x: x[:, 0] * math.nan, (2,)).log_density_of(torch.zeros(4, 2))


def test_normaliser_is_estimated_with_its_error():
    z = Unnormalized(_logistic, (4,), normaliser_draws=20_000).normaliser
    assert z.trusted
    assert abs(z.log_z - LOG_C) < 5 * z.rel_se + 1e-3


def test_importance_sampling_finds_a_1e_minus_8_tail_without_sampling():
    d = 4
    threshold = math.log(1e8 - 1)  # P[x0 > t] = 1 / (1 + e^t) = 1e-8 for a standard logistic
    est = tg.estimate(_first_coordinate(d), Unnormalized(_logistic, (d,)), tg.OutputAbove(0, threshold),
                      method="is", budget=30_000, seed=0)
    assert abs(est.log10_p + 8.0) < 0.1
    assert est.ci_log10[0] <= -8.0 <= est.ci_log10[1]


def test_splitting_needs_no_sampler_and_no_normaliser():
    d = 4
    threshold = math.log(1e6 - 1)  # P = 1e-6
    dist = Unnormalized(_logistic, (d,))
    est = tg.estimate(_first_coordinate(d), dist, tg.OutputAbove(0, threshold), method="splitting",
                      budget=40_000, seed=0, n_steps=10)
    assert est.ci_log10[0] <= -6.0 <= est.ci_log10[1]
    assert abs(est.log10_p + 6.0) < 0.4
    assert dist._normaliser is None  # splitting never asked for Z


def test_a_normaliser_with_infinite_variance_leaves_no_interval():
    def cauchy(x: torch.Tensor) -> torch.Tensor:  # tails heavier than the Student-t's
        return -torch.log1p(x[:, 0] ** 2)

    dist = Unnormalized(cauchy, (1,), normaliser_draws=20_000)
    assert not dist.normaliser.trusted
    est = tg.estimate(_first_coordinate(1), dist, tg.OutputAbove(0, 100.0), method="is", budget=5_000, seed=0)
    assert est.ci_log10 == (-math.inf, 0.0)  # the normaliser's error is unbounded: no interval
    assert not est.trusted and any("normaliser" in w for w in est.warnings)
    assert "normaliser" in str(est)
