"""LMDistribution: exact sequence probabilities of an autoregressive model, sampling, eos."""

import itertools
import math

import pytest
import torch
from torch import nn

import tailguard as tg
from tailguard.dists.lm import LMDistribution

VOCAB = 4


class BigramLM(nn.Module):
    """Next-token logits depend only on the last token: a table (vocab, vocab)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(torch.randn(VOCAB, VOCAB, generator=g))

    def forward(self, input_ids):
        return self.table[input_ids]  # (n, t, vocab)

    def exact(self, prompt_last: int, seq: tuple[int, ...], temperature: float) -> float:
        logp, prev = 0.0, prompt_last
        for tok in seq:
            logp += float(torch.log_softmax(self.table[prev].detach() / temperature, 0)[tok])
            prev = tok
        return logp


def all_sequences(length):
    return torch.tensor(list(itertools.product(range(VOCAB), repeat=length)))


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_log_prob_is_exact_and_normalised(temperature):
    lm = BigramLM()
    dist = LMDistribution(lm, torch.tensor([2, 1]), length=3, temperature=temperature)
    xs = all_sequences(3)
    with torch.no_grad():
        lp = dist.log_prob(xs)
    expected = torch.tensor([lm.exact(1, tuple(x.tolist()), temperature) for x in xs], dtype=torch.float64)
    assert torch.allclose(lp, expected, atol=1e-5)
    assert math.isclose(float(torch.logsumexp(lp, 0)), 0.0, abs_tol=1e-6)


def test_sample_frequencies_match_probabilities():
    lm = BigramLM(1)
    dist = LMDistribution(lm, torch.tensor([0]), length=2)
    x = dist.sample(20_000, torch.Generator().manual_seed(0))
    assert x.shape == (20_000, 2) and x.dtype == torch.long
    xs = all_sequences(2)
    with torch.no_grad():
        p = torch.exp(dist.log_prob(xs))
    counts = torch.stack([(x == s).all(1).sum() for s in xs]).double() / 20_000
    assert torch.allclose(counts, p, atol=0.015)


def test_eos_is_absorbing():
    lm = BigramLM(2)
    eos = 3
    dist = LMDistribution(lm, torch.tensor([0]), length=3, eos_id=eos)
    xs = all_sequences(3)
    with torch.no_grad():
        lp = dist.log_prob(xs)
    assert math.isclose(float(torch.logsumexp(lp, 0)), 0.0, abs_tol=1e-6)
    impossible = (xs[:, 0] == eos) & (xs[:, 1] != eos)
    assert torch.isinf(lp[impossible]).all()
    x = dist.sample(2000, torch.Generator().manual_seed(1))
    first_eos = x[:, 0] == eos
    assert (x[first_eos] == eos).all()


def test_log_prob_carries_gradients_to_the_lm():
    lm = BigramLM()
    dist = LMDistribution(lm, torch.tensor([1]), length=3)
    x = dist.sample(16, torch.Generator().manual_seed(2))
    dist.log_prob(x).sum().backward()
    assert lm.table.grad is not None and lm.table.grad.abs().sum() > 0


def test_hugging_face_model_with_kv_cache_agrees_with_teacher_forcing():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=11, hidden_size=16, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2,
                                      intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    lm = transformers.LlamaForCausalLM(config).eval()
    dist = LMDistribution(lm, torch.tensor([1, 5, 7]), length=4, temperature=0.8)
    # the same draws with and without the cache: a cached run must match a cacheless one
    cached = dist.sample(64, torch.Generator().manual_seed(3))
    plain = LMDistribution(lambda input_ids: lm(input_ids=input_ids).logits, torch.tensor([1, 5, 7]),
                           length=4, temperature=0.8).sample(64, torch.Generator().manual_seed(3))
    assert torch.equal(cached, plain)
    with torch.no_grad():
        assert torch.isfinite(dist.log_prob(cached)).all()


def test_estimate_runs_plain_sampling_on_lm_inputs():
    lm = BigramLM(3)
    dist = LMDistribution(lm, torch.tensor([0]), length=2)

    class LastTokenIsTwo(nn.Module):
        def forward(self, x):
            return nn.functional.one_hot(x[:, -1], VOCAB).float()

    est = tg.estimate(LastTokenIsTwo(), dist, tg.ClassIs(2), method="auto", budget=4000, seed=0)
    xs = all_sequences(2)
    with torch.no_grad():
        truth = float(torch.exp(dist.log_prob(xs))[xs[:, 1] == 2].sum())
    assert est.method == "mc"
    assert est.ci_log10[0] <= math.log10(truth) <= est.ci_log10[1]


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"prompt_ids": torch.tensor([], dtype=torch.long)}, tg.ShapeMismatchError),
        ({"prompt_ids": torch.tensor([0.5])}, tg.InvalidArgumentError),
        ({"length": 0}, tg.InvalidArgumentError),
        ({"temperature": 0.0}, tg.InvalidArgumentError),
        ({"temperature": float("nan")}, tg.InvalidArgumentError),
        ({"eos_id": -1}, tg.InvalidArgumentError),
    ],
)
def test_bad_arguments_are_named(kwargs, error):
    args = {"lm": BigramLM(), "prompt_ids": torch.tensor([0]), "length": 2, **kwargs}
    with pytest.raises(error):
        LMDistribution(**args)


def test_bad_inputs_to_log_prob_are_rejected():
    dist = LMDistribution(BigramLM(), torch.tensor([0]), length=2)
    with pytest.raises(tg.ShapeMismatchError):
        dist.log_prob(torch.zeros(3, 5, dtype=torch.long))
    with pytest.raises(tg.InvalidArgumentError):
        dist.log_prob(torch.zeros(3, 2))
