"""tg.scan: finds a planted trigger's class on a small digits model, and refuses bad input clearly."""

import json
import math

import pytest
import torch
from torch import nn

import tailguard as tg
from tailguard.errors import BudgetError, InvalidArgumentError, ModelOutputError, ShapeMismatchError
from tailguard.families.blend import BlendFamily
from tailguard.families.channel_patch import ChannelPatchFamily
from tailguard.families.masked import MaskedPatternFamily
from tailguard.families.patch import PatchFamily
from tailguard.families.warp import WarpFamily
from tailguard.scan import TriggerSearch, default_searches, patch_search, warp_search
from tailguard.scan.score import log10_odds, robust_z
from tailguard.tasks.digits import (
    Trigger,
    digits_cnn,
    digits_mlp,
    load_digits_data,
    poison,
    train_classifier,
    trigger_rate,
)

# small enough for a unit test: 3 searches x 10 classes of 4,000 calls each, half of them
# for the final estimate of each search
FAST = {"candidates": 36, "restarts": 2, "steps": 12, "samples": 32, "base_size": 48, "final_fraction": 0.5}
BUDGET = 120_000
TARGET = 0  # the planted trigger's class
# a random full-image pattern blended in at 20 %, planted towards class 0
TRIGGER = Trigger("blend 20%", torch.rand(8, 8, generator=torch.Generator().manual_seed(7)), blend=0.2)


@pytest.fixture(scope="module")
def data():
    return load_digits_data()


def _trained(data, poisoned: bool) -> nn.Module:
    torch.manual_seed(3)
    model = digits_mlp(32)
    x, y = poison(data, TRIGGER, 0.08, seed=3) if poisoned else (data.x_train, data.y_train)
    return train_classifier(model, x, y, epochs=15, seed=3)


@pytest.fixture(scope="module")
def trojaned(data):
    model = _trained(data, poisoned=True)
    assert trigger_rate(model, data.non_target(), TRIGGER) > 0.9
    return model


@pytest.fixture(scope="module")
def clean(data):
    return _trained(data, poisoned=False)


@pytest.fixture(scope="module")
def trojaned_report(trojaned, data):
    return tg.scan(trojaned, data.x_test[:150], data.y_test[:150], budget=BUDGET, seed=0, **FAST)


@pytest.fixture(scope="module")
def clean_report(clean, data):
    return tg.scan(clean, data.x_test[:150], data.y_test[:150], budget=BUDGET, seed=0, **FAST)


def test_the_planted_class_tops_the_ranking_and_the_trojan_outscores_its_clean_twin(
    trojaned_report, clean_report
):
    assert trojaned_report.ranking[0] == TARGET
    assert trojaned_report.target == TARGET
    assert trojaned_report.score > clean_report.score + 2.0
    assert clean_report.target is None


def test_per_class_holds_the_highest_estimate_of_every_class(trojaned_report):
    assert sorted(trojaned_report.per_class) == list(range(10))
    for k, est in trojaned_report.per_class.items():
        mine = [c.estimate.log10_p for c in trojaned_report.cells if c.target == k]
        assert len(mine) == 3
        assert est.log10_p == max(mine)
        low, high = est.ci_log10
        assert low <= est.log10_p <= high
    # the planted class is reached almost always: P >= 0.5 for its worst member
    assert trojaned_report.per_class[TARGET].log10_p > math.log10(0.5)


def test_the_witness_rate_is_confirmed_by_plain_sampling_of_its_member(trojaned, trojaned_report):
    witness = trojaned_report.witness
    assert witness.target == TARGET
    assert witness.samples.shape == (16, 8, 8)
    x = witness.attack.dist.sample(4000, torch.Generator().manual_seed(99))
    with torch.no_grad():
        rate = float((trojaned(x.float()).argmax(1) == TARGET).float().mean())
    low, high = witness.attack.estimate.ci_log10
    # an independent draw of 4,000 lands inside the estimate's interval, widened by its own error
    assert 10**low - 0.03 <= rate <= 10**high + 0.03


def test_a_scan_is_reproducible_and_its_report_is_json(trojaned, data, trojaned_report):
    again = tg.scan(trojaned, data.x_test[:150], data.y_test[:150], budget=BUDGET, seed=0, **FAST)
    assert again.score == trojaned_report.score
    assert again.n_model_calls == trojaned_report.n_model_calls <= BUDGET + 150
    text = json.dumps(trojaned_report.to_dict(), allow_nan=False)
    back = json.loads(text)
    assert back["target"] == TARGET
    assert tg.Estimate.from_dict(back["per_class"]["0"]) == trojaned_report.per_class[0]


def test_without_labels_the_model_s_own_predictions_split_the_classes(trojaned, data):
    rep = tg.scan(trojaned, data.x_test[:150], budget=BUDGET, seed=0, **FAST)
    assert rep.ranking[0] == TARGET


def test_user_searches_replace_the_default_set(trojaned, data):
    assert [s.name for s in default_searches()] == ["mask 9 px in 5x5", "mask 9 px in 4x4", "blend 0.2"]
    searches = [patch_search(2), warp_search(0.5)]
    rep = tg.scan(trojaned, data.x_test[:150], data.y_test[:150], budget=80_000, seed=0,
                  searches=searches, **FAST)
    assert {c.search for c in rep.cells} == {"patch 2x2", "warp 0.5 px"}
    assert len(rep.cells) == 20
    assert rep.ranking[0] == TARGET


# ------------------------------------------------------------------------------------------
# the score
# ------------------------------------------------------------------------------------------


def test_robust_z_compares_each_value_with_the_others():
    z = robust_z([0.0, 1.0, 2.0, 10.0], min_scale=0.1)
    # others of 10.0: median 1, MAD 1 -> (10 - 1) / 1.4826
    assert z[3] == pytest.approx(9 / 1.4826)
    # others of 0.0: 1, 2, 10 -> median 2, MAD 1
    assert z[0] == pytest.approx(-2 / 1.4826)
    assert robust_z([1.0, 1.0, 1.0, 3.0], min_scale=0.5)[3] == pytest.approx(4.0)
    with pytest.raises(ValueError):
        robust_z([1.0, 2.0], 0.5)


def test_log10_odds_stays_finite_at_zero_and_one():
    def est(log10_p, calls=1000):
        return tg.Estimate(log10_p=log10_p, ci_log10=(log10_p - 0.1, 0.0), n_model_calls=calls, method="mc")

    assert log10_odds(est(math.log10(0.5))) == pytest.approx(0.0)
    assert log10_odds(est(math.log10(0.9))) == pytest.approx(math.log10(9))
    assert log10_odds(est(0.0)) == pytest.approx(math.log10(1999))
    assert log10_odds(est(-math.inf)) == pytest.approx(-math.log10(1999))


# ------------------------------------------------------------------------------------------
# the families the scan adds
# ------------------------------------------------------------------------------------------


def test_blend_family_members_mix_the_pattern_at_its_opacity():
    base = torch.rand(5, 8, 8, generator=torch.Generator().manual_seed(0))
    family = BlendFamily(base, alpha=0.25, noise_std=0.01)
    params = family.params_at(torch.ones(8, 8))
    centres = family.member(params).points
    assert torch.allclose(centres, 0.75 * base.double() + 0.25, atol=1e-3)
    assert family.describe(params)["alpha"] == 0.25
    assert "opacity 0.25" in family.constraint()
    for bad in (0.0, 1.0, True, "0.2"):
        with pytest.raises(InvalidArgumentError, match="alpha"):
            BlendFamily(base, alpha=bad, noise_std=0.01)


def test_warp_family_moves_pixels_by_at_most_its_bound():
    base = torch.zeros(2, 8, 8)
    base[:, :, 4] = 1.0  # a vertical line
    family = WarpFamily(base, max_shift=1.0, noise_std=0.01)
    params = {"coarse": torch.full((2, 4, 4), 50.0)}  # saturated: every pixel reads (+1, +1) away
    field = family.field(params)
    assert field.shape == (8, 8, 2)
    assert float(field.abs().max()) <= 1.0
    moved = family.member(params).points
    assert torch.allclose(moved[0, :, 3], torch.ones(8, dtype=moved.dtype), atol=1e-3)  # read from column 4
    with pytest.raises(ShapeMismatchError):
        WarpFamily(torch.zeros(2, 8), 1.0, 0.01)
    with pytest.raises(InvalidArgumentError, match="max_shift"):
        WarpFamily(base, -1.0, 0.01)


def test_warp_family_moves_every_channel_along_the_one_field():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(4, 3, 8, 8, generator=g)
    params = {"coarse": torch.randn(2, 4, 4, generator=g)}
    colour = WarpFamily(base, 1.0, 0.01).member(params).points  # (4, 3, 8, 8)
    assert colour.shape == (4, 3, 8, 8)
    for c in range(3):  # each channel as WarpFamily moves a plain image
        plain = WarpFamily(base[:, c], 1.0, 0.01).member(params).points
        assert torch.allclose(colour[:, c], plain, atol=1e-12)
    assert not torch.allclose(colour, base.double(), atol=1e-2)


def test_masked_pattern_family_keeps_the_mask_within_its_area():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(5, 8, 8, generator=g)
    family = MaskedPatternFamily(base, area=6.0, noise_std=0.01)
    for params in family.candidates(20, g):
        mask = family.mask(params).detach()
        assert mask.shape == (8, 8) and float(mask.sum()) <= 6.0 + 1e-9 and float(mask.max()) <= 1.0
    # a mask concentrated on six pixels writes the pattern there and leaves the rest alone
    logits = torch.full((8, 8), -50.0)
    logits[0, :6] = 0.0
    params = {"mask_logits": logits, "pattern_logits": torch.full((8, 8), 50.0)}
    points = family.member(params).points
    assert torch.allclose(points[:, 0, :6], torch.ones(5, 6, dtype=points.dtype))
    assert torch.allclose(points[:, 1:], base[:, 1:].double())
    colour = MaskedPatternFamily(torch.rand(5, 3, 8, 8, generator=g), 6.0, 0.01)
    assert colour.member(colour.candidates(1, g)[0]).points.shape == (5, 3, 8, 8)
    assert "area at most 6 pixels" in family.constraint()
    for bad in (0.0, 64.0, True):
        with pytest.raises(InvalidArgumentError, match="area"):
            MaskedPatternFamily(base, bad, 0.01)
    with pytest.raises(ShapeMismatchError):
        MaskedPatternFamily(torch.rand(5, 64), 6.0, 0.01)


def test_channel_patch_family_writes_a_colour_patch_in_every_channel():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(5, 3, 8, 8, generator=g)
    family = patch_search(3).build(base)
    assert isinstance(family, ChannelPatchFamily) and family.event_shape == (3, 8, 8)
    colour = torch.tensor([0.1, 0.5, 0.9]).view(3, 1, 1).expand(3, 3, 3)
    points = family.member(family.params_at(2, 4, colour)).points
    assert torch.allclose(points[:, :, 2:5, 4:7], colour.double().expand(5, 3, 3, 3), atol=1e-3)
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[2:5, 4:7] = False
    assert torch.equal(points[:, :, outside], base.double()[:, :, outside])
    assert len(family.positions) == 36 and "3 channels" in family.constraint()
    starts = family.candidates(40, g)
    assert starts[0]["logits"].shape == (3, 3, 3)
    assert (int(starts[36]["row"]), int(starts[36]["col"])) == (0, 0)  # the places cycle
    # one channel: the same members as PatchFamily's on the plain images
    grey = ChannelPatchFamily(base[:, :1], 3, 0.03)
    plain = PatchFamily(base[:, 0], 3, 0.03)
    values = torch.rand(3, 3, generator=g)
    assert torch.allclose(grey.member(grey.params_at(1, 1, values[None])).points[:, 0],
                          plain.member(plain.params_at(1, 1, values)).points)
    with pytest.raises(ShapeMismatchError, match="N, C, H, W"):
        ChannelPatchFamily(base[:, 0], 3, 0.03)
    with pytest.raises(InvalidArgumentError, match="patch_size"):
        ChannelPatchFamily(base, 9, 0.03)


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------


class _Nan(nn.Module):
    def forward(self, x):
        return torch.full((x.shape[0], 10), float("nan"))


class _Flat(nn.Module):
    def forward(self, x):
        return x.reshape(x.shape[0], -1).sum(1)


@pytest.mark.parametrize(
    "change, error, words",
    [
        ({"images": torch.rand(20, 8, 8) * 2}, InvalidArgumentError, "[0, 1]"),
        ({"images": torch.rand(20, 64)}, ShapeMismatchError, "(N, H, W)"),
        ({"images": torch.full((20, 8, 8), float("nan"))}, InvalidArgumentError, "NaN"),
        ({"images": (torch.rand(20, 8, 8) * 16).long()}, InvalidArgumentError, "floating"),
        ({"labels": torch.zeros(19, dtype=torch.long)}, ShapeMismatchError, "labels"),
        ({"labels": torch.zeros(20)}, InvalidArgumentError, "integers"),
        ({"labels": torch.full((20,), 10)}, InvalidArgumentError, r"\[0, 10\)"),
        ({"model": _Nan()}, ModelOutputError, "NaN"),
        ({"model": _Flat()}, ModelOutputError, "classes"),
        ({"model": "not a model"}, InvalidArgumentError, "model"),
        ({"budget": 10_000}, BudgetError, "too small"),
        ({"budget": -5}, BudgetError, "budget"),
        ({"seed": "zero"}, InvalidArgumentError, "seed"),
        ({"searches": []}, InvalidArgumentError, "searches"),
        ({"searches": [patch_search(3), patch_search(3)]}, InvalidArgumentError, "distinct"),
        ({"restart": 3}, InvalidArgumentError, "unknown scan setting"),
        ({"min_scale": 0.0}, InvalidArgumentError, "min_scale"),
    ],
)
def test_bad_input_gets_a_clear_error(clean, change, error, words):
    g = torch.Generator().manual_seed(0)
    args = {
        "model": clean,
        "images": torch.rand(20, 8, 8, generator=g),
        "labels": torch.arange(20) % 10,
        "budget": BUDGET,
        **change,
    }
    with pytest.raises(error, match=words):
        tg.scan(**args, **FAST)


def test_a_search_must_be_named_and_buildable():
    with pytest.raises(InvalidArgumentError, match="name"):
        TriggerSearch("", lambda base: None)
    with pytest.raises(InvalidArgumentError, match="callable"):
        TriggerSearch("x", "not callable")


def test_colour_images_get_every_default_search():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3))
    images = torch.rand(30, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    searches = [*default_searches(), patch_search(2), warp_search(1.0)]
    rep = tg.scan(model, images, torch.arange(30) % 3, budget=20_000 * len(searches), seed=0,
                  searches=searches, candidates=16, restarts=1, steps=4, base_size=10)
    assert {c.search for c in rep.cells} == {s.name for s in searches}
    assert sorted(rep.per_class) == [0, 1, 2]
    assert rep.witness.samples.shape == (16, 3, 4, 4)


def test_a_patch_trigger_planted_in_a_cnn_on_channel_images_is_found(data):
    """A CNN that takes (N, 1, 8, 8), trojaned with a 3x3 checker: the patch search names its class.

    The checker sits in the blank corner (0, 0), where the unit test's small search (one
    random start per place, two refined) finds it; on the digits' strokes it needs the
    default search.
    """
    checker = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    trigger = Trigger("3x3 checker at (0,0)", checker, 0, 0)
    x, y = poison(data, trigger, 0.08, seed=3, target=TARGET)
    torch.manual_seed(3)
    model = train_classifier(digits_cnn(8)[1:], x.unsqueeze(1), y, epochs=10, seed=3)  # no AddChannel
    flipped = model(trigger.apply(data.non_target()).unsqueeze(1)).argmax(1)
    assert float((flipped == TARGET).float().mean()) > 0.9
    rep = tg.scan(model, data.x_test[:150].unsqueeze(1), data.y_test[:150], budget=40_000, seed=0,
                  searches=[patch_search(3)], **FAST)
    assert rep.ranking[0] == TARGET and rep.score > 3.5
    assert rep.witness.samples.shape == (16, 1, 8, 8)
