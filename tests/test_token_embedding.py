"""Token models that look their ids up in an nn.Embedding (Hugging Face models among them), and black boxes.

The gradient estimators reach the one-hot gradient through the embedding
(``estimators._token_grad``); tsis also runs with no gradient at all. Every estimate
is judged against exhaustive enumeration of a small case.
"""

import math

import pytest
import torch
from torch import nn

import tailguard as tg
from tailguard.estimators._token_grad import (
    EmbeddingRoute,
    EmbeddingSite,
    OneHotRoute,
    embedding_route,
    gradient_route,
    one_hot_route,
)
from tailguard.estimators._trigger_search import ScoreEffects
from tailguard.estimators.auto import choose_method
from tailguard.lm import NextTokenLogits
from tailguard.oracle import ScoreOracle

from .test_tokens import CTX, VOCAB, exact_log10, peaked_probs

#: (model seed, probs seed, Dirichlet concentration, target) of LookupMLP: exact p = 1.8e-7
LOOKUP_CASE = (0, 2, 0.1, 1)
HF_CTX = 4


class LookupMLP(nn.Module):
    """Token and position nn.Embedding lookups, concatenated, then a two-layer MLP to the logits.

    ``one_hot_too``: one-hot float inputs also work (as one_hot @ embed.weight), so both
    gradient routes apply and can be compared.
    """

    def __init__(self, seed, one_hot_too=False, dim=8, hidden=32):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.one_hot_too = one_hot_too
        self.embed = nn.Embedding(VOCAB, dim)
        self.position = nn.Embedding(CTX, dim)
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(VOCAB, dim, generator=g))
            self.position.weight.copy_(0.3 * torch.randn(CTX, dim, generator=g))
        self.w1 = nn.Parameter(torch.randn(CTX * dim, hidden, generator=g) / math.sqrt(CTX * dim))
        self.w2 = nn.Parameter(torch.randn(hidden, VOCAB, generator=g) * 2 / math.sqrt(hidden))

    def head(self, e):
        """Token embeddings (n, ctx, dim) -> logits (n, vocab)."""
        positions = self.position(torch.arange(CTX).expand(e.shape[0], -1))
        return torch.relu((e + positions).flatten(1) @ self.w1) @ self.w2

    def forward(self, x):
        if self.one_hot_too and x.is_floating_point():
            return self.head(x @ self.embed.weight)
        return self.head(self.embed(x))


class Opaque(nn.Module):
    """A LookupMLP's function with the lookup done by indexing the weight: no route to a gradient."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner.head(self.inner.embed.weight[x])


def lookup_case(model_seed, probs_seed, concentration, target):
    model = LookupMLP(model_seed)
    dist = tg.IndependentTokens(peaked_probs(concentration, probs_seed))
    return model, dist, tg.ClassIs(target), exact_log10(model, dist, target)


@pytest.fixture(scope="module")
def tiny_llama():
    """A randomly initialised one-layer Llama over 8 tokens behind NextTokenLogits, with prefix and suffix."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=16, initializer_range=0.5)
    lm = transformers.LlamaForCausalLM(config).eval()
    return lm, NextTokenLogits(lm, torch.tensor([1, 2]), torch.tensor([3]))


# --- the gradient -----------------------------------------------------------------------------
def test_the_embedding_gradient_is_the_one_hot_gradient():
    model = LookupMLP(0, one_hot_too=True)
    dist = tg.IndependentTokens(peaked_probs(0.1, 2))
    assert isinstance(one_hot_route(model, dist), OneHotRoute)
    route = embedding_route(model, dist)
    assert route == EmbeddingRoute((EmbeddingSite(model.embed, 0),), VOCAB)  # not the position lookup
    oracle = ScoreOracle(model, dist, tg.ClassIs(1))
    x = dist.sample(64, torch.Generator().manual_seed(0))
    s_hot, g_hot = OneHotRoute().scores_and_gradient(oracle, x)
    s_emb, g_emb = route.scores_and_gradient(oracle, x)
    assert torch.equal(s_hot, s_emb) and torch.equal(g_hot, g_emb)
    assert g_emb.shape == (64, CTX, VOCAB) and g_emb.abs().max() > 0.1
    assert oracle.n_calls == 128


def test_a_hugging_face_gradient_matches_autograd_through_inputs_embeds(tiny_llama):
    lm, model = tiny_llama
    dist = tg.IndependentTokens(peaked_probs(0.3, 0, ctx=HF_CTX))
    route = gradient_route(model, dist)
    assert isinstance(route, EmbeddingRoute)
    assert [site.module for site in route.sites] == [lm.get_input_embeddings()]
    spec = tg.ClassIs(1)
    x = dist.sample(6, torch.Generator().manual_seed(0))
    s, g = route.scores_and_gradient(ScoreOracle(model, dist, spec), x)
    table = lm.get_input_embeddings().weight
    one_hot = nn.functional.one_hot(x, VOCAB).float().requires_grad_(True)
    around = [table[ids].expand(x.shape[0], -1, -1) for ids in (model.prefix_ids, model.suffix_ids)]
    logits = lm(inputs_embeds=torch.cat([around[0], one_hot @ table, around[1]], 1)).logits[:, -1]
    expected = spec.score(x, logits)
    (grad,) = torch.autograd.grad(expected.sum(), one_hot)
    assert torch.allclose(s, expected.double().detach(), atol=1e-5)
    assert torch.allclose(g, grad.double(), atol=1e-5) and g.abs().max() > 0.1


def test_hooks_are_removed_even_when_the_model_fails():
    model = LookupMLP(0)
    dist = tg.IndependentTokens(peaked_probs(0.1, 2))
    route = embedding_route(model, dist)
    oracle = ScoreOracle(model, dist, tg.ClassIs(1))
    route.scores_and_gradient(oracle, dist.sample(4, torch.Generator().manual_seed(0)))
    assert not model.embed._forward_hooks and not model.position._forward_hooks
    model.w1 = nn.Parameter(torch.zeros(3, 3))  # every forward now fails
    with pytest.raises(tg.ShapeMismatchError):
        route.scores_and_gradient(oracle, dist.sample(4, torch.Generator().manual_seed(0)))
    assert not model.embed._forward_hooks
    assert "failed" in embedding_route(model, dist) and not model.embed._forward_hooks


def test_no_route_for_a_black_box():
    dist = tg.IndependentTokens(peaked_probs(0.1, 2))
    reason = gradient_route(Opaque(LookupMLP(0)), dist)
    assert isinstance(reason, str) and "one-hot" in reason and "nn.Embedding" in reason


# --- estimators against the exact answer ------------------------------------------------------
@pytest.mark.parametrize("method, budget, tolerance", [("tsis", 2**13, 0.05), ("itgis", 2**14, 0.3),
                                                       ("mhis", 2**14, 1.0)])
def test_an_nn_embedding_model_through_the_gradient_estimators(method, budget, tolerance):
    model, dist, spec, truth = lookup_case(*LOOKUP_CASE)
    assert -7.0 < truth < -6.5
    est = tg.estimate(model, dist, spec, method, budget=budget, seed=0)
    assert math.isfinite(est.log10_p) and abs(est.log10_p - truth) < tolerance, (est.log10_p, truth)
    assert est.n_model_calls <= budget
    assert est.diagnostics.get("gradient_route", est.diagnostics.get("guide")) in ("embedding",
                                                                                  "gradient (embedding)")


@pytest.mark.parametrize("method, concentration, probs_seed, target, budget, tolerance", [
    ("tsis", 0.1, 0, 0, 2**12, 0.05),  # exact p 1.0e-7
    ("itgis", 0.1, 1, 1, 2**13, 0.6),  # 6.6e-8
    ("mhis", 0.5, 0, 2, 2**13, 0.6),  # 1.7e-2: MHIS is far from the answer at rarer targets here
])
def test_a_tiny_hugging_face_model_through_the_gradient_estimators(tiny_llama, method, concentration,
                                                                   probs_seed, target, budget, tolerance):
    _, model = tiny_llama
    dist = tg.IndependentTokens(peaked_probs(concentration, probs_seed, ctx=HF_CTX))
    truth = exact_log10(model, dist, target)
    est = tg.estimate(model, dist, tg.ClassIs(target), method, budget=budget, seed=0)
    assert math.isfinite(est.log10_p) and abs(est.log10_p - truth) < tolerance, (est.log10_p, truth)
    assert est.n_model_calls <= budget


# --- tsis without a gradient ------------------------------------------------------------------
def test_tsis_finds_the_answer_on_a_black_box_without_a_gradient():
    model, dist, spec, truth = lookup_case(*LOOKUP_CASE)
    est = tg.estimate(Opaque(model), dist, spec, "tsis", budget=2**13, seed=0)
    assert abs(est.log10_p - truth) < 0.05 and est.ci_log10[0] <= truth <= est.ci_log10[1]
    assert est.diagnostics["guide"] == "gradient-free (score effects)"
    assert "nn.Embedding" in est.diagnostics["gradient_free_because"]


@pytest.mark.parametrize("gradient", [True, False])
def test_tsis_ranks_the_changes_of_a_large_vocabulary_with_either_guide(gradient):
    """candidates=4 < vocab - 1: the search tries only the changes its guide ranks best."""
    model, dist, spec, truth = lookup_case(1, 1, 0.1, 4)
    est = tg.estimate(model, dist, spec, "tsis", budget=2**13, seed=0, candidates=4, gradient=gradient)
    assert abs(est.log10_p - truth) < 0.05 and est.n_model_calls <= 2**13
    guide = "gradient (embedding)" if gradient else "gradient-free (score effects)"
    assert est.diagnostics["guide"] == guide
    assert ("gradient_free_because" in est.diagnostics) is not gradient


def test_score_effects_learn_which_tokens_raise_the_score():
    effects = ScoreEffects(ctx=2, vocab=3)
    x = torch.tensor([[0, 1], [1, 1], [2, 1], [0, 0]])
    effects.observe(x, torch.tensor([3.0, 0.0, 0.0, 3.0], dtype=torch.float64))
    table = effects.table()
    assert table[0, 0] > 0 > table[0, 1] and table[1, 2] == 0.0  # token 2 never seen at position 1
    assert table[0, 0] == pytest.approx((3.0 - 1.5) * 2 / (2 + 4))  # shrunk by count / (count + 4)


# --- auto -------------------------------------------------------------------------------------
def test_auto_runs_tsis_on_an_nn_embedding_model():
    model, dist, spec, truth = lookup_case(*LOOKUP_CASE)
    assert choose_method(model, dist, spec, 2**14) == "tsis"
    est = tg.estimate(model, dist, spec, "auto", budget=2**14, seed=0)
    assert est.method == "tsis" and abs(est.log10_p - truth) < 0.05


@pytest.mark.parametrize("refused", ["predicate", "budget"])
def test_auto_says_why_tsis_was_refused_and_bounds_the_zero(refused):
    model, dist, spec, truth = lookup_case(*LOOKUP_CASE)
    if refused == "predicate":
        spec, budget, why = tg.Predicate(lambda x, y: y.argmax(1) == 1), 4096, "Predicate"
    else:
        budget, why = 1000, "budget"
    est = tg.estimate(model, dist, spec, "auto", budget=budget, seed=0)
    assert est.method == "mc" and est.log10_p == -math.inf
    assert any("tsis was refused" in w and why in w for w in est.warnings)
    high = est.ci_log10[1]  # Clopper-Pearson with no hit in n draws: 1 - 0.025^(1/n)
    assert math.isfinite(high) and truth < high
    assert high == pytest.approx(math.log10(1 - 0.025 ** (1 / budget)), abs=1e-9)


def test_a_model_may_change_its_embeddings_in_place():
    class InPlace(LookupMLP):
        def forward(self, x):
            e = self.embed(x)
            e[:, 0] *= 2.0
            return self.head(e)

    model = InPlace(0)
    dist = tg.IndependentTokens(peaked_probs(0.1, 2))
    x = dist.sample(3, torch.Generator().manual_seed(0))
    _, g = embedding_route(model, dist).scores_and_gradient(ScoreOracle(model, dist, tg.ClassIs(1)), x)
    one_hot = nn.functional.one_hot(x, VOCAB).float().requires_grad_(True)
    e = one_hot @ model.embed.weight
    logits = model.head(torch.cat([2.0 * e[:, :1], e[:, 1:]], 1))
    (expected,) = torch.autograd.grad(tg.ClassIs(1).score(x, logits).sum(), one_hot)
    assert torch.allclose(g, expected.double(), atol=1e-5)
