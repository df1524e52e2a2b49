"""Text specs on what the policy does, variable-length messages, the chat prompt helper, the forecast."""

import math

import pytest
import torch

import tailguard as tg
from tailguard.lm import JudgeAbove, NextTokenLogits, ReplyLogProb, chat_prompt, lm_verdict
from tailguard.lm.forecast import fit_tail, forecast_log_p, forecast_worst_query_risk
from tailguard.lm.prompts import as_ids

from .test_lm_dist import tiny_llama, without_cache

VOCAB, END = 9, 8


def test_variable_length_messages_see_what_they_would_see_alone():
    lm = tiny_llama(VOCAB)
    prefix, suffix = torch.tensor([1, 2]), torch.tensor([3])
    x = torch.tensor([[4, 5, 6, 7], [4, END, END, END], [6, 5, END, END]])
    for model in (lm, without_cache(lm)):  # masked batch, and one call per length
        policy = NextTokenLogits(model, prefix, suffix, end_id=END)
        with torch.no_grad():
            batched = policy(x)
            for row, message in zip(batched, ([4, 5, 6, 7], [4], [6, 5]), strict=True):
                alone = lm(input_ids=torch.tensor([[1, 2, *message, 3]])).logits[0, -1]
                assert torch.allclose(row, alone, atol=1e-4)


def test_reply_log_prob_is_the_exact_probability_of_a_sampled_prefix():
    lm = tiny_llama(VOCAB, seed=1)
    policy = NextTokenLogits(lm, torch.tensor([1]), torch.tensor([2]), end_id=END)
    replies = [[5, 6, 7], [4]]
    x = torch.tensor([[3, 3, END], [6, 4, 5]])
    with torch.no_grad():
        got = ReplyLogProb(policy, replies)(x)[:, 0]
        for i, message in enumerate(([3, 3], [6, 4, 5])):
            total = 0.0
            for reply in replies:
                ids = torch.tensor([[1, *message, 2, *reply]])
                log_probs = torch.log_softmax(lm(input_ids=ids).logits[0].double(), -1)
                start = len(message) + 2
                total += math.exp(sum(float(log_probs[start - 1 + k, t]) for k, t in enumerate(reply)))
            assert math.isclose(float(got[i]), math.log(total), abs_tol=1e-4)
    with pytest.raises(tg.InvalidArgumentError):
        ReplyLogProb(policy, [])
    with pytest.raises(tg.InvalidArgumentError):
        ReplyLogProb(policy, [[VOCAB + 3]])


def test_a_reply_probability_spec_estimates_like_any_other():
    lm = tiny_llama(VOCAB, seed=2)
    users = tg.LMDistribution(lm, torch.tensor([1]), length=3, eos_id=END)
    policy = ReplyLogProb(NextTokenLogits(lm, torch.tensor([1]), torch.tensor([2]), end_id=END), [[5, 6]])
    spec = tg.OutputAbove(0, math.log(0.02))
    est = tg.estimate(policy, users, spec, method="mc", budget=400, seed=0)
    assert est.n_model_calls == 400 and est.ci_log10[1] <= 0.0


class FakeTokenizer:
    """A character tokenizer whose tokenize=True output is a BatchEncoding-like mapping (transformers 5)."""

    chat_template = "{{ messages }}"

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 50 for c in text]}

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages)
        text += "<a>" if add_generation_prompt else ""
        return {"input_ids": [[ord(c) % 50 for c in text]]} if tokenize else text


def test_chat_prompt_gives_the_same_ids_whatever_tokenize_returns():
    tok = FakeTokenizer()
    ids = chat_prompt(tok, "hi", system="be brief")
    expected = [ord(c) % 50 for c in "<system>be brief<user>hi<a>"]
    assert ids.tolist() == expected and ids.dtype == torch.long
    assert as_ids(tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=True)).dim() == 1
    one_turn = chat_prompt(tok, messages=[{"role": "user", "content": "hi"}])
    assert one_turn.tolist() == expected[-len("<user>hi<a>"):]
    with pytest.raises(tg.InvalidArgumentError):
        chat_prompt(tok)
    with pytest.raises(tg.InvalidArgumentError):
        as_ids([[1, 2], [3, 4]])


def test_a_judge_spec_is_graded_and_checked():
    def judge(x, y):
        return y[:, 0] * 2.0

    spec = JudgeAbove(judge, threshold=1.0)
    x, y = torch.zeros(3, 2), torch.tensor([[0.0], [0.5], [2.0]])
    assert spec.score(x, y).tolist() == [-1.0, 0.0, 3.0]
    assert torch.allclose(spec.soft(x, y), torch.nn.functional.logsigmoid(torch.tensor([-1.0, 0.0, 3.0])))
    with pytest.raises(tg.ShapeMismatchError):
        JudgeAbove(lambda x, y: torch.zeros(2)).score(x, y)
    with pytest.raises(tg.InvalidArgumentError):
        JudgeAbove(judge, threshold=float("nan"))
    probs = torch.tensor([[0.6, 0.3, 0.1]])
    verdict = lm_verdict(lambda x: torch.log(probs).expand(x.shape[0], -1), [0], [1, 2])
    assert torch.allclose(verdict(x, y), torch.full((3,), math.log(0.6 / 0.4), dtype=torch.float64))
    with pytest.raises(tg.InvalidArgumentError):
        lm_verdict(lambda x: x, [1], [1])


def test_the_gumbel_tail_forecast_recovers_a_gumbel_tail():
    g = torch.Generator().manual_seed(0)
    psi = -torch.log(-torch.log(torch.rand(20_000, generator=g, dtype=torch.float64)))  # standard Gumbel
    p = torch.exp(-torch.exp(-psi))
    a, _ = fit_tail(p, top_k=200)
    assert 0.8 < a < 1.2  # the largest of n standard Gumbels grows like log n
    # P[psi > c] = 1 - exp(-exp(-c)); at p > 1 - 1e-7, c = -log(-log(1 - 1e-7)) and P ~ 1e-7
    assert abs(forecast_log_p(p, threshold=1 - 1e-7, top_k=200) / math.log(10) + 7) < 0.5
    worst = forecast_worst_query_risk(p, 10**6, top_k=200)
    assert -math.log(-math.log(worst)) == pytest.approx(math.log(10**6), abs=1.0)
    with pytest.raises(tg.InvalidArgumentError):
        fit_tail(torch.tensor([0.5, 1.5]), top_k=2)
    with pytest.raises(tg.InvalidArgumentError):
        forecast_log_p(p, threshold=1.0)


def test_sampled_replies_follow_the_policy_and_a_regex_checks_them():
    from tailguard.lm import ContinuationMatches

    lm = tiny_llama(VOCAB, seed=3)
    policy = NextTokenLogits(lm, torch.tensor([1]), torch.tensor([2]))
    x = torch.tensor([[4, 5]]).expand(4000, -1)
    first = policy.sample(x, 1, torch.Generator().manual_seed(0))[:, 0]
    with torch.no_grad():
        probs = torch.softmax(policy(x[:1]).double(), -1)[0]
    freq = torch.bincount(first, minlength=VOCAB).double() / 4000
    assert float((freq - probs).abs().max()) < 4 * math.sqrt(0.25 / 4000)
    g = torch.Generator().manual_seed(1)
    spec = ContinuationMatches("^3", lambda m: policy.sample(m, 2, g),
                               lambda ids: "".join(map(str, ids.tolist())))
    hits = spec.score(x[:500], policy(x[:500])) > 0
    assert abs(float(hits.double().mean()) - float(probs[3])) < 4 * math.sqrt(0.25 / 500)


def test_sampled_token_in_samples_the_reply_with_its_exact_chance():
    from tailguard.lm import SampledTokenIn

    y = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.05, 0.05, 0.9]])).repeat(20_000, 1)
    spec = SampledTokenIn([0, 1], seed=3)
    chance = torch.exp(spec.log_chance(None, y))
    assert torch.allclose(chance[:2], torch.tensor([0.9, 0.1], dtype=torch.float64))
    hits = (spec.score(None, y) > 0).reshape(-1, 2).double().mean(0)
    assert torch.allclose(hits, torch.tensor([0.9, 0.1], dtype=torch.float64), atol=0.01)
    assert torch.allclose(spec.soft(None, y).double(), spec.log_chance(None, y))
    with pytest.raises(tg.InvalidArgumentError, match="temperature"):
        SampledTokenIn([1], temperature=0.0)
