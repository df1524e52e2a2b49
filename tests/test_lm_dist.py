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


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sample_frequencies_match_probabilities(temperature):
    lm = BigramLM(1)
    dist = LMDistribution(lm, torch.tensor([0]), length=2, temperature=temperature)
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


def tiny_llama(vocab: int, seed: int = 0):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=4,
                                      intermediate_size=64, max_position_embeddings=32)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval()


def without_cache(lm):
    """The same LM behind a plain call: no KV cache, every position's logits."""
    return lambda input_ids: lm(input_ids=input_ids).logits


def test_hugging_face_model_is_normalised_and_its_cache_changes_nothing():
    lm = tiny_llama(vocab=6)
    prompt = torch.tensor([1, 5, 2])
    cached = LMDistribution(lm, prompt, length=3, temperature=0.7)
    plain = LMDistribution(without_cache(lm), prompt, length=3, temperature=0.7)
    xs = torch.cartesian_prod(*[torch.arange(6)] * 3)
    with torch.no_grad():
        lp = cached.log_prob(xs)
        assert torch.allclose(lp, plain.log_prob(xs), atol=1e-5)
    assert math.isclose(float(torch.logsumexp(lp, 0)), 0.0, abs_tol=1e-5)
    # the same draws with and without the cache; the prompt runs once, for one row
    shapes = []
    hook = lm.register_forward_pre_hook(lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)),
                                        with_kwargs=True)
    g = torch.Generator
    draws = cached.sample(64, g().manual_seed(3))
    hook.remove()
    assert shapes == [(1, 3), (64, 1), (64, 1)]
    assert torch.equal(draws, plain.sample(64, g().manual_seed(3)))


def test_hugging_face_samples_follow_log_prob():
    dist = LMDistribution(tiny_llama(vocab=5, seed=1), torch.tensor([0, 3]), length=2, temperature=0.6)
    x = dist.sample(4000, torch.Generator().manual_seed(4))
    xs = torch.cartesian_prod(torch.arange(5), torch.arange(5))
    with torch.no_grad():
        p = torch.exp(dist.log_prob(xs))
    freq = torch.stack([(x == s).all(1).sum() for s in xs]).double() / 4000
    assert torch.allclose(freq, p, atol=4 * math.sqrt(0.25 / 4000))


def test_hugging_face_gradients_through_the_shared_prompt_cache_are_exact():
    lm = tiny_llama(vocab=7)
    x = torch.tensor([[1, 2, 3], [4, 5, 6], [0, 0, 1]])
    grads = []
    for model in (lm, without_cache(lm)):
        lm.zero_grad()
        dist = LMDistribution(model, torch.tensor([3, 1, 4, 1]), length=3, temperature=1.3)
        dist.log_prob(x).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in lm.parameters()]))
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_token_ids_outside_the_vocabulary_are_rejected():
    dist = LMDistribution(tiny_llama(vocab=6), torch.tensor([1]), length=2)
    with pytest.raises(tg.InvalidArgumentError, match="x"):
        dist.log_prob(torch.tensor([[1, 6]]))
    with pytest.raises(tg.InvalidArgumentError, match="prompt_ids"):
        LMDistribution(tiny_llama(vocab=6), torch.tensor([9]), length=2)
    with pytest.raises(tg.InvalidArgumentError, match="eos_id"):
        LMDistribution(tiny_llama(vocab=6), torch.tensor([1]), length=2, eos_id=6)


@pytest.mark.parametrize("method", ["mc", "auto"])
def test_estimate_runs_plain_sampling_on_lm_inputs(method):
    lm = BigramLM(3)
    dist = LMDistribution(lm, torch.tensor([0]), length=2)

    class LastTokenIsTwo(nn.Module):
        def forward(self, x):
            return nn.functional.one_hot(x[:, -1], VOCAB).float()

    est = tg.estimate(LastTokenIsTwo(), dist, tg.ClassIs(2), method=method, budget=4000, seed=0)
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


def test_peft_lora_model_samples_with_its_cache_and_trains_only_the_adapters():
    peft = pytest.importorskip("peft")
    base = tiny_llama(vocab=6)
    lora = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"],
                                                     init_lora_weights=False))
    prompt = torch.tensor([1, 2])
    dist = LMDistribution(lora, prompt, length=3)
    shapes = []
    hook = base.register_forward_pre_hook(
        lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    x = dist.sample(32, torch.Generator().manual_seed(5))
    hook.remove()
    assert shapes == [(1, 2), (32, 1), (32, 1)]  # the adapter passes the cache through
    plain = LMDistribution(without_cache(lora), prompt, length=3)
    assert torch.equal(x, plain.sample(32, torch.Generator().manual_seed(5)))
    dist.log_prob(x).sum().backward()
    trained = {n for n, p in lora.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained and all("lora_" in n for n in trained)
