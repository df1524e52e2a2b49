"""Token inputs: IndependentTokens, its Gibbs move, and estimators checked by exhaustive enumeration.

A tiny token model (vocab 8, context 5: 32,768 inputs) is small enough that the
exact P[argmax = t] = sum over all inputs of prod_i p_i(x_i) * 1[argmax = t] is
one batched forward pass, so every estimate below is judged against the truth.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

import tailguard as tg
from tailguard.estimators.auto import choose_method
from tailguard.estimators.base import build

VOCAB, CTX = 8, 5


class TokenMLP(nn.Module):
    """Embedding (as one_hot @ weight, so ids and one-hot floats both work), concat, 2-layer MLP.

    ``out_bias`` shifts the logits; a very negative entry makes that token impossible.
    """

    def __init__(self, seed, vocab=VOCAB, ctx=CTX, dim=8, hidden=32):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.vocab = vocab
        self.embed = nn.Parameter(torch.randn(vocab, dim, generator=g))
        self.w1 = nn.Parameter(torch.randn(ctx * dim, hidden, generator=g) / math.sqrt(ctx * dim))
        self.w2 = nn.Parameter(torch.randn(hidden, vocab, generator=g) * 2 / math.sqrt(hidden))
        self.out_bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, x):
        if not x.is_floating_point():
            x = nn.functional.one_hot(x, self.vocab).to(self.embed.dtype)
        h = (x @ self.embed).flatten(1)
        return torch.relu(h @ self.w1) @ self.w2 + self.out_bias


class BlackBox(nn.Module):
    """Indexes a tensor with its ids: neither one-hot inputs nor an nn.Embedding reach its embedding."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(VOCAB, 4))
        self.head = nn.Linear(4 * CTX, VOCAB)

    def forward(self, x):
        return self.head(self.table[x].flatten(1))


def peaked_probs(concentration, seed, ctx=CTX, vocab=VOCAB):
    """Rows drawn from a symmetric Dirichlet (small concentration: a few likely tokens per position)."""
    g = torch.Generator().manual_seed(seed)
    shape = torch.full((ctx, vocab), concentration, dtype=torch.float64)
    gammas = torch._standard_gamma(shape, generator=g)
    return gammas / gammas.sum(1, keepdim=True)


def all_inputs(ctx=CTX, vocab=VOCAB):
    return torch.cartesian_prod(*[torch.arange(vocab)] * ctx)


def exact_log10(model, dist, target):
    """log10 P[argmax = target] by enumerating every input."""
    x = all_inputs(dist.ctx, dist.vocab)
    with torch.no_grad():
        hit = model(x).argmax(1) == target
    if not hit.any():
        return -math.inf
    return float(torch.logsumexp(dist.log_prob(x)[hit], 0)) / math.log(10)


def case(model_seed, probs_seed, concentration, target):
    model = TokenMLP(model_seed)
    dist = tg.IndependentTokens(peaked_probs(concentration, probs_seed))
    return model, dist, tg.ClassIs(target), exact_log10(model, dist, target)


# --- the distribution -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "probs, error",
    [
        (torch.tensor([[0.5, 0.6]]), tg.InvalidArgumentError),  # row sums to 1.1
        (torch.tensor([[1.2, -0.2]]), tg.InvalidArgumentError),  # negative entry
        (torch.tensor([[float("nan"), 1.0]]), tg.InvalidArgumentError),
        (torch.tensor([0.5, 0.5]), tg.ShapeMismatchError),  # 1-D
        (torch.full((2, 2, 2), 0.5), tg.ShapeMismatchError),  # 3-D
    ],
)
def test_bad_probs_are_rejected_naming_the_argument(probs, error):
    with pytest.raises(error, match="probs"):
        tg.IndependentTokens(probs)


def test_sample_and_exact_log_prob():
    probs = torch.tensor([[0.7, 0.3, 0.0], [0.1, 0.2, 0.7]], dtype=torch.float64)
    dist = tg.IndependentTokens(probs)
    x = dist.sample(200_000, torch.Generator().manual_seed(0))
    assert x.dtype == torch.long and x.shape == (200_000, 2) and dist.is_discrete
    freq = torch.stack([torch.bincount(x[:, i], minlength=3) for i in range(2)]).double() / x.shape[0]
    assert torch.allclose(freq, probs, atol=0.005)
    ids = torch.tensor([[0, 2], [1, 0], [2, 1]])
    expected = torch.tensor([math.log(0.7 * 0.7), math.log(0.3 * 0.1), -math.inf], dtype=torch.float64)
    assert torch.equal(dist.log_prob(ids), expected)
    assert not dist.has_moments
    assert build("moments", {}).unsupported_reason(TokenMLP(0), dist, tg.ClassIs(0)) is not None


@pytest.mark.parametrize(
    "x, error",
    [
        (torch.zeros(4, 3, dtype=torch.long), tg.ShapeMismatchError),
        (torch.zeros(4, 2), tg.InvalidArgumentError),  # float ids
        (torch.tensor([[0, 3]]), tg.InvalidArgumentError),  # token out of range
        (torch.tensor([[-1, 0]]), tg.InvalidArgumentError),
    ],
)
def test_log_prob_checks_its_input(x, error):
    dist = tg.IndependentTokens(torch.full((2, 3), 1 / 3))
    with pytest.raises(error, match="x"):
        dist.log_prob(x)


def test_gibbs_move_is_reversible_by_enumeration():
    """Empirical kernel from every state of a 3 x 3 space: detailed balance p(x)K(x,y) = p(y)K(y,x)."""
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.05, 0.9, 0.05]], dtype=torch.float64)
    dist = tg.IndependentTokens(probs)
    states = all_inputs(3, 3)
    reps = 20_000
    x = states.repeat_interleave(reps, 0)
    step = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(1)).double()
    moved = dist.propose(x, step, torch.Generator().manual_seed(2))
    code = lambda t: (t * torch.tensor([9, 3, 1])).sum(1)  # noqa: E731
    counts = torch.zeros(27, 27, dtype=torch.float64)
    counts.index_put_((code(x), code(moved)), torch.ones(x.shape[0], dtype=torch.float64), accumulate=True)
    kernel = counts / reps
    p = torch.exp(dist.log_prob(states))
    flow = p[:, None] * kernel
    assert torch.allclose(flow, flow.T, atol=3e-3)
    assert torch.allclose(p @ kernel, p, atol=3e-3)


def test_gibbs_move_with_a_tiny_step_changes_at_most_one_position():
    dist = tg.IndependentTokens(torch.full((CTX, VOCAB), 1 / VOCAB))
    x = dist.sample(5000, torch.Generator().manual_seed(0))
    moved = dist.propose(x, torch.full((5000,), 1e-9), torch.Generator().manual_seed(1))
    changed = (moved != x).sum(1)
    assert changed.max() == 1 and changed.float().mean() > 0.8  # 7/8 of redraws differ


def test_gibbs_move_leaves_a_level_set_invariant():
    """What splitting relies on: propose, keep iff still in A; from exact p|A, stay at p|A."""
    model, dist, spec, _ = case(0, 1, 0.5, 2)
    x = all_inputs()
    with torch.no_grad():
        s = spec.score(x, model(x)).double()
    in_set = s >= torch.quantile(s, 0.9)
    mass = torch.exp(dist.log_prob(x)) * in_set
    g = torch.Generator().manual_seed(3)
    chain = x[torch.multinomial(mass / mass.sum(), 100_000, replacement=True, generator=g)]
    lookup = torch.zeros(VOCAB**CTX, dtype=torch.bool)
    flat = lambda t: (t * VOCAB ** torch.arange(CTX - 1, -1, -1)).sum(1)  # noqa: E731
    lookup[flat(x)] = in_set
    start = chain
    for _ in range(5):
        proposal = dist.propose(chain, torch.full((chain.shape[0],), 0.3), g)
        chain = torch.where(lookup[flat(proposal)][:, None], proposal, chain)
    assert (chain != start).any(1).double().mean() > 0.2  # the chains do move
    exact = torch.stack([(mass[:, None] * (x[:, i, None] == torch.arange(VOCAB))).sum(0) for i in range(CTX)])
    got = torch.stack([torch.bincount(chain[:, i], minlength=VOCAB) for i in range(CTX)]).double()
    assert torch.allclose(got / chain.shape[0], exact / mass.sum(), atol=0.01)


# --- estimators against the exact answer ------------------------------------------------------
BUDGET = 2**16
#: (model seed, probs seed, Dirichlet concentration, target): exact p from 1e-9 to 1e-5
RARE = [(0, 1, 0.1, 3), (0, 1, 0.1, 5), (2, 2, 0.1, 4), (2, 2, 0.1, 6)]
#: targets near 2e-5 that splitting's local moves can climb to (see test below)
CLIMBABLE = [(0, 0, 0.5, 5), (5, 2, 0.5, 1)]


def test_class_is_scores_token_logits():
    model, dist, spec, _ = case(0, 1, 0.1, 3)
    x = dist.sample(1000, torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1000, VOCAB)
    assert torch.equal(spec.score(x, y) > 0, y.argmax(1) == 3)


def test_plain_sampling_matches_the_exact_answer_for_a_common_token():
    model, dist, spec, truth = case(0, 1, 0.1, 4)
    assert -1.0 < truth < 0.0
    est = tg.estimate(model, dist, spec, "mc", budget=BUDGET, seed=0)
    assert est.ci_log10[0] <= truth <= est.ci_log10[1]
    assert abs(est.log10_p - truth) < 0.02


@pytest.mark.parametrize("spec_args", RARE, ids=lambda a: f"m{a[0]}p{a[1]}t{a[3]}")
def test_itgis_matches_exhaustive_enumeration(spec_args):
    model, dist, spec, truth = case(*spec_args)
    assert -9.0 <= truth <= -5.0
    runs = [tg.estimate(model, dist, spec, "itgis", budget=BUDGET, seed=seed) for seed in range(3)]
    errors = [abs(e.log10_p - truth) for e in runs]
    assert np.median(errors) < 0.3, errors
    assert sum(e.ci_log10[0] <= truth <= e.ci_log10[1] for e in runs) >= 2
    assert all(e.n_model_calls == BUDGET and e.diagnostics["hits"] > 0 for e in runs)


@pytest.mark.parametrize("spec_args", CLIMBABLE, ids=lambda a: f"m{a[0]}p{a[1]}t{a[3]}")
def test_splitting_with_gibbs_moves_matches_exhaustive_enumeration(spec_args):
    model, dist, spec, truth = case(*spec_args)
    assert -5.0 <= truth <= -4.0
    runs = [tg.estimate(model, dist, spec, "splitting", budget=BUDGET, seed=seed) for seed in range(4)]
    errors = [abs(e.log10_p - truth) for e in runs]
    assert np.median(errors) < 0.3, errors
    assert sum(e.ci_log10[0] <= truth <= e.ci_log10[1] for e in runs) >= 3
    assert all(e.n_model_calls <= BUDGET for e in runs)


def test_auto_uses_tsis_on_tokens():
    model, dist, spec, truth = case(0, 0, 0.5, 5)
    assert choose_method(model, dist, spec, BUDGET) == "tsis"
    est = tg.estimate(model, dist, spec, "auto", budget=BUDGET, seed=0)
    assert est.method == "tsis" and est.n_model_calls <= BUDGET
    assert abs(est.log10_p - truth) < 0.5


@pytest.mark.parametrize("method", ["itgis", "splitting", "mc"])
def test_impossible_token_gives_minus_inf_with_a_finite_upper_bound(method):
    model, dist, spec, _ = case(0, 1, 0.1, 3)
    with torch.no_grad():
        model.out_bias[3] = -1e3
    assert exact_log10(model, dist, 3) == -math.inf
    est = tg.estimate(model, dist, spec, method, budget=4096, seed=0)
    assert est.log10_p == -math.inf
    assert math.isfinite(est.ci_log10[1]) and est.ci_log10[1] < 0.0
    assert tg.Estimate.from_json(est.to_json()) == est


def test_itgis_spends_the_budget_exactly_and_repeats_itself():
    model, dist, spec, _ = case(2, 2, 0.1, 4)
    a = tg.estimate(model, dist, spec, "itgis", budget=1000, seed=5)
    b = tg.estimate(model, dist, spec, "itgis", budget=1000, seed=5)
    assert a.n_model_calls == 1000 and a.diagnostics["draws"] == 1000
    assert (a.log10_p, a.ci_log10) == (b.log10_p, b.ci_log10)
    assert tg.Estimate.from_json(a.to_json()) == a


def test_itgis_declines_black_box_models_and_other_inputs():
    dist = tg.IndependentTokens(peaked_probs(0.5, 0))
    reason = build("itgis", {}).unsupported_reason(BlackBox(), dist, tg.ClassIs(0))
    assert reason is not None and "one-hot" in reason and "nn.Embedding" in reason
    with pytest.raises(tg.UnsupportedError, match="one-hot"):
        tg.estimate(BlackBox(), dist, tg.ClassIs(0), "itgis", budget=1000)
    itgis = build("itgis", {})
    gaussian = tg.Gaussian(torch.zeros(3))
    assert "IndependentTokens" in itgis.unsupported_reason(nn.Linear(3, 2), gaussian, tg.ClassIs(0))
    predicate = tg.Predicate(lambda x, y: y.argmax(1) == 0)
    assert itgis.unsupported_reason(TokenMLP(0), dist, predicate) is not None
