"""LoRA fine-tuning of an LM adversary and hardening of an LM policy, on tiny random Llamas (no downloads)."""

import math

import pytest
import torch

import tailguard as tg
from tailguard.lm import (
    AdversarySettings,
    NextTokenIn,
    PolicySettings,
    harden_policy,
    policy_report,
    train_adversary,
)
from tailguard.lm.adversary import leave_one_out
from tailguard.lm.hf import NextTokenLogits
from tailguard.lm.measure import first_token_kl
from tailguard.lm.proposal import forbidden_mass
from tailguard.lm.training import adapters_off

from .test_lm_dist import tiny_llama

pytest.importorskip("peft")

VOCAB, LENGTH = 24, 4
FORBIDDEN = [3, 7]
SPEC = NextTokenIn(FORBIDDEN)
#: a tiny random Llama barely moves its output through attention adapters alone
TARGETS = ("q_proj", "v_proj", "lm_head")


def adversary(seed=0):
    """The prompted adversary: a plain LM; training puts the adapters on."""
    return tg.LMDistribution(tiny_llama(VOCAB, seed=seed), torch.tensor([1, 2]), LENGTH)


def policy(seed=1):
    return NextTokenLogits(tiny_llama(VOCAB, seed=seed), torch.tensor([5]), torch.tensor([6]))


def adversary_settings(**kwargs):
    return AdversarySettings(**{"steps": 20, "batch": 32, "lr": 1e-2, "lora_rank": 4, "lora_targets": TARGETS,
                                **kwargs})


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


def test_leave_one_out_subtracts_the_mean_of_the_others():
    v = torch.tensor([1.0, 2.0, 6.0])
    assert leave_one_out(v).tolist() == pytest.approx([1 - 4, 2 - 3.5, 6 - 1.5])


def test_adversary_training_raises_the_forbidden_mass_it_provokes():
    start, pol = adversary(), WordTriggered()
    before = mean_pi(start, pol)
    result = train_adversary(start, pol, SPEC, adversary_settings(beta=0.0))
    after = mean_pi(result.dist, pol)
    assert len(result.history) == 20
    assert set(result.history[0]) == {"step", "mean_pi", "kl", "objective", "distinct"}
    assert after > 3 * before, (before, after)
    with adapters_off(result.dist.lm):  # the adversary before training is still there
        assert mean_pi(result.dist, pol) == pytest.approx(before, rel=1e-6)
    first, last = result.history[0], result.history[-1]
    assert last["objective"] > first["objective"] + 1.0
    assert math.log(last["mean_pi"]) == pytest.approx(last["objective"])  # beta = 0


def test_a_large_kl_penalty_keeps_the_adversary_near_its_start():
    pol = WordTriggered()
    loose = train_adversary(adversary(), pol, SPEC, adversary_settings(beta=0.0)).history
    tight = train_adversary(adversary(), pol, SPEC, adversary_settings(beta=3.0)).history
    kl_loose, kl_tight = (sum(h["kl"] for h in run[-5:]) / 5 for run in (loose, tight))
    assert kl_tight < 0.05 * kl_loose, (kl_tight, kl_loose)
    assert kl_tight < 0.5


def test_hardening_lowers_the_forbidden_mass_with_a_bounded_kl_and_reports_it():
    pol = policy()
    g = torch.Generator().manual_seed(0)
    attacks, ordinary, held_out = (torch.randint(VOCAB, (64, LENGTH), generator=g) for _ in range(3))
    with torch.no_grad():
        before = float(forbidden_mass(pol(attacks), FORBIDDEN).mean())
    settings = PolicySettings(steps=30, batch=16, lr=3e-2, kl_weight=1.0, floor=1e-3, lora_rank=4,
                              lora_targets=TARGETS)
    result = harden_policy(pol, attacks, ordinary, SPEC, settings)
    assert result.policy is pol and len(result.history) == 30
    with torch.no_grad():
        after = float(forbidden_mass(pol(attacks), FORBIDDEN).mean())
    assert after < before / 10, (before, after)
    kl = first_token_kl(pol, held_out)
    assert kl.shape == (64,) and (kl >= -1e-9).all() and float(kl.mean()) < 1.0
    report = policy_report(pol, {"attacks": attacks, "held out": held_out}, SPEC, held_out)
    assert report.before["attacks"].log10_p == pytest.approx(math.log10(before), abs=1e-6)
    assert report.after["attacks"].log10_p == pytest.approx(math.log10(after), abs=1e-6)
    assert report.lowered_by("attacks") == pytest.approx(before / after, rel=1e-5)
    assert report.lowered_by("held out") > 3  # messages it never trained on
    assert report.kl_mean == pytest.approx(float(kl.mean())) and report.kl_messages == 64
    for e in [*report.before.values(), *report.after.values()]:
        low, high = e.ci_log10
        assert low < e.log10_p < high <= 0.0
    assert report.to_dict()["after"]["attacks"]["messages"] == 64
    shown = str(report).splitlines()
    assert len(shown) == 4  # a header, one line per message set, the KL
    assert shown[1].startswith("attacks") and f"{report.after['attacks'].log10_p:.2f}" in shown[1]
    assert f"{report.lowered_by('held out'):.3g}x" in shown[2]
    assert "64 held-out ordinary messages" in shown[3]


class Killed(Exception):
    pass


def kill_after(steps):
    def progress(index, metrics):
        if index + 1 == steps:
            raise Killed
    return progress


def test_a_killed_run_resumes_from_its_checkpoint_to_the_same_result(tmp_path):
    settings = adversary_settings(steps=4, batch=8, checkpoint_every=2)
    full = train_adversary(adversary(), policy(), SPEC, settings, seed=3)
    with pytest.raises(Killed):
        train_adversary(adversary(), policy(), SPEC, settings, seed=3, checkpoint_dir=tmp_path,
                        progress=kill_after(3))
    finished = train_adversary(adversary(), policy(), SPEC, settings, seed=3, checkpoint_dir=tmp_path)
    assert [h["mean_pi"] for h in finished.history] == pytest.approx([h["mean_pi"] for h in full.history])
    pairs = zip(finished.dist.lm.named_parameters(), full.dist.lm.parameters(), strict=True)
    for (name, p), q in pairs:
        assert torch.allclose(p, q, atol=1e-6), name
    other = adversary_settings(steps=4, batch=8, lr=2e-2, checkpoint_every=2)
    with pytest.raises(tg.InvalidArgumentError, match="different configuration"):
        train_adversary(adversary(), policy(), SPEC, other, seed=3, checkpoint_dir=tmp_path)


@pytest.mark.parametrize("kwargs", [{"steps": 0}, {"batch": 1}, {"lr": 0.0}, {"beta": -1.0},
                                    {"beta": float("nan")}, {"checkpoint_every": 1.5}, {"lora_rank": 0},
                                    {"lora_targets": ()}, {"lora_targets": "q_proj"}])
def test_bad_adversary_settings_are_rejected(kwargs):
    with pytest.raises(tg.InvalidArgumentError):
        AdversarySettings(**kwargs)


@pytest.mark.parametrize("kwargs", [{"floor": 0.0}, {"floor": 1.0}, {"kl_weight": -1.0}, {"batch": 0}])
def test_bad_policy_settings_are_rejected(kwargs):
    with pytest.raises(tg.InvalidArgumentError):
        PolicySettings(**kwargs)


def test_bad_inputs_are_rejected_with_tailguard_errors():
    with pytest.raises(tg.InvalidArgumentError, match="spec must be a tailguard spec"):
        train_adversary(adversary(), policy(), FORBIDDEN)
    with pytest.raises(tg.InvalidArgumentError, match="LMDistribution"):
        train_adversary(torch.zeros(3), policy(), SPEC)
    with pytest.raises(tg.InvalidArgumentError, match="ordinary"):
        harden_policy(policy(), torch.zeros(2, LENGTH, dtype=torch.long), torch.zeros(0), SPEC)
    with pytest.raises(tg.InvalidArgumentError, match="NextTokenLogits"):
        harden_policy(WordTriggered(), torch.zeros(2, LENGTH, dtype=torch.long),
                      torch.zeros(2, LENGTH, dtype=torch.long), SPEC)
    with pytest.raises(tg.InvalidArgumentError, match="lora_targets|LoRA"):
        train_adversary(adversary(), policy(), SPEC, AdversarySettings(lora_targets=("no_such_layer",)))
    with pytest.raises(tg.InvalidArgumentError, match="LoRA"):
        policy_report(policy(), {"x": torch.zeros(2, LENGTH, dtype=torch.long)}, SPEC,
                      torch.zeros(2, LENGTH, dtype=torch.long))


def test_adapters_are_drawn_from_their_own_seed_and_leave_the_global_generator_alone():
    lms = [tiny_llama(VOCAB, seed=0) for _ in range(3)]
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    one = tg.lm.add_lora(lms[0], rank=4, seed=7)
    assert torch.equal(torch.rand(3), expected)
    two, other = tg.lm.add_lora(lms[1], rank=4, seed=7), tg.lm.add_lora(lms[2], rank=4, seed=8)
    a = {k: p for k, p in one.named_parameters() if "lora_A" in k}
    assert a and all(torch.equal(p, dict(two.named_parameters())[k]) for k, p in a.items())
    assert not all(torch.equal(p, dict(other.named_parameters())[k]) for k, p in a.items())


def test_the_diversity_term_keeps_more_distinct_messages():
    pol = WordTriggered()
    plain = train_adversary(adversary(), pol, SPEC, adversary_settings(beta=0.0)).history
    diverse = train_adversary(adversary(), pol, SPEC, adversary_settings(beta=0.0, diversity=2.0)).history
    distinct = [sum(h["distinct"] for h in run[-5:]) / 5 for run in (plain, diverse)]
    assert distinct[1] > distinct[0], distinct
