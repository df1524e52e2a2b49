"""The failure-mode search finds regions that level-following methods miss, and seeds auto."""

import math

import torch
from scipy import stats
from torch import nn

import tailguard as tg
from tailguard.estimators import modes
from tailguard.estimators._space import BaseSpace
from tailguard.oracle import ScoreOracle


class TwoScales(nn.Module):
    """max(0.001 (x0 - 4.5), 1000 (x1 - 3.7)): the slow score rules everywhere but in x1's region.

    Levels that follow the score follow x0 (p = 3.4e-6); x1's region holds 1.1e-4.
    """

    def forward(self, x):
        x = x.double()
        return torch.maximum(0.001 * (x[:, 0] - 4.5), 1000 * (x[:, 1] - 3.7))[:, None]


def two_scales_truth() -> float:
    pa, pb = stats.norm.sf(4.5), stats.norm.sf(3.7)
    return math.log10(pa + pb - pa * pb)


def test_search_finds_both_regions_whatever_their_score_scales():
    dist = tg.Gaussian(torch.zeros(10, dtype=torch.float64))
    oracle = ScoreOracle(TwoScales(), dist, tg.OutputAbove(0, 0.0))
    found = modes.search(oracle, BaseSpace(dist), 2_000, torch.Generator().manual_seed(0))
    assert found.model_calls <= 2_000
    directions = {int(torch.argmax(m.z.abs())) for m in found.modes}
    assert {0, 1} <= directions
    heavy = max(found.modes, key=lambda m: m.log_density)
    assert abs(float(heavy.z[1]) - 3.7) < 0.1  # the design point of the heavy region


def test_search_screens_every_data_point_of_a_noisy_empirical_d():
    g = torch.Generator().manual_seed(5)
    points = torch.randn(500, 8, generator=g, dtype=torch.float64)
    points[:, 0] = points[:, 0].clamp(max=1.0)
    points[123, 0] = 2.5  # the only point within reach of x0 > 3.7
    dist = tg.NoisyEmpirical(points, 0.3)
    w = torch.zeros(1, 8, dtype=torch.float64)
    w[0, 0] = 1.0
    model = nn.Linear(8, 1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(w)
    oracle = ScoreOracle(model, dist, tg.OutputAbove(0, 3.7))
    found = modes.search(oracle, BaseSpace(dist), 1_500, torch.Generator().manual_seed(0))
    assert found.modes and found.modes[0].centre == 123


def test_auto_covers_the_heavy_region_that_levels_miss():
    dist = tg.Gaussian(torch.zeros(10, dtype=torch.float64))
    truth = two_scales_truth()
    for seed in (0, 1):
        est = tg.estimate(TwoScales(), dist, tg.OutputAbove(0, 0.0), budget=20_000, seed=seed)
        assert est.ci_log10[0] <= truth <= est.ci_log10[1]
        assert abs(est.log10_p - truth) < 0.1


def test_a_model_that_never_fails_gets_a_bound_as_tight_as_plain_sampling():
    class Never(nn.Module):
        def forward(self, x):
            return -1.0 - (x.double() ** 2).sum(1, keepdim=True)

    dist = tg.Gaussian(torch.zeros(6, dtype=torch.float64))
    est = tg.estimate(Never(), dist, tg.OutputAbove(0, 0.0), budget=50_000, seed=0)
    plain = tg.estimate(Never(), dist, tg.OutputAbove(0, 0.0), method="mc", budget=50_000, seed=0)
    assert est.log10_p == -math.inf
    assert est.ci_log10[1] <= plain.ci_log10[1] + 0.02  # the search costs a few per cent of the calls
    assert est.trusted and "draws of D" in est.assumes


def test_first_chain_of_every_centre_starts_on_it_and_the_others_at_the_radii():
    chain_centre = torch.tensor([3, 0, 3, 3, 0, 7])
    u = modes._starts(chain_centre, 400, torch.Generator().manual_seed(0), on_centre=True)
    norms = u.norm(dim=1) / math.sqrt(400)
    assert norms[[0, 1, 5]].tolist() == [0.0, 0.0, 0.0]  # the first chain of centres 3, 0 and 7
    assert torch.allclose(norms[[2, 3, 4]], torch.tensor(modes.START_RADII[:2] + modes.START_RADII[:1],
                                                          dtype=torch.float64), rtol=0.1)


def test_search_reaches_the_heaviest_data_points_of_the_digits_case():
    """Where plain sampling sees the failures, the search has a near-best mode (random starts did not)."""
    from tailguard.bench.digits import digits_problem

    model, dist, spec = digits_problem()
    centres = dist.points.reshape(dist.n_components, -1).float()
    g = torch.Generator().manual_seed(1)
    hits = torch.zeros(dist.n_components)
    with torch.no_grad():
        for _ in range(16):
            k = torch.randint(dist.n_components, (1 << 18,), generator=g)
            x = centres[k] + float(dist.noise_std) * torch.randn(1 << 18, 64, generator=g)
            hits += torch.bincount(k[spec.score(x, model(x)) > 0], minlength=dist.n_components).float()
    heaviest = torch.argsort(hits, descending=True)[:2].tolist()  # about 70 % of p
    for seed in (0, 1):
        found = modes.search(ScoreOracle(model, dist, spec), BaseSpace(dist), 6_400,
                             torch.Generator().manual_seed(seed))
        best = {}
        for m in found.modes:
            best.setdefault(m.centre, m.log_density)
        for c in heaviest:
            assert c in best and best[c] >= found.modes[0].log_density - 3.0


def test_a_small_search_finds_the_heavy_region_that_the_flattest_score_hides():
    """Three regions, scales 1e3 / 1e-3 / 1: outside them the 1e-3 branch is nearest zero everywhere.

    Steps from random starts follow it to a region 100x lighter than the heaviest one;
    starts moved to the first failure on their ray reach all three (500 calls, every seed).
    """
    from tailguard.bench.stress import multi_scales_case

    case = multi_scales_case(-5.0, regions=3)
    weights = case.model[0].weight.detach().double()
    directions = weights / weights.norm(dim=1, keepdim=True)
    for seed in range(8):
        found = modes.search(ScoreOracle(case.model, case.dist, case.spec), BaseSpace(case.dist), 500,
                             torch.Generator().manual_seed(seed))
        assert found.model_calls <= 500
        regions = {int(torch.argmax(directions @ m.z)) for m in found.modes}
        assert regions == {0, 1, 2}
