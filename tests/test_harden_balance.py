"""The adaptive weight of the adversary term: pressure while a member is above the target, none after."""

import math

import pytest
import torch

import tailguard as tg
from tailguard.harden.adversary import Balance
from tailguard.harden.game import Game

from ._toy_backdoor import flat_params
from .test_harden import FAST, harden_toy

TARGET = math.log(1e-3)
BALANCED = {**FAST, "balance_rate": 0.2, "balance_spread": 4.0, "balance_ceiling": 4.0}


def test_the_weight_grows_above_the_target_shrinks_below_and_stays_in_its_range():
    balance = Balance(TARGET, rate=0.1, spread=4.0, ceiling=4.0)
    assert balance.update(1.0, 1.0, TARGET + 0.5) == pytest.approx(math.exp(0.05))
    assert balance.update(1.0, 1.0, TARGET + 30.0) == pytest.approx(math.exp(0.1))  # a step is capped
    assert balance.update(1.0, 1.0, TARGET - 30.0) == pytest.approx(math.exp(-0.1))
    weight = 1.0
    for _ in range(100):
        weight = balance.update(weight, 1.0, 0.0)
    assert weight == pytest.approx(4.0)
    for _ in range(200):
        weight = balance.update(weight, 1.0, -50.0)
    assert weight == pytest.approx(0.25)
    relaxing = Balance(TARGET, rate=0.1, spread=4.0, ceiling=1.0)  # never above the starting weight
    assert relaxing.update(1.0, 1.0, 0.0) == 1.0 and relaxing.update(0.5, 1.0, 0.0) == pytest.approx(
        0.5 * math.exp(0.1))


def test_a_run_raises_the_weight_while_the_trigger_is_found_and_lowers_it_once_it_is_gone():
    res = harden_toy(seed=0, **{**BALANCED, "steps": 40, "lr": 0.05, "distill": 0.0})
    weights = [s["adversary_weight"] for s in res.report.steps]
    found = [s["adversary_log10_p"] * math.log(10) > TARGET for s in res.report.steps]
    # the pool starts on random patches (weight falling), finds the trigger (rising), loses it (falling)
    first = found.index(True)
    assert weights[first] < weights[0] < 1.0 and not found[-1]
    assert max(weights) == pytest.approx(4.0) and weights[-1] < 0.5
    assert all(0.25 - 1e-9 <= w <= 4.0 + 1e-9 for w in weights)
    fixed = harden_toy(seed=0, **{**FAST, "steps": 40, "lr": 0.05, "distill": 0.0})
    assert "adversary_weight" not in fixed.report.steps[0]


def test_a_balanced_run_resumes_exactly(tmp_path, monkeypatch):
    straight = harden_toy(seed=5, **BALANCED)
    real_step = Game.loss
    calls = {"n": 0}

    def dying_step(self, step, generator):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # after step 3's checkpoint, with the weight moved
        return real_step(self, step, generator)

    monkeypatch.setattr(Game, "loss", dying_step)
    with pytest.raises(KeyboardInterrupt):
        harden_toy(seed=5, checkpoint_dir=tmp_path, **BALANCED)
    monkeypatch.setattr(Game, "loss", real_step)
    resumed = harden_toy(seed=5, checkpoint_dir=tmp_path, resume=True, **BALANCED)
    assert torch.equal(flat_params(straight.model), flat_params(resumed.model))
    assert resumed.report.steps == straight.report.steps


def test_bad_balance_settings_are_named():
    with pytest.raises(tg.InvalidArgumentError, match="balance_rate"):
        harden_toy(seed=0, **{**FAST, "balance_rate": -0.1})
    with pytest.raises(tg.InvalidArgumentError, match="balance_spread"):
        harden_toy(seed=0, **{**FAST, "balance_spread": 0.5})
    with pytest.raises(tg.InvalidArgumentError, match="balance_spread"):
        Balance(TARGET, spread=float("inf"))
    with pytest.raises(tg.InvalidArgumentError, match="balance_ceiling"):
        harden_toy(seed=0, **{**FAST, "balance_ceiling": 0.9})
