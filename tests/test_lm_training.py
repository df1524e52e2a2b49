"""LoRA fine-tuning of an LM adversary and an LM policy, on tiny random Llamas (seconds, no downloads)."""

import pytest
import torch

import tailguard as tg
from tailguard.lm.hf import NextTokenLogits
from tailguard.lm.proposal import forbidden_mass
from tailguard.lm.training import (
    AdversarySettings,
    PolicySettings,
    add_lora,
    first_token_kl,
    harden_policy,
    train_adversary,
)

from .test_lm_dist import tiny_llama

pytest.importorskip("peft")

VOCAB, LENGTH = 24, 4
FORBIDDEN = [3, 7]
#: a tiny random Llama barely moves its output through attention adapters alone
TARGETS = ("q_proj", "v_proj", "lm_head")


def adversary(seed=0):
    lm = add_lora(tiny_llama(VOCAB, seed=seed), rank=4, targets=TARGETS)
    return tg.LMDistribution(lm, torch.tensor([1, 2]), LENGTH)


def policy(seed=1):
    lm = add_lora(tiny_llama(VOCAB, seed=seed), rank=4, targets=TARGETS)
    return NextTokenLogits(lm, torch.tensor([5]), torch.tensor([6]))


class WordTriggered(torch.nn.Module):
    """A policy whose forbidden first tokens grow likely with each token 9 in the message."""

    def forward(self, x):
        logits = torch.zeros(x.shape[0], VOCAB)
        logits[:, FORBIDDEN] = 2.0 * (x == 9).sum(1, keepdim=True).float() - 3.0
        return logits


def mean_pi(dist, pol, n=256, seed=9):
    with torch.no_grad():
        x = dist.sample(n, torch.Generator().manual_seed(seed))
        return float(forbidden_mass(pol(x), FORBIDDEN).mean())


def test_adversary_training_raises_the_forbidden_mass_it_provokes():
    adv, pol = adversary(), WordTriggered()
    before = mean_pi(adv, pol)
    history = train_adversary(adv, pol, FORBIDDEN, AdversarySettings(steps=20, batch=32, lr=1e-2, beta=0.0))
    after = mean_pi(adv, pol)
    assert len(history) == 20
    assert after > 3 * before, (before, after)


def test_a_large_kl_penalty_keeps_the_adversary_near_its_start():
    free, tied = adversary(), adversary()
    pol = WordTriggered()
    loose = train_adversary(free, pol, FORBIDDEN, AdversarySettings(steps=20, batch=32, lr=1e-2, beta=0.0))
    tight = train_adversary(tied, pol, FORBIDDEN, AdversarySettings(steps=20, batch=32, lr=1e-2, beta=1.0))
    assert sum(h["kl"] for h in tight[-5:]) < 0.5 * sum(h["kl"] for h in loose[-5:])


def test_hardening_lowers_the_forbidden_mass_with_a_bounded_kl():
    pol = policy()
    g = torch.Generator().manual_seed(0)
    attacks = torch.randint(VOCAB, (64, LENGTH), generator=g)
    ordinary = torch.randint(VOCAB, (64, LENGTH), generator=g)
    with torch.no_grad():
        before = float(forbidden_mass(pol(attacks), FORBIDDEN).mean())
    settings = PolicySettings(steps=30, batch=16, lr=3e-2, kl_weight=1.0, floor=1e-3)
    harden_policy(pol, attacks, ordinary, FORBIDDEN, settings)
    with torch.no_grad():
        after = float(forbidden_mass(pol(attacks), FORBIDDEN).mean())
    assert after < before / 10, (before, after)
    kl = first_token_kl(pol, ordinary)
    assert kl.shape == (64,) and (kl >= -1e-9).all() and float(kl.mean()) < 1.0


class Killed(Exception):
    pass


def kill_after(steps):
    def progress(index, metrics):
        if index + 1 == steps:
            raise Killed
    return progress


def test_a_killed_run_resumes_from_its_checkpoint_to_the_same_result(tmp_path):
    settings = AdversarySettings(steps=4, batch=8, lr=1e-2, checkpoint_every=2)
    whole = adversary()
    full = train_adversary(whole, policy(), FORBIDDEN, settings, seed=3)
    with pytest.raises(Killed):
        train_adversary(adversary(), policy(), FORBIDDEN, settings, seed=3, checkpoint_dir=tmp_path,
                        progress=kill_after(3))
    resumed = adversary()
    finished = train_adversary(resumed, policy(), FORBIDDEN, settings, seed=3, checkpoint_dir=tmp_path)
    assert [h["mean_pi"] for h in finished] == pytest.approx([h["mean_pi"] for h in full])
    for (name, p), q in zip(resumed.lm.named_parameters(), whole.lm.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), name
    other = AdversarySettings(steps=4, batch=8, lr=2e-2, checkpoint_every=2)
    with pytest.raises(tg.InvalidArgumentError, match="other settings"):
        train_adversary(adversary(), policy(), FORBIDDEN, other, seed=3, checkpoint_dir=tmp_path)


@pytest.mark.parametrize("kwargs", [{"steps": 0}, {"batch": -1}, {"lr": 0.0}, {"beta": -1.0},
                                    {"checkpoint_every": 1.5}])
def test_bad_adversary_settings_are_rejected(kwargs):
    with pytest.raises(tg.InvalidArgumentError):
        AdversarySettings(**kwargs)


def test_models_without_adapters_and_bad_inputs_are_rejected():
    plain = tg.LMDistribution(tiny_llama(VOCAB), torch.tensor([1, 2]), LENGTH)
    with pytest.raises(tg.InvalidArgumentError, match="LoRA"):
        train_adversary(plain, policy(), FORBIDDEN)
    with pytest.raises(tg.InvalidArgumentError, match="forbidden"):
        train_adversary(adversary(), policy(), [])
    with pytest.raises(tg.InvalidArgumentError, match="ordinary"):
        harden_policy(policy(), torch.zeros(2, LENGTH, dtype=torch.long), torch.zeros(0), FORBIDDEN)
    with pytest.raises(tg.InvalidArgumentError):
        PolicySettings(floor=0.0)
