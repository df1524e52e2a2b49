"""The stress suite: every case builds and runs on its own D; every analytic construction,
rebuilt at p ~ 3e-2, agrees with plain sampling; each case still has the feature that makes
it hard; the trained network reproduces the outputs its sampled truth was computed with."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from tailguard._logspace import binomial_log_ci, to_log10
from tailguard.bench import stress, stress_trained
from tailguard.bench.cases import Case

KINDS = {"two-scales", "multi-scales", "many-regions", "high-dim", "needle", "non-smooth",
         "decoy", "thin", "ill-conditioned", "trained"}


@pytest.fixture(scope="module")
def suite() -> list[Case]:
    return stress.stress_cases()


def _by_name(suite: list[Case], name: str) -> Case:
    return next(c for c in suite if c.name == name)


def _plain_hits(case: Case, n: int, seed: int, batch: int = 50_000) -> int:
    """Catastrophes among n independent draws of the case's D (plain sampling, no estimator)."""
    g = torch.Generator().manual_seed(seed)
    hits = 0
    with torch.no_grad():
        for start in range(0, n, batch):
            x = case.dist.sample(min(batch, n - start), g)
            hits += int((case.spec.score(x, case.model(x)) > 0).sum())
    return hits


# --- the suite as a whole -------------------------------------------------------------------
def test_suite_covers_every_kind_with_unique_names(suite: list[Case]) -> None:
    assert len(suite) >= 14
    names = [c.name for c in suite]
    assert len(set(names)) == len(names)
    assert all(c.name.startswith(f"stress/{c.family}-") for c in suite)
    assert {c.family for c in suite} == KINDS
    assert stress.stress_cases() is suite  # cached


def test_truths_are_finite_and_in_range(suite: list[Case]) -> None:
    for case in suite:
        low, high = case.truth_ci_log10
        assert all(math.isfinite(v) for v in (low, case.true_log10_p, high)), case.name
        assert -12.0 <= low <= case.true_log10_p <= high <= -4.0, case.name
        if case.family != "trained":
            assert low == high == case.true_log10_p, case.name


def test_models_run_on_samples_of_their_distribution(suite: list[Case]) -> None:
    g = torch.Generator().manual_seed(0)
    for case in suite:
        x = case.dist.sample(256, g)
        with torch.no_grad():
            score = case.spec.score(x, case.model(x))
        assert score.shape == (256,), case.name
        assert score.dtype == torch.float64, case.name
        assert torch.isfinite(score).all(), case.name


# --- analytic truths against plain sampling, at p ~ 3e-2 ------------------------------------
LARGE: list[tuple[Callable[..., Case], dict[str, object]]] = [
    (stress.two_scales_case, {}),
    (stress.multi_scales_case, {"regions": 3}),
    (stress.multi_scales_case, {"regions": 4}),
    (stress.many_regions_case, {"m": 20}),
    (stress.many_regions_case, {"m": 40}),
    (stress.norm_case, {"d": 200}),
    (stress.norm_case, {"d": 500}),
    (stress.spread_or_case, {}),
    (stress.needle_case, {"d": 16}),
    (stress.needle_case, {"d": 64}),
    (stress.staircase_case, {}),
    (stress.jump_case, {}),
    (stress.decoy_case, {}),
    (stress.slab_case, {"width": 0.3}),
    (stress.shell_case, {"width": 4.0}),
    (stress.ill_conditioned_case, {"k": 1}),
    (stress.ill_conditioned_case, {"k": 2}),
]


@pytest.mark.parametrize(("builder", "kwargs"), LARGE,
                         ids=[f"{b.__name__}-{'-'.join(map(str, k.values()))}" for b, k in LARGE])
def test_large_p_version_agrees_with_plain_sampling(builder: Callable[..., Case],
                                                    kwargs: dict[str, object]) -> None:
    case = builder(-1.5, **kwargs)
    assert case.true_log10_p == pytest.approx(-1.5, abs=0.05)
    n = 100_000
    p = 10.0**case.true_log10_p
    hits = _plain_hits(case, n, seed=7)
    assert abs(hits - n * p) <= 5 * math.sqrt(n * p * (1 - p)), (hits, n * p)


def test_builders_reject_unreachable_targets() -> None:
    with pytest.raises(ValueError, match="target_log10_p"):
        stress.slab_case(-1.0, width=1e-3)
    with pytest.raises(ValueError, match="regions"):
        stress.multi_scales_case(-6.0, regions=5)


# --- each case keeps what makes it hard -----------------------------------------------------
def _read_out(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight (out, d) and bias (out,) of the case model's first (linear) layer."""
    layer = case.model[0]
    assert isinstance(layer, nn.Linear)
    return layer.weight.detach(), layer.bias.detach()


def test_scales_cases_put_little_mass_behind_the_steep_score(suite: list[Case]) -> None:
    for name in ("stress/two-scales-1e-6", "stress/multi-scales-4regions-1e-8"):
        weight, bias = _read_out(_by_name(suite, name))
        scales = weight.norm(dim=1)
        tails = torch.special.log_ndtr(bias / scales)  # log P[region i]
        steep = int(scales.argmax())
        assert float(scales.max() / scales.min()) == pytest.approx(1e6)
        assert float(tails[steep]) < float(tails.max()) - math.log(50.0)


def test_needle_mass_comes_from_one_point(suite: list[Case]) -> None:
    for name in ("stress/needle-d16-1e-7", "stress/needle-d64-1e-10"):
        case = _by_name(suite, name)
        weight, bias = _read_out(case)
        w, t = weight[0], -float(bias[0])
        sigma = float(case.dist.noise_std)  # type: ignore[attr-defined]
        logs = torch.special.log_ndtr((case.dist.points @ w - t) / sigma)  # type: ignore[attr-defined]
        assert float(torch.softmax(logs, dim=0).max()) > 0.99
        exact = stress.needle_log10_p(case.dist.points @ w, t, sigma)  # type: ignore[attr-defined]
        assert exact == pytest.approx(case.true_log10_p, abs=1e-12)


def test_decoy_rises_toward_a_non_catastrophic_peak(suite: list[Case]) -> None:
    case = _by_name(suite, "stress/decoy-1e-6")
    u = _read_out(case)[0][0]
    path = torch.linspace(0.0, 3.0, 3001, dtype=torch.float64)[:, None] * u
    with torch.no_grad():
        score = case.model(path)[:, 0]
    assert bool((torch.diff(score[:1500]) > 0).all())  # climbs from the mean ...
    assert -1e-3 < float(score.max()) < 0.0  # ... to a peak just below 0
    x = torch.zeros(1, u.numel(), dtype=torch.float64, requires_grad=True)
    case.model(x).sum().backward()
    assert x.grad is not None
    assert float(x.grad[0] @ u) == pytest.approx(1.0)  # the gradient at the mean points at the decoy


def test_staircase_score_has_plateaus(suite: list[Case]) -> None:
    case = _by_name(suite, "stress/non-smooth-staircase-1e-8")
    x = case.dist.sample(10_000, torch.Generator().manual_seed(1))
    with torch.no_grad():
        score = case.spec.score(x, case.model(x))
    assert len(torch.unique(score)) <= 15


def test_ill_conditioned_covariance_and_independent_constraints(suite: list[Case]) -> None:
    case = _by_name(suite, "stress/ill-conditioned-and2-1e-8")
    cov = case.dist.covariance()  # type: ignore[attr-defined]
    assert float(torch.linalg.cond(cov)) == pytest.approx(1e4, rel=1e-6)
    w = _read_out(case)[0]
    corr = (w[0] @ cov @ w[1]) / torch.sqrt((w[0] @ cov @ w[0]) * (w[1] @ cov @ w[1]))
    assert abs(float(corr)) < 1e-12
    cos = float(w[0] @ w[1] / (w[0].norm() * w[1].norm()))
    assert cos > 0.9  # independent projections, yet nearly the same half-space in x-space


# --- the trained network --------------------------------------------------------------------
def test_trained_network_reproduces_the_recorded_outputs() -> None:
    # retrained, not the cached model
    fresh = stress_trained.margin_network(stress_trained.train_classifier())
    with torch.no_grad():
        margins = fresh(stress_trained.trained_probes())[:, 0]
    recorded = torch.tensor(stress_trained.TRAINED_PROBE_MARGINS, dtype=torch.float64)
    assert torch.allclose(margins, recorded, rtol=0.0, atol=1e-9)
    with torch.no_grad():
        assert torch.equal(stress_trained.trained_margin()(stress_trained.trained_probes())[:, 0], margins)


def test_trained_truth_is_its_clopper_pearson_record(suite: list[Case]) -> None:
    for key, record in stress_trained.TRAINED_TRUTH.items():
        case = _by_name(suite, f"stress/trained-mlp8-{key}")
        hits, draws = int(record["hits"]), int(record["draws"])
        assert draws >= 100_000_000 and hits >= 100
        low, high = binomial_log_ci(hits, draws, 0.95)
        assert case.truth_ci_log10 == (to_log10(low), to_log10(high))
        assert case.true_log10_p == pytest.approx(float(key.replace("1e", "")), abs=0.3)
        assert case.truth_ci_log10[1] - case.truth_ci_log10[0] < 0.2
