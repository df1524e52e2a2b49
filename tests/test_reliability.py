"""OpenTURNS' reliability benchmark as tailguard cases: the torch ports against OpenTURNS'
own functions and transforms, the checked truths against plain sampling, and the
OpenTURNS baselines' records and budgets."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

import tailguard as tg
from tailguard.bench import reliability as rel
from tailguard.bench import reliability_problems as problems
from tailguard.bench.runner import base_record
from tailguard.errors import MissingExtraError
from tailguard.oracle import model_dtype_device

OTBENCHMARK_PROBLEMS = 26  # len(otbenchmark.ReliabilityBenchmarkProblemList()) in 0.2.1


@pytest.fixture(scope="module")
def otb():
    try:
        return rel.load_otbenchmark()
    except MissingExtraError as exc:
        pytest.skip(f"otbenchmark is not importable ({exc}); install it as scripts/setup.sh does")


@pytest.fixture(scope="module")
def ot():
    return pytest.importorskip("openturns", reason="OpenTURNS is the [bench] extra")


# --- the ports ----------------------------------------------------------------------------------
def test_every_otbenchmark_problem_is_ported_or_left_out(otb) -> None:
    classes = [p.otbenchmark_class for p in problems.PROBLEMS]
    assert len(set(classes)) == len(classes)
    assert len(classes) + len(problems.LEFT_OUT) == OTBENCHMARK_PROBLEMS
    assert all(hasattr(otb, c) for c in classes)
    assert set(rel.TRUTHS) == set(problems.PROBLEMS_BY_NAME)


@pytest.mark.parametrize("case", rel.reliability_cases(), ids=lambda c: c.name)
def test_case_builds_in_standard_space_in_float64(case) -> None:
    d = case.dist.dim
    assert isinstance(case.dist, tg.Gaussian) and case.dist.mean.dtype == torch.float64
    assert torch.equal(case.dist.mean, torch.zeros(d, dtype=torch.float64))
    assert model_dtype_device(case.model)[0] == torch.float64  # so the oracle feeds float64
    assert case.spec.index == 0 and case.spec.threshold == 0.0
    low, high = case.truth_ci_log10
    assert low <= case.true_log10_p <= high <= 0.0
    g = torch.Generator().manual_seed(0)
    z = torch.cat([3.0 * torch.randn(200, d, dtype=torch.float64, generator=g),
                   8.0 * torch.sign(torch.randn(20, d, dtype=torch.float64, generator=g))])
    y = case.model(z)
    assert y.shape == (220, 1) and y.dtype == torch.float64 and torch.isfinite(y).all()
    assert torch.equal(pickle.loads(pickle.dumps(case.model))(z), y)  # sweeps ship cases to workers


@pytest.mark.parametrize("problem", problems.PROBLEMS, ids=lambda p: p.name)
def test_torch_port_matches_openturns(problem, otb, ot) -> None:
    """Score t - g(T^-1(z)) in torch against OpenTURNS' function of its own inverse
    isoprobabilistic transform, at N(0, 2^2 I) points (wider than D, to reach the tails)."""
    event = rel.openturns_event(problem.name)
    below = event.getOperator()
    assert below(0.0, 1.0) and not below(1.0, 0.0) and event.getThreshold() == problem.threshold
    z = 2.0 * np.random.default_rng(1).standard_normal((500, problem.dim))
    x_ot = np.array(event.getAntecedent().getDistribution().getInverseIsoProbabilisticTransformation()(z))
    score_ot = problem.threshold - np.array(event.getFunction()(x_ot))[:, 0]
    model = rel.LimitStateModel(problem)
    with torch.no_grad():
        x = model.physical(torch.from_numpy(z)).numpy()
        score = model(torch.from_numpy(z))[:, 0].numpy()
    np.testing.assert_allclose(x, x_ot, rtol=1e-8, atol=1e-8 * np.abs(x_ot).max())
    np.testing.assert_allclose(score, score_ot, rtol=1e-8, atol=1e-8 * np.abs(score_ot).max())


@pytest.mark.parametrize("problem", problems.PROBLEMS, ids=lambda p: p.name)
def test_port_is_differentiable(problem) -> None:
    z = torch.randn(64, problem.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    z.requires_grad_(True)
    rel.LimitStateModel(problem)(z).sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_gumbel_inverse_cdf_is_exact_in_both_tails() -> None:
    gumbel = problems.Gumbel(1500.0, 350.0)
    beta, gamma = gumbel.scale_location()
    z = torch.tensor([-30.0, -5.0, 0.0, 5.0, 7.99, 8.01, 20.0, 40.0], dtype=torch.float64)
    x = gumbel.from_normal(z)
    assert torch.isfinite(x).all() and (x.diff() > 0).all()
    # upper tail: 1 - F(x) = Q(z), i.e. -expm1(-exp(-(x - gamma) / beta)) = Phi(-z)
    tail = -torch.expm1(-torch.exp(-(x - gamma) / beta))
    np.testing.assert_allclose(torch.log(tail[3:7]).numpy(),
                               torch.special.log_ndtr(-z[3:7]).numpy(), rtol=1e-10)


# --- the truths ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["RP22", "RP53", "RP57", "four-branch", "axial-beam"])
def test_truth_agrees_with_plain_sampling(name: str) -> None:
    case = rel.reliability_case(name)
    assert case.true_log10_p >= -3.0
    n = 1_000_000
    z = torch.randn(n, case.dist.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        hits = int((case.model(z) > 0).sum())
    p = 10.0**case.true_log10_p
    assert abs(hits - n * p) <= 4.0 * math.sqrt(n * p * (1 - p))


def test_exact_truths_and_known_corrections() -> None:
    """Closed forms where they exist; otbenchmark's RP107 (2.92e-7) is not Phi(-5)."""
    from scipy import special

    assert rel.TRUTHS["RP107"].log10_p == pytest.approx(math.log10(special.ndtr(-5.0)), abs=1e-9)
    assert rel.TRUTHS["R-S"].log10_p == pytest.approx(math.log10(special.ndtr(-math.sqrt(2))), abs=1e-9)
    assert rel.TRUTHS["RP54"].log10_p == pytest.approx(math.log10(special.gammainc(20, 8.951)), abs=1e-9)
    low, high = rel.TRUTHS["RP107"].ci_log10
    assert not low <= math.log10(rel.TRUTHS["RP107"].otbenchmark_p) <= high


# --- the OpenTURNS baselines --------------------------------------------------------------------
@pytest.mark.parametrize("method", rel.RELIABILITY_METHODS)
def test_baseline_record_respects_budget(method: str, otb) -> None:
    budget = 3_000
    record = rel.run_openturns_reliability("RP22", method, budget, seed=0)
    case = rel.reliability_case("RP22")
    assert set(record) == set(base_record(method, case, budget, 0))
    assert record["status"] == "ok", record["reason"]
    assert 0 < record["model_calls"] <= budget
    assert record["true_log10_p"] == rel.TRUTHS["RP22"].log10_p
    assert record["heuristic"] is (method == rel.FORM_METHOD)
    assert abs(record["estimate_log10_p"] - record["true_log10_p"]) < 1.0


def test_form_budget_is_exact_when_the_search_runs_out(otb) -> None:
    record = rel.run_openturns_reliability("RP63", rel.FORM_METHOD, 400, seed=0)  # d = 100
    assert record["model_calls"] <= 400
    assert record["status"] == "error" or any("budget" in w for w in record["warnings"])


def test_baseline_rejects_bad_requests(otb) -> None:
    assert rel.run_openturns_reliability("RP22", "openturns-subset", 100, 0)["status"] == "skipped"
    assert rel.run_openturns_reliability("RP22", rel.FORM_METHOD, 3, 0)["status"] == "skipped"
    with pytest.raises(tg.InvalidArgumentError, match="method"):
        rel.run_openturns_reliability("RP22", "openturns-mc", 3_000, 0)
    with pytest.raises(tg.InvalidArgumentError, match="problem_name"):
        rel.run_openturns_reliability("RP9", "openturns-ce", 3_000, 0)
