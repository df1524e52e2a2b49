"""Importance sampling of an LM-written D with another LM distribution as proposal."""

import itertools
import math

import pytest
import torch
from torch import nn

import tailguard as tg
from tailguard.lm.proposal import estimate_with_proposal

VOCAB = 5


class BigramLM(nn.Module):
    def __init__(self, seed: int, scale: float = 1.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(scale * torch.randn(VOCAB, VOCAB, generator=g))

    def forward(self, input_ids):
        return self.table[input_ids]


class AllTokensAre(nn.Module):
    """Class 1 iff every token of the message equals ``token``: a rare event under D."""

    def __init__(self, token: int):
        super().__init__()
        self.token = token

    def forward(self, x):
        all_same = (x == self.token).all(1).float()
        return torch.stack([1 - all_same, all_same], dim=1)


def exact(dist, model):
    xs = torch.tensor(list(itertools.product(range(VOCAB), repeat=dist.length)))
    with torch.no_grad():
        return float(torch.exp(dist.log_prob(xs))[model(xs).argmax(1) == 1].sum())


def test_a_proposal_that_writes_the_event_often_gives_a_tight_correct_estimate():
    target = tg.LMDistribution(BigramLM(0, scale=2.0), torch.tensor([0]), length=4)
    model = AllTokensAre(3)
    truth = exact(target, model)
    # the "adversary" strongly prefers token 3 after anything
    adversary = BigramLM(1)
    with torch.no_grad():
        adversary.table[:, 3] += 4.0
    proposal = tg.LMDistribution(adversary, torch.tensor([0]), length=4)
    est = estimate_with_proposal(model, target, proposal, tg.ClassIs(1), n=4000, seed=0)
    assert est.n_model_calls == 4000
    assert est.ci_log10[0] <= math.log10(truth) <= est.ci_log10[1]
    assert abs(est.log10_p - math.log10(truth)) < 0.1
    assert est.diagnostics["ess"] > 100
    plain = tg.estimate(model, target, tg.ClassIs(1), method="mc", budget=4000, seed=0)
    assert plain.ci_log10[1] - plain.ci_log10[0] > est.ci_log10[1] - est.ci_log10[0]


def test_no_hit_gives_a_valid_upper_bound():
    target = tg.LMDistribution(BigramLM(0), torch.tensor([0]), length=3)
    model = AllTokensAre(4)
    est = estimate_with_proposal(model, target, target, tg.ClassIs(1), n=50, seed=1)
    truth = exact(target, model)
    if est.log10_p == -math.inf:
        assert est.ci_log10[1] >= math.log10(truth)
    assert est.ci_log10[0] <= math.log10(truth) <= est.ci_log10[1]


def test_mismatched_lengths_and_bad_shares_are_rejected():
    a = tg.LMDistribution(BigramLM(0), torch.tensor([0]), length=3)
    b = tg.LMDistribution(BigramLM(0), torch.tensor([0]), length=4)
    with pytest.raises(tg.ShapeMismatchError):
        estimate_with_proposal(AllTokensAre(1), a, b, tg.ClassIs(1), n=10)
    with pytest.raises(tg.InvalidArgumentError):
        estimate_with_proposal(AllTokensAre(1), a, a, tg.ClassIs(1), n=10, defensive_share=0.0)


class LastTokenPolicy(nn.Module):
    """Next-token logits from a fixed table indexed by the message's last token."""

    def __init__(self):
        super().__init__()
        self.table = torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(7)) * 3

    def forward(self, x):
        return self.table[x[:, -1]]


def test_expected_forbidden_mass_matches_enumeration_with_and_without_a_proposal():
    from tailguard.lm.proposal import expected_forbidden_mass, forbidden_mass

    target = tg.LMDistribution(BigramLM(0, scale=2.0), torch.tensor([0]), length=3)
    policy, forbidden = LastTokenPolicy(), [2]
    xs = torch.tensor(list(itertools.product(range(VOCAB), repeat=3)))
    with torch.no_grad():
        truth = float((torch.exp(target.log_prob(xs)) * forbidden_mass(policy(xs), forbidden)).sum())
    proposal = tg.LMDistribution(BigramLM(3), torch.tensor([0]), length=3)
    plain = expected_forbidden_mass(policy, target, forbidden, n=3000, seed=0)
    via = expected_forbidden_mass(policy, target, forbidden, n=3000, proposal=proposal, seed=0)
    for est in (plain, via):
        assert est.ci_log10[0] <= math.log10(truth) <= est.ci_log10[1], (est, truth)
        assert abs(est.log10_p - math.log10(truth)) < 0.1
    assert via.method == "lm-proposal-is" and 0 < via.diagnostics["ess"] <= 3000


def test_no_hit_bound_is_the_tighter_of_the_plain_and_the_mixture_bound():
    from tailguard._logspace import binomial_log_ci

    target = tg.LMDistribution(BigramLM(0), torch.tensor([0]), length=3)
    est = estimate_with_proposal(AllTokensAre(VOCAB), target, target, tg.ClassIs(1), n=600, seed=2)  # never
    assert est.log10_p == -math.inf
    plain = est.diagnostics["plain_draws"]
    assert 20 < plain < 120  # about a tenth of the draws are D's own
    bounds = [binomial_log_ci(0, 600, 0.95)[1] - math.log(0.1), binomial_log_ci(0, plain, 0.95)[1]]
    assert est.ci_log10[1] == pytest.approx(min(bounds) / math.log(10))
