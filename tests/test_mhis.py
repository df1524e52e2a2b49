"""MHIS: its move probabilities are exact, and on a moderate target it agrees with enumeration."""

import math

import pytest
import torch

import tailguard as tg
from tailguard.estimators.base import build
from tailguard.estimators.mhis import _move_log_prob, _propose

from .test_tokens import CLIMBABLE, case, exact_log10


def test_move_probabilities_sum_to_one_and_match_the_sampler():
    ctx, vocab, temperature = 3, 4, 0.7
    g = torch.Generator().manual_seed(0)
    log_p = torch.log_softmax(torch.randn(ctx, vocab, generator=g, dtype=torch.float64), 1)
    grad = torch.randn(1, ctx, vocab, generator=g, dtype=torch.float64)
    x = torch.tensor([[1, 2, 0]])
    reachable = {tuple(x[0].tolist())}
    for i in range(ctx):
        for v in range(vocab):
            y = x.clone()
            y[0, i] = v
            reachable.add(tuple(y[0].tolist()))
    targets = torch.tensor(sorted(reachable))
    log_q = _move_log_prob(x.expand(len(targets), -1), targets, grad.expand(len(targets), -1, -1), log_p,
                           temperature)
    assert torch.logsumexp(log_q, 0).exp().item() == pytest.approx(1.0, abs=1e-12)
    draws, log_forward = _propose(x.expand(20_000, -1), grad.expand(20_000, -1, -1), log_p, temperature, g)
    index = {row: k for k, row in enumerate(map(tuple, targets.tolist()))}
    counts = torch.bincount(torch.tensor([index[tuple(r)] for r in draws.tolist()]), minlength=len(targets))
    assert torch.allclose(counts.double() / 20_000, log_q.exp(), atol=0.01)
    assert torch.allclose(log_forward, log_q[[index[tuple(r)] for r in draws.tolist()]])


@pytest.mark.parametrize("spec_args", CLIMBABLE[:1], ids=lambda a: f"m{a[0]}p{a[1]}t{a[3]}")
def test_mhis_lands_near_the_exact_answer_on_a_moderate_target(spec_args):
    model, dist, spec, truth = case(*spec_args)
    est = tg.estimate(model, dist, spec, "mhis", budget=2**14, seed=0)
    assert est.n_model_calls <= 2**14
    assert abs(est.log10_p - truth) < 1.0, (est.log10_p, truth)
    assert 0.0 < est.diagnostics["acceptance"] < 1.0


def test_an_impossible_target_gives_minus_inf_with_an_upper_bound():
    model, dist, spec, _ = case(0, 1, 0.1, 3)
    with torch.no_grad():
        model.out_bias[3] = -1e3
    assert exact_log10(model, dist, 3) == -math.inf
    est = tg.estimate(model, dist, spec, "mhis", budget=4096, seed=0)
    assert est.log10_p == -math.inf and math.isfinite(est.ci_log10[1])
    assert "upper bound" in est.warnings[0] and est.heuristic


@pytest.mark.parametrize("settings", [{"chains": 1}, {"burn_in": 1.0}, {"temperature": -0.5}, {"pilot": 0}])
def test_bad_settings_are_rejected(settings):
    with pytest.raises(tg.InvalidArgumentError):
        build("mhis", settings)
