"""QLD: the pair count equals brute force, and it reaches past what its samples saw."""

import numpy as np
import pytest
import torch

import tailguard as tg
from tailguard.estimators.qld import _intervals
from tailguard.tasks.token_transformer import TokenTransformer, exact_target_log10

from .test_tokens import TokenMLP, peaked_probs


def test_intervals_hold_exactly_the_scalars_where_every_constraint_holds():
    rng = np.random.default_rng(0)
    offsets, slopes = rng.normal(size=(50, 4)), rng.normal(size=4)
    low, high = _intervals(offsets, slopes)
    for s in np.linspace(-6, 6, 241):
        inside = (offsets + s * slopes >= 0).all(1)
        assert np.array_equal(inside, (low <= s) & (s <= high))


def trained_transformer():
    torch.manual_seed(0)
    model = TokenTransformer(vocab=6, ctx=3, d_model=16)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(6, (512, 3), generator=g)
    y = (x[:, 0] + x[:, 2]) % 6  # a rule the model can learn in a few steps
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_qld_agrees_on_common_targets_and_extrapolates_past_its_hits():
    model = trained_transformer()
    dist = tg.IndependentTokens(peaked_probs(0.1, 2, ctx=3, vocab=6).float())
    exact = exact_target_log10(model, dist.log_probs())
    for target in range(6):
        est = tg.estimate(model, dist, tg.ClassIs(target), "qld", budget=4000, seed=0)
        assert est.heuristic and est.warnings and est.n_model_calls == 4000
        truth = float(exact[target])
        if truth > -2.0:
            assert abs(est.log10_p - truth) < 0.35, (target, est.log10_p, truth)
        else:  # p ~ 1e-3: a handful of the 4000 draws hit, the n^2 pairs see it
            assert est.diagnostics["hits"] < 10 and abs(est.log10_p - truth) < 0.5


def test_qld_declines_models_without_an_affine_readout_and_other_specs():
    dist = tg.IndependentTokens(peaked_probs(0.5, 0))
    with pytest.raises(tg.UnsupportedError, match="residual"):
        tg.estimate(TokenMLP(0), dist, tg.ClassIs(0), "qld", budget=1000)
    model = TokenTransformer(vocab=8, ctx=5)
    with pytest.raises(tg.UnsupportedError, match="ClassIs"):
        tg.estimate(model, dist, tg.OutputAbove(0, 1.0), "qld", budget=1000)
