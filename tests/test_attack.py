"""attack finds the planted trigger in a patch family, within its budget."""

import pytest
import torch

import tailguard as tg
from tailguard.families import stamp

from ._toy_backdoor import TRIGGER_COL, TRIGGER_ROW, base_images, trigger_model


def test_stamp_writes_the_patch_and_keeps_the_rest():
    imgs = torch.zeros(2, 4, 4)
    out = stamp(imgs, torch.ones(2, 2), 1, 2)
    assert out[:, 1:3, 2:4].eq(1).all() and out.sum() == 8


def test_attack_recovers_the_planted_trigger():
    family = tg.PatchFamily(base_images(), patch_size=2, noise_std=0.05)
    model = trigger_model()
    clean = tg.estimate(model, tg.NoisyEmpirical(base_images(), 0.05), tg.ClassIs(1), "mc", 20_000)
    assert clean.log10_p == float("-inf")
    att = tg.attack(model, tg.ClassIs(1), family, budget=60_000, seed=0, method="mc")
    member = family.describe(att.params)
    assert (member["row"], member["col"]) == (TRIGGER_ROW, TRIGGER_COL)
    assert att.estimate.log10_p > -0.05
    assert att.n_model_calls <= 60_000
    assert att.samples(5).shape == (5, 4, 4)


def test_attack_is_deterministic_for_a_seed():
    family = tg.PatchFamily(base_images(), patch_size=2, noise_std=0.05)
    a = tg.attack(trigger_model(), tg.ClassIs(1), family, budget=30_000, seed=4, method="mc")
    b = tg.attack(trigger_model(), tg.ClassIs(1), family, budget=30_000, seed=4, method="mc")
    assert a.params.keys() == b.params.keys()
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    assert (a.estimate.log10_p, a.estimate.ci_log10) == (b.estimate.log10_p, b.estimate.ci_log10)


def test_attack_rejects_bad_input():
    family = tg.PatchFamily(base_images(), patch_size=2, noise_std=0.05)
    with pytest.raises(tg.ShapeMismatchError, match="model failed"):
        tg.attack(torch.nn.Linear(3, 2), tg.ClassIs(1), family, budget=30_000)
    with pytest.raises(tg.ShapeMismatchError, match="only 2 outputs"):
        tg.attack(trigger_model(), tg.ClassIs(7), family, budget=30_000)
    with pytest.raises(tg.BudgetError, match="too small"):
        tg.attack(trigger_model(), tg.ClassIs(1), family, budget=500)
    with pytest.raises(tg.InvalidArgumentError, match="unknown attack setting"):
        tg.attack(trigger_model(), tg.ClassIs(1), family, budget=30_000, restart=3)
    with pytest.raises(tg.InvalidArgumentError, match="patch_size"):
        tg.PatchFamily(base_images(), patch_size=9, noise_std=0.05)
    with pytest.raises(tg.ShapeMismatchError, match=r"\(N, H, W\)"):
        tg.PatchFamily(torch.zeros(4, 4), patch_size=2, noise_std=0.05)
