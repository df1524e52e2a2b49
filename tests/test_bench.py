"""The estimation benchmark: ground truths against closed forms and plain sampling, the
runner (local and Ray), the OpenTURNS wrapper, and the report files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

import tailguard as tg
from tailguard.bench import cases, run_estimation_benchmark, summarise, truth, write_report
from tailguard.bench.openturns_runner import run_openturns
from tailguard.bench.runner import run_one

RECORD_FIELDS = {
    "method", "case", "family", "true_log10_p", "truth_ci_log10", "truth_source", "budget",
    "seed", "status", "reason", "estimate_log10_p", "ci_log10", "covered", "abs_log10_error",
    "model_calls", "seconds", "heuristic", "trusted", "warnings",
}


def _within_sampling_error(log10_truth: float, hits: int, n: int, z: float = 4.0) -> bool:
    """Is the hit count within z binomial standard errors of n * p_true?"""
    p = 10.0**log10_truth
    return abs(hits - n * p) <= z * math.sqrt(n * p * (1 - p))


# --- closed forms ---------------------------------------------------------------------------
def test_closed_forms_match_scipy() -> None:
    w, mean, cov = np.array([1.0, -2.0]), np.array([0.3, 0.1]), np.array([[2.0, 0.5], [0.5, 1.0]])
    sd = math.sqrt(w @ cov @ w)
    expected = stats.norm.sf((1.5 - w @ mean) / sd)
    assert truth.linear_log10_p(w, -1.5, mean, cov) == pytest.approx(math.log10(expected), abs=1e-12)
    assert truth.and_halfspaces_log10_p(2.0, 3) == pytest.approx(
        3 * math.log10(stats.norm.sf(2.0)), abs=1e-12)
    assert truth.or_directions_log10_p(2.5, 4) == pytest.approx(
        math.log10(1 - stats.norm.cdf(2.5) ** 4), abs=1e-12)
    # far tail, where 1 - cdf^m would be 0 in float64: m * Phi(-t) to leading order
    assert truth.or_directions_log10_p(9.0, 4) == pytest.approx(
        math.log10(4) + stats.norm.logsf(9.0) / math.log(10), abs=1e-9)


@pytest.mark.parametrize("builder", [cases.linear_case, cases.and_case, cases.or_case])
@pytest.mark.parametrize("target", [-3.0, -9.0, -15.0])
def test_exact_cases_hit_their_target(builder, target: float) -> None:
    case = builder(target)
    assert case.true_log10_p == pytest.approx(target, abs=1e-6)
    assert case.truth_ci_log10 == (case.true_log10_p, case.true_log10_p)


# --- truths against plain sampling ----------------------------------------------------------
@pytest.mark.parametrize("builder", [cases.linear_case, cases.and_case, cases.or_case,
                                     cases.relusum_case])
def test_case_truth_matches_plain_sampling(builder) -> None:
    case = builder(-2.5)
    est = tg.estimate(case.model, case.dist, case.spec, method="mc", budget=400_000, seed=3)
    hits = est.diagnostics["hits"]
    assert _within_sampling_error(case.true_log10_p, hits, 400_000)


def test_relu_sum_bounds_are_tight_and_bracket_sampling() -> None:
    a, c = np.array([1.0, 0.7, 1.3, 0.5]), np.array([0.5, 0.0, 1.0, -0.5])
    low, high = truth.relu_sum_log10_bounds(a, c, 3.0)
    assert low < high < low + 0.01
    x = np.random.default_rng(0).standard_normal((2_000_000, 4))
    hits = int(((a * np.maximum(x - c, 0.0)).sum(1) > 3.0).sum())
    assert _within_sampling_error(0.5 * (low + high), hits, 2_000_000)
    # refining the lattice moves the midpoint by far less than the bounds' width
    assert truth.relu_sum_log10_p(a, c, 3.0, n_grid=8000) == pytest.approx(
        0.5 * (low + high), abs=2e-4)


def test_polar_integration_matches_closed_form_and_sampling() -> None:
    corner = truth.polar_log10_p(lambda x: np.minimum(x[:, 0] - 3.0, x[:, 1] - 4.0), np.zeros(2))
    assert corner == pytest.approx(math.log10(stats.norm.sf(3) * stats.norm.sf(4)), abs=1e-3)
    model = cases._random_classifier(7)
    score = cases._margin_fn(model)
    mean = 2.0 * cases._rare_direction(score)
    exact = truth.polar_log10_p(score, mean, n_angles=1024, n_radii=800)
    assert -3.5 < exact < -1.5
    x = torch.from_numpy(mean + np.random.default_rng(1).standard_normal((1_000_000, 2)))
    hits = int((score(x.numpy()) > 0).sum())
    assert _within_sampling_error(exact, hits, 1_000_000)


# --- runner ---------------------------------------------------------------------------------
def _check_records(records: list[dict], n_expected: int) -> None:
    assert len(records) == n_expected
    for r in records:
        assert set(r) == RECORD_FIELDS
        assert r["status"] == "ok" and r["method"] == "mc"
        assert r["model_calls"] == r["budget"]
        low, high = r["ci_log10"]
        assert low <= high
        assert r["covered"] == (low <= r["true_log10_p"] <= high)
    json.dumps(records, default=str)


def test_runner_quick_preset_local_is_deterministic() -> None:
    records = run_estimation_benchmark(methods=["mc"], preset="quick")
    _check_records(records, 3 * 1 * 2)
    again = run_estimation_benchmark(methods=["mc"], preset="quick")
    assert [r["estimate_log10_p"] for r in records] == [r["estimate_log10_p"] for r in again]
    (row,) = summarise(records)
    assert row["runs"] == 6 and row["completed"] == 6 and row["band_runs"] == 2
    assert row["median_model_calls"] == 5_000


def test_runner_ray_matches_local() -> None:
    """The runner joins a running Ray instance or starts a local one (Ray >= 2.40 has no local_mode)."""
    pytest.importorskip("ray")
    seen: list[int] = []
    records = run_estimation_benchmark(methods=["mc"], preset="quick", backend="ray",
                                       progress=lambda r, done, total: seen.append(done))
    _check_records(records, 6)
    local = run_estimation_benchmark(methods=["mc"], preset="quick")
    assert [r["estimate_log10_p"] for r in records] == [r["estimate_log10_p"] for r in local]
    assert seen == list(range(1, 7))


def test_runner_skips_what_a_method_cannot_do() -> None:
    points = torch.rand(20, 2, generator=torch.Generator().manual_seed(0))
    case = cases.Case("noisy", "noisy", torch.nn.Linear(2, 2), tg.NoisyEmpirical(points, 0.1),
                      tg.ClassIs(1), -1.0, (-1.0, -1.0), "made up")
    record = run_one("openturns-ce", case, 5_000, 0)
    assert record["status"] == "skipped" and "NoisyEmpirical" in record["reason"]
    with pytest.raises(tg.InvalidArgumentError, match="method"):
        run_estimation_benchmark(methods=["nope"])


# --- OpenTURNS ------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "budget"), [("openturns-ce", 20_000),
                                                ("openturns-subset", 60_000)])
def test_openturns_respects_budget_and_is_accurate(method: str, budget: int) -> None:
    """Median over 5 seeds: subset sampling's spread is wider than its own CoV says."""
    case = cases.linear_case(-6.0)
    runs = [run_openturns(method, case.model, case.dist, case.spec, budget, seed=s)
            for s in range(5)]
    for est in runs:
        assert 0.5 * budget <= est.n_model_calls <= budget
        assert est.ci_log10[0] < est.log10_p < est.ci_log10[1]
    median = float(np.median([est.log10_p for est in runs]))
    assert abs(median - case.true_log10_p) < 0.3


def test_openturns_small_budget_never_overspends() -> None:
    case = cases.or_case(-8.0)
    est = run_openturns("openturns-subset", case.model, case.dist, case.spec, 3_000, seed=1)
    assert est.n_model_calls <= 3_000


# --- report ---------------------------------------------------------------------------------
def test_report_writes_json_markdown_and_plot(tmp_path) -> None:
    records = run_estimation_benchmark(methods=["mc"], cases=[cases.linear_case(-2.0)],
                                       budgets=[2_000], seeds=[0])
    paths = write_report(records, tmp_path, config={"preset": "test"})
    log = json.loads(paths["json"].read_text())
    assert log["records"][0]["method"] == "mc" and log["summary"][0]["runs"] == 1
    assert {"torch", "openturns"} <= set(log["versions"]) and "commit" in log["git"]
    assert "| mc | 2,000 |" in paths["markdown"].read_text()
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_digits_case_reproduces_its_stored_truth() -> None:
    from tailguard.bench.digits import DIGITS_TRUTH, count_hits, digits_case

    case = digits_case()
    assert "WARNING" not in case.truth_source
    hits = count_hits(case.model, case.dist, case.spec, 2_000_000, seed=99)
    assert _within_sampling_error(float(DIGITS_TRUTH["log10_p"]), hits, 2_000_000)
