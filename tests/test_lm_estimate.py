"""Rare-event estimation on an LM-written D: lm-is, splitting's suffix move, auto's LM dispatch, costs."""

import itertools
import math
import warnings

import pytest
import torch
from torch import nn

import tailguard as tg
from tailguard.dists.lm import LMDistribution, cache_keyword

VOCAB, LENGTH = 5, 4


class BigramLM(nn.Module):
    def __init__(self, seed: int = 0, scale: float = 2.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(scale * torch.randn(VOCAB, VOCAB, generator=g))

    def forward(self, input_ids):
        return self.table[input_ids]


class CountOf(nn.Module):
    """Class 1 wins by (number of ``token`` in the message) - ``needed`` + 0.5: a graded rare event."""

    def __init__(self, token: int, needed: int):
        super().__init__()
        self.token, self.needed = token, needed

    def forward(self, x):
        margin = (x == self.token).double().sum(1) - self.needed + 0.5
        return torch.stack([torch.zeros_like(margin), margin], dim=1)


def all_messages():
    return torch.tensor(list(itertools.product(range(VOCAB), repeat=LENGTH)))


def exact_log10(dist, model):
    xs = all_messages()
    with torch.no_grad():
        mass = torch.exp(dist.log_prob(xs))[model(xs).argmax(1) == 1].sum()
    return math.log10(float(mass))


@pytest.fixture
def users():
    return LMDistribution(BigramLM(0), torch.tensor([0]), length=LENGTH, batch_size=512)


def test_the_suffix_move_leaves_d_invariant(users):
    x = users.sample(20_000, torch.Generator().manual_seed(0))
    moved = users.propose(x, torch.full((x.shape[0],), 0.3), torch.Generator().manual_seed(1))
    assert (moved != x).any(1).float().mean() > 0.3
    with torch.no_grad():
        p = torch.exp(users.log_prob(all_messages()))
    index = (moved * VOCAB ** torch.arange(LENGTH - 1, -1, -1)).sum(1)
    freq = torch.bincount(index, minlength=VOCAB**LENGTH).double() / x.shape[0]
    assert float((freq - p).abs().max()) < 4 * math.sqrt(float(p.max()) / x.shape[0])


def test_lm_calls_are_counted_and_the_budget_holds_both(users):
    before = users.lm_calls
    x = users.sample(100, torch.Generator().manual_seed(0))
    users.log_prob(x)
    assert users.lm_calls - before == 200
    plain = tg.estimate(CountOf(4, 1), users, tg.ClassIs(1), method="mc", budget=1000, seed=0)
    assert plain.n_model_calls == 1000 and plain.diagnostics["draws"] == 500


@pytest.mark.parametrize("method", ["lm-is", "auto"])
def test_rare_event_estimates_match_enumeration(users, method):
    model = CountOf(1, 4)
    truth = exact_log10(users, model)
    assert truth < -5  # plain sampling at this budget would mostly see nothing
    est = tg.estimate(model, users, tg.ClassIs(1), method=method, budget=2**13, seed=0)
    assert est.n_model_calls <= 2**13
    assert abs(est.log10_p - truth) < 0.1, est
    assert est.ci_log10[0] <= truth <= est.ci_log10[1]
    if method == "auto":
        assert est.method == "lm-is"


def test_splitting_runs_on_an_lm_written_d_with_its_suffix_move(users):
    model = CountOf(2, 3)
    truth = exact_log10(users, model)
    est = tg.estimate(model, users, tg.ClassIs(1), method="splitting", budget=2**14, seed=0)
    assert est.n_model_calls <= 2**14
    assert abs(est.log10_p - truth) < 0.5


def test_no_catastrophe_keeps_plain_samplings_exact_bound(users):
    impossible = CountOf(4, LENGTH + 1)
    auto = tg.estimate(impossible, users, tg.ClassIs(1), method="auto", budget=2**13, seed=0)
    plain = tg.estimate(impossible, users, tg.ClassIs(1), method="mc", budget=2**13, seed=0)
    assert math.isinf(auto.log10_p) and math.isinf(plain.log10_p)
    # every draw of D is pooled into one exact bound and a message D writes again costs no policy
    # call: on this D (625 messages) that outweighs the search's steered draws
    assert auto.diagnostics["draws"] > plain.diagnostics["draws"]
    assert auto.ci_log10[1] <= plain.ci_log10[1]
    assert auto.n_model_calls <= 2**13


def test_auto_plain_draws_score_each_distinct_message_once(users):
    from tailguard.estimators.lm_auto import PlainDraws
    from tailguard.oracle import ScoreOracle

    oracle = ScoreOracle(CountOf(4, 2), users, tg.ClassIs(1))
    plain = PlainDraws(chance=False)
    before = users.lm_calls
    plain.draw(oracle, 4000, torch.Generator().manual_seed(0))
    assert oracle.n_calls == len(plain.known) < plain.draws  # repeats were not scored again
    assert oracle.n_calls + users.lm_calls - before <= 4000
    x = torch.tensor(list(plain.known))
    with torch.no_grad():
        hit = CountOf(4, 2)(x).argmax(1) == 1
    assert [t == 0.0 for t in plain.known.values()] == hit.tolist()


class CountLogits(nn.Module):
    """Two-token "replies": token 1's logit is ``slope`` * (count of ``token`` - ``needed``)."""

    def __init__(self, token: int, needed: int, slope: float):
        super().__init__()
        self.token, self.needed, self.slope = token, needed, slope

    def forward(self, x):
        margin = self.slope * ((x == self.token).double().sum(1) - self.needed)
        return torch.stack([torch.zeros_like(margin), margin], dim=1)


def exact_chance_log10(dist, model, spec):
    xs = all_messages()
    with torch.no_grad():
        return math.log10(float((torch.exp(dist.log_prob(xs) + spec.log_chance(xs, model(xs)))).sum()))


@pytest.mark.parametrize("method", ["auto", "lm-is"])
def test_sampled_reply_chances_are_averaged_and_match_enumeration(users, method):
    from tailguard.lm import SampledTokenIn

    model, spec = CountLogits(1, 4, 3.0), SampledTokenIn([1])
    truth = exact_chance_log10(users, model, spec)
    assert -5 < truth < -3  # most of it on the rare messages of four 1s
    est = tg.estimate(model, users, spec, method=method, budget=2**12, seed=0)
    assert est.n_model_calls <= 2**12
    assert abs(est.log10_p - truth) < 0.2, est
    assert est.ci_log10[0] <= truth <= est.ci_log10[1]


def test_plain_sampling_of_sampled_replies_estimates_the_same_probability(users):
    from tailguard.lm import SampledTokenIn

    model, spec = CountLogits(1, 2, 3.0), SampledTokenIn([1], seed=5)
    truth = exact_chance_log10(users, model, spec)
    plain = tg.estimate(model, users, spec, method="mc", budget=2**15, seed=0)
    assert plain.diagnostics["hits"] > 50
    assert plain.ci_log10[0] <= truth <= plain.ci_log10[1]


def test_mean_chance_interval_holds_for_heavy_terms():
    from tailguard.estimators.lm_is import mean_chance_outcome

    g = torch.Generator().manual_seed(0)
    covered, proven = 0, 0
    for _ in range(200):
        # terms in [0, 10]: mostly tiny, a 10 now and then (mean 0.0109)
        terms = torch.where(torch.rand(400, generator=g) < 1e-3, 10.0, 1e-3).double()
        out = mean_chance_outcome(torch.log(terms), math.log(10.0), 0.95, {})
        proven += out.diagnostics["interval"] == "empirical Bernstein"
        covered += out.ci[0] <= math.log(0.01 + 1e-3 * 0.999) <= out.ci[1]
    assert proven == 200 and covered >= 195


def test_lm_is_refuses_what_it_cannot_use(users):
    with pytest.raises(tg.UnsupportedError, match="LMDistribution"):
        tg.estimate(CountOf(4, 1), tg.Gaussian(torch.zeros(4)), tg.ClassIs(1), method="lm-is", budget=4096)
    black_box = tg.Predicate(lambda x, y: (x == 4).all(1))
    with pytest.raises(tg.UnsupportedError, match="graded score"):
        tg.estimate(CountOf(4, 1), users, black_box, method="lm-is", budget=4096)
    est = tg.estimate(CountOf(4, 1), users, black_box, budget=2000, seed=0)
    assert est.method == "mc" and any("lm-is was refused" in w for w in est.warnings)
    with pytest.raises(tg.InvalidArgumentError, match="defensive"):
        tg.estimate(CountOf(4, 1), users, tg.ClassIs(1), method="lm-is", budget=4096, defensive=1.5)


def test_hugging_face_models_get_their_cache_without_deprecated_keywords():
    from .test_lm_dist import tiny_llama

    lm = tiny_llama(vocab=6)
    dist = LMDistribution(lm, torch.tensor([1, 2]), length=3)
    shapes = []
    hook = lm.register_forward_pre_hook(lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)),
                                        with_kwargs=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*")
        x = dist.sample(8, torch.Generator().manual_seed(0))
        moved = dist.propose(x, torch.full((8,), 0.5), torch.Generator().manual_seed(1))
    hook.remove()
    assert shapes[:3] == [(1, 2), (8, 1), (8, 1)]  # the prompt once, then one token per step
    assert cache_keyword(lm) in {"cache", "past_key_values"} and moved.shape == x.shape
