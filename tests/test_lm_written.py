"""The LM-written enumerable benchmark: exact truth by enumeration, the forecast's records."""

import math

import torch
from torch import nn

import tailguard as tg
from tailguard.bench import lm_written
from tailguard.bench.lm_enum import TokenCase

from .test_lm_dist import tiny_llama


class LastTwo(nn.Module):
    """Next-token logits from a fixed table of the message's last two tokens."""

    def __init__(self):
        super().__init__()
        self.table = torch.randn(lm_written.VOCAB, lm_written.VOCAB, lm_written.VOCAB,
                                 generator=torch.Generator().manual_seed(3))

    def forward(self, x):
        return self.table[x[:, -2], x[:, -1]]


def test_enumeration_is_exact_and_sums_to_one():
    dist = tg.LMDistribution(tiny_llama(lm_written.VOCAB), torch.tensor([1]), length=2, temperature=0.5)
    policy = LastTwo()
    exact = lm_written.exact_lm_target_log10(policy, dist)
    xs = lm_written.all_messages(2)
    assert xs.shape == (lm_written.VOCAB**2, 2)
    with torch.no_grad():
        mass, top = torch.exp(dist.log_prob(xs)), policy(xs).argmax(1)
    for t in range(lm_written.VOCAB):
        expected = float(mass[top == t].sum())
        assert (expected == 0 and math.isinf(float(exact[t]))) or math.isclose(
            10 ** float(exact[t]), expected, rel_tol=1e-6)
    assert math.isclose(float((10**exact).sum()), 1.0, rel_tol=1e-5)


def test_the_forecast_record_is_scored_like_the_estimates_but_covers_nothing():
    dist = tg.LMDistribution(tiny_llama(lm_written.VOCAB), torch.tensor([1]), length=2, batch_size=512)
    policy = LastTwo()
    case = TokenCase("tiny", policy, dist, lm_written.exact_lm_target_log10(policy, dist))
    target = int(case.exact_log10.argmin())
    record = lm_written.forecast_record(case, target, seed=0, budget=2048)
    assert record["method"] == lm_written.FORECAST and record["heuristic"] and not record["covered"]
    assert record["estimate_log10_p"] <= 0.0
    assert record["abs_log10_error"] == abs(record["estimate_log10_p"] - record["true_log10_p"])
