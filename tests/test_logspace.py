"""The log-space helpers, checked in float64 against direct computation and scipy."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from tailguard import _logspace as ls


@given(st.floats(min_value=-700, max_value=-1e-12))
def test_log1mexp_matches_direct_formula(a):
    got = float(ls.log1mexp(torch.tensor(a, dtype=torch.float64)))
    want = math.log(-math.expm1(a))
    assert got == pytest.approx(want, rel=1e-10)


@given(st.lists(st.floats(min_value=-800, max_value=50), min_size=1, max_size=50))
def test_logmeanexp_matches_numpy(values):
    x = torch.tensor(values, dtype=torch.float64)
    shift = max(values)
    want = shift + math.log(np.mean(np.exp(np.array(values) - shift)))
    assert float(ls.logmeanexp(x)) == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_logmeanexp_of_all_minus_inf_is_minus_inf():
    x = torch.full((5,), -math.inf, dtype=torch.float64)
    assert float(ls.logmeanexp(x)) == -math.inf


def test_ess_equal_weights_is_n_and_one_heavy_weight_is_one():
    assert ls.ess(torch.zeros(100, dtype=torch.float64)) == pytest.approx(100)
    w = torch.full((100,), -1000.0, dtype=torch.float64)
    w[3] = 0.0
    assert ls.ess(w) == pytest.approx(1.0)


@pytest.mark.parametrize(("hits", "n"), [(0, 1000), (1, 1000), (37, 1000), (1000, 1000)])
def test_binomial_ci_matches_scipy_clopper_pearson(hits, n):
    low, high = ls.binomial_log_ci(hits, n, 0.95)
    ci = stats.binomtest(hits, n).proportion_ci(0.95, method="exact")
    assert math.exp(high) == pytest.approx(ci.high, rel=1e-9)
    if hits == 0:
        assert low == -math.inf
    else:
        assert math.exp(low) == pytest.approx(ci.low, rel=1e-9)


def test_zero_hit_upper_bound_is_about_three_over_n():
    _, high = ls.binomial_log_ci(0, 100_000, 0.95)
    assert 3.0e-5 < math.exp(high) < 4.0e-5


def test_pareto_k_separates_light_and_heavy_tails():
    g = torch.Generator().manual_seed(0)
    light = torch.randn(5000, generator=g, dtype=torch.float64) * 0.1
    heavy = torch.log(torch.rand(5000, generator=g, dtype=torch.float64)) * -1.5  # Pareto k≈1.5
    assert ls.pareto_k(light) < 0.5
    assert ls.pareto_k(heavy) > 0.7


def test_normal_log_ci_contains_estimate_and_widens_with_error():
    narrow = ls.normal_log_ci(-20.0, 0.05, 0.95)
    wide = ls.normal_log_ci(-20.0, 0.5, 0.95)
    assert narrow[0] < -20.0 < narrow[1]
    assert wide[0] < narrow[0] and wide[1] > narrow[1]
