"""``tg.harden`` on an LM policy against an LM adversary, on tiny random Llamas (no downloads)."""

import json

import pytest
import torch

import tailguard as tg
from tailguard.harden import lm_judge
from tailguard.lm import AdversarySettings, PolicySettings
from tailguard.lm.adversary import catastrophe_mass
from tailguard.lm.training import adapters_off

from .test_lm_dist import tiny_llama
from .test_lm_train import FORBIDDEN, LENGTH, SPEC, TARGETS, VOCAB, adversary, policy

pytest.importorskip("peft")

SETTINGS = {
    "rounds": 1,
    "pool": 16,
    "policy": PolicySettings(steps=12, batch=16, lr=3e-2, kl_weight=1.0, floor=1e-3, lora_rank=4,
                             lora_targets=TARGETS),
    "adversary": AdversarySettings(steps=3, batch=8, lr=1e-2, lora_rank=4, lora_targets=TARGETS),
    "judge": {"messages": 32, "min_distinct": 16},
}


def messages(seed, n=48):
    return torch.randint(VOCAB, (n, LENGTH), generator=torch.Generator().manual_seed(seed))


def run(adv=None, **kwargs):
    pol, adv = policy(), adv or adversary()
    return pol, adv, tg.harden(pol, train=messages(0), spec=SPEC, family=adv, seed=0, test=messages(1),
                               **{**SETTINGS, **kwargs})


def test_harden_lowers_the_held_out_mass_and_judges_with_a_fresh_adversary(tmp_path):
    pol, _, result = run()
    assert result.model is pol
    verdict = result.report.verdict
    held = verdict["held_out_ordinary"]
    with adapters_off(pol.lm), torch.no_grad():  # the original policy: exact mean mass on the held-out set
        before = float(catastrophe_mass(pol, SPEC, messages(1)).mean())
    assert held["before"]["mean"] == pytest.approx(before, rel=1e-9)
    assert held["after"]["mean"] < before / 3, (before, held["after"]["mean"])
    assert held["lowered_by"] == pytest.approx(before / held["after"]["mean"], rel=1e-6)
    assert 0 <= verdict["kl_first_token"]["mean"] < 1.0 and verdict["kl_first_token"]["messages"] == 48
    fresh = verdict["fresh_adversary"]
    assert fresh["seed"] == lm_judge.FRESH_SEED_OFFSET  # seed 0 + offset: no training run used it
    # it started from the writer's starting weights (adapters reset), not from the trained adversary:
    # its first batch is the untrained writer's, drawn with its own seed, against the original policy
    x = adversary().sample(8, torch.Generator().manual_seed(fresh["seed"]))  # the writer as it started
    first = float(catastrophe_mass(lm_judge.OriginalPolicy(pol), SPEC, x).mean())
    assert fresh["vs_original"]["history"][0]["mean_pi"] == pytest.approx(first, rel=1e-6)
    assert len(fresh["vs_hardened"]["history"]) == 3
    assert fresh["settings"]["diversity"] == 1.0  # the training adversary's settings, made diverse
    assert fresh["diverse"] and fresh["distinct"] >= 16 and fresh["refused"] is None
    assert fresh["lowered_by"] == pytest.approx(
        10 ** (fresh["vs_original"]["log10"] - fresh["vs_hardened"]["log10"]))
    assert set(verdict["side_by_side"]) == {"deployment", "adversary_vs_hardened"}
    assert [row["round"] for row in result.report.evals] == [1]
    # every message through the policy is counted: at least the held-out set before and after, and the
    # 12 training steps' batches
    assert result.report.model_calls >= 2 * 48 + 12
    assert len(result.report.steps) == 12 and result.report.steps[0]["round"] == 1
    shown = result.report.markdown()
    assert "fresh adversary" in shown and "held-out ordinary" in shown
    paths = result.report.save(tmp_path)
    assert json.loads(paths["json"].read_text())["verdict"]["fresh_adversary"]["seed"] == fresh["seed"]
    assert paths["markdown"].read_text() == shown and paths["plot"].is_file()


def test_a_fresh_adversary_that_collapses_is_refused():
    nearly_greedy = tg.LMDistribution(tiny_llama(VOCAB), torch.tensor([1, 2]), LENGTH, temperature=1e-3)
    *_, result = run(nearly_greedy)
    fresh = result.report.verdict["fresh_adversary"]
    assert fresh["distinct"] < 16, fresh["distinct"]  # it writes nearly one message over and over
    assert not fresh["diverse"] and fresh["lowered_by"] is None and "distinct" in fresh["refused"]


class Killed(Exception):
    pass


def test_a_killed_run_resumes_to_the_same_report(tmp_path, monkeypatch):
    _, _, full = run()
    train_adversary = lm_judge.train_adversary
    calls = []

    def killed_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Killed
        return train_adversary(*args, **kwargs)

    monkeypatch.setattr(lm_judge, "train_adversary", killed_on_the_second)
    with pytest.raises(Killed):
        run(checkpoint_dir=tmp_path)
    monkeypatch.setattr(lm_judge, "train_adversary", train_adversary)
    with pytest.raises(tg.InvalidArgumentError, match="resume=True"):
        run(checkpoint_dir=tmp_path)
    _, _, resumed = run(checkpoint_dir=tmp_path, resume=True)
    assert resumed.report.verdict == full.report.verdict
    assert resumed.report.evals == full.report.evals
    assert resumed.report.steps == full.report.steps


def test_mismatched_arguments_get_tailguard_errors():
    images = tg.PatchFamily(torch.zeros(2, 4, 4), patch_size=2, noise_std=0.1)
    with pytest.raises(tg.InvalidArgumentError, match="LM adversary"):
        tg.harden(policy(), train=messages(0), spec=SPEC, family=images)
    with pytest.raises(tg.InvalidArgumentError, match="LM policy"):
        tg.harden(torch.nn.Linear(LENGTH, VOCAB), train=messages(0), spec=SPEC, family=adversary())
    with pytest.raises(tg.ShapeMismatchError, match="train must be message ids"):
        tg.harden(policy(), train=messages(0)[0], spec=SPEC, family=adversary())
    with pytest.raises(tg.InvalidArgumentError, match="token id"):
        tg.harden(policy(), train=messages(0) + VOCAB, spec=SPEC, family=adversary())
    with pytest.raises(tg.InvalidArgumentError, match="integer token ids"):
        tg.harden(policy(), train=messages(0).float(), spec=SPEC, family=adversary())
    with pytest.raises(tg.InvalidArgumentError, match="no setting.*steps"):
        tg.harden(policy(), train=messages(0), spec=SPEC, family=adversary(), steps=3)
    with pytest.raises(tg.InvalidArgumentError, match="policy settings has no setting.*beta"):
        tg.harden(policy(), train=messages(0), spec=SPEC, family=adversary(), policy={"beta": 1.0})
    with pytest.raises(tg.InvalidArgumentError, match="spec"):
        tg.harden(policy(), train=messages(0), spec=FORBIDDEN, family=adversary())
    wider = tg.LMDistribution(tiny_llama(VOCAB + 8), torch.tensor([1, 2]), LENGTH)
    with pytest.raises(tg.InvalidArgumentError, match="adversary's LM writes"):
        tg.harden(policy(), train=messages(0), spec=SPEC, family=wider)
    with pytest.raises(tg.InvalidArgumentError, match="at least 4 messages"):
        tg.harden(policy(), train=messages(0, n=3), spec=SPEC, family=adversary())
    with pytest.raises(tg.InvalidArgumentError, match="min_distinct"):
        tg.harden(policy(), train=messages(0), spec=SPEC, family=adversary(), judge={"min_distinct": 200})


def test_held_out_messages_come_from_test_deployment_or_a_quarter_of_train():
    quick = {**SETTINGS, "policy": {"steps": 1, "batch": 4, "lora_rank": 4, "lora_targets": TARGETS},
             "adversary": {"steps": 1, "batch": 4, "lora_rank": 4, "lora_targets": TARGETS},
             "judge": {"messages": 8, "min_distinct": 4}, "held_out": 10}
    split = tg.harden(policy(), train=messages(0), spec=SPEC, family=adversary(), **quick)
    assert split.report.verdict["kl_first_token"]["messages"] == 12  # a quarter of 48
    users = tg.LMDistribution(tiny_llama(VOCAB, seed=5), torch.tensor([4]), LENGTH)
    drawn = tg.harden(policy(), train=messages(0), spec=SPEC, family=adversary(), deployment=users, **quick)
    assert drawn.report.verdict["kl_first_token"]["messages"] == 10
    with pytest.raises(tg.InvalidArgumentError, match="deployment of an LM policy"):
        tg.harden(policy(), train=messages(0), spec=SPEC, family=adversary(), deployment=tg.Gaussian(
            torch.zeros(LENGTH)), **quick)
