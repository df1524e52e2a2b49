"""Baselines for harden: same harness and report shape, PGD removes an in-family trigger, LAT cleans up."""

import copy

import pytest
import torch
from torch import nn

import tailguard as tg
from tailguard.harden.baselines import BASELINES, base_labels, run_baseline
from tailguard.harden.latent import LatentPGD, latent_perturbation
from tailguard.tasks.digits import digits_cnn, digits_mlp, load_digits_data

from ._toy_backdoor import TRIGGER_COL, TRIGGER_ROW, base_images, flat_params, toy_task, trigger_model

FAST = dict(steps=6, eval_every=3, eval_budget=2_000, eval_method="mc", held_out=1, batch_size=32,
            judge_budget=2_000, judge_sampling_budget=2_000, judge_attack_budget=6_000,
            judge_attack_method="mc")
EXTRA = {
    "standard": {},
    "finetune_adversary": dict(attack_budget=20_000, attack_method="mc", adv_batch=32),
    "pgd": {},
    "lat": dict(layer=0),  # the toy model has no hidden activation: perturb the flattened input
}




def _trigger_rate(model):
    """Fraction of fresh dim images sent to class 1 by the planted 2x2 bright block."""
    images = base_images(64, seed=3)
    images[:, TRIGGER_ROW:, TRIGGER_COL:] = 1.0
    with torch.no_grad():
        return float((model(images).argmax(1) == 1).float().mean())


def _run(name, model=None, seed=0, **overrides):
    train, family = toy_task()
    return run_baseline(
        name,
        trigger_model() if model is None else model,
        train=train,
        spec=tg.ClassIs(1),
        family=family,
        seed=seed,
        test=train,
        deployment=tg.NoisyEmpirical(base_images(16, seed=2), 0.05),
        **{**FAST, **EXTRA[name], **overrides},
    )


@pytest.mark.parametrize("name", BASELINES)
def test_each_baseline_returns_a_trained_copy_and_a_harden_shaped_report(name):
    start = trigger_model()
    before = flat_params(start).clone()
    res = _run(name, model=start)
    assert torch.equal(flat_params(start), before), "the caller's model must not be trained in place"
    assert type(res.model) is type(start) and not res.model.training
    shapes = {k: v.shape for k, v in start.state_dict().items()}
    assert {k: v.shape for k, v in res.model.state_dict().items()} == shapes
    assert not torch.equal(flat_params(res.model), before)
    report = res.report
    assert isinstance(report, tg.HardenReport) and report.settings["baseline"] == name
    assert [row["step"] for row in report.steps] == list(range(6))
    assert all({"task_loss", "batch_accuracy"} <= set(row) for row in report.steps)
    assert [ev["step"] for ev in report.evals] == [3, 6]
    for ev in report.evals:
        assert 0.0 <= ev["test_accuracy"] <= 1.0
        assert len(ev["held_out"]) == 1 and {"log10_p", "ci_log10", "member"} <= set(ev["held_out"][0])
        assert {"log10_p", "ci_log10", "method"} <= set(ev["deployment"])
    assert report.to_json() and "| 6 |" in report.markdown()
    assert (report.model_calls > 0) == (name != "standard")
    assert report.verdict["distributions"] and report.verdict["attacks"]  # judged independently too


@pytest.mark.parametrize("name", ["pgd", "finetune_adversary"])
def test_input_space_adversaries_remove_the_in_family_trigger_and_plain_finetuning_does_not(name):
    assert _trigger_rate(trigger_model()) == 1.0
    plain = _run("standard", steps=20, eval_every=20, lr=0.05)
    assert _trigger_rate(plain.model) == 1.0  # clean data never shows the trigger
    hardened = _run(name, steps=40, eval_every=40, lr=0.05)
    assert _trigger_rate(hardened.model) < 0.1
    if name == "pgd":
        success = [row["adversary_success"] for row in hardened.report.steps]
        assert success[0] > 0.9 and success[-1] < 0.1  # PGD finds the trigger, then no longer can


@pytest.mark.parametrize("name", BASELINES)
def test_same_seed_same_run_and_other_seed_differs(name):
    one, two, other = _run(name, seed=4), _run(name, seed=4), _run(name, seed=5)
    assert torch.equal(flat_params(one.model), flat_params(two.model))
    assert one.report.steps == two.report.steps and one.report.evals == two.report.evals
    assert not torch.equal(flat_params(one.model), flat_params(other.model))


def _digits_case(n_train=160):
    data = load_digits_data()
    x, y = data.x_train[:n_train], data.y_train[:n_train]
    family = tg.PatchFamily(data.non_target("train")[:24], patch_size=3, noise_std=0.05)
    return (x, y), family


def _hooks(model):
    return sum(len(m._forward_hooks) for m in model.modules())


@pytest.mark.parametrize("make", [digits_mlp, lambda: digits_cnn(channels=4)])
def test_lat_trains_mlp_and_cnn_at_the_first_activation_and_leaves_no_hook(make):
    torch.manual_seed(0)  # initial weights only; the run itself uses its own generator
    model = make()
    train, family = _digits_case()
    res = run_baseline(
        "lat", model, train=train, spec=tg.ClassIs(0), family=family, seed=0, **{**FAST, "steps": 4}
    )
    assert res.report.settings["layer"] is None and _hooks(res.model) == 0
    assert all(row["latent_radius"] > 0 for row in res.report.steps)
    fresh = copy.deepcopy(model)
    fresh.load_state_dict(res.model.state_dict())
    x = train[0][:32]
    with torch.no_grad():
        assert torch.equal(res.model(x), fresh(x))
    assert not torch.equal(flat_params(res.model), flat_params(model))


def test_latent_pgd_stays_in_its_ball_raises_the_loss_and_unhooks_on_error():
    torch.manual_seed(0)
    model = digits_mlp()
    (x, y), _ = _digits_case(64)
    safe = y != 0
    adversary = LatentPGD(model, tg.ClassIs(0), layer=2, epsilon=0.5, steps=5, targeted=True)
    delta, radius = adversary.worst_delta(x, y, safe)
    assert delta.shape == (64, 128)
    assert float(delta.norm(dim=1).max()) <= radius * (1 + 1e-5)
    with torch.no_grad():
        clean = tg.ClassIs(0).score(x, model(x))
        with latent_perturbation(model, 2, delta):
            pushed = tg.ClassIs(0).score(x, model(x))
    assert float((pushed - clean)[safe].mean()) > 0  # towards the catastrophe class
    with pytest.raises(RuntimeError, match="inside"):
        with latent_perturbation(model, 2, delta):
            raise RuntimeError("inside")
    assert _hooks(model) == 0


def test_base_labels_come_from_training_rows_or_the_starting_model():
    model = trigger_model()
    x = torch.cat([base_images(8, seed=1), base_images(8, seed=2)])
    y = torch.tensor([3] * 8 + [5] * 8)
    family = tg.PatchFamily(torch.cat([base_images(4, seed=2), base_images(2, seed=9)]), 2, 0.05)
    assert base_labels(family, x, y, model).tolist() == [5, 5, 5, 5, 0, 0]


def test_bad_names_settings_and_families_are_named():
    train, family = toy_task()
    spec = tg.ClassIs(1)
    with pytest.raises(tg.InvalidArgumentError, match="name must be one of"):
        run_baseline("madry", trigger_model(), train, spec, family)
    with pytest.raises(tg.InvalidArgumentError, match="no setting.*epsilon"):
        run_baseline("pgd", trigger_model(), train, spec, family, epsilon=0.1)
    with pytest.raises(tg.InvalidArgumentError, match="pgd_steps must be a positive int"):
        run_baseline("pgd", trigger_model(), train, spec, family, pgd_steps=0)
    with pytest.raises(tg.InvalidArgumentError, match="steps must be a positive int"):
        run_baseline("standard", trigger_model(), train, spec, family, steps=0)
    with pytest.raises(tg.InvalidArgumentError, match="no activation"):
        run_baseline("lat", trigger_model(), train, spec, family, **FAST)
    with pytest.raises(tg.InvalidArgumentError, match="layer must be"):
        run_baseline("lat", trigger_model(), train, spec, family, layer=1, **FAST)
    with pytest.raises(tg.InvalidArgumentError, match="nn.Sequential"):
        run_baseline("lat", nn.Flatten(), train, spec, family, **FAST)
    with pytest.raises(tg.UnsupportedError, match="needs a PatchFamily"):
        run_baseline("pgd", trigger_model(), train, spec, _NotPatches(family), **FAST)
    with pytest.raises(tg.UnsupportedError, match="smooth surrogate"):
        run_baseline("pgd", trigger_model(), train, tg.Predicate(lambda x, y: y[:, 1] > 0), family)
    with pytest.raises(tg.ShapeMismatchError, match="family's are"):
        run_baseline("standard", trigger_model(), (torch.zeros(5, 3, 3), torch.zeros(5)), spec, family)


class _NotPatches(tg.Family):
    """A family that is not a PatchFamily (wraps one)."""

    def __init__(self, inner):
        self.inner, self.event_shape = inner, inner.event_shape

    def candidates(self, n, generator):
        return self.inner.candidates(n, generator)

    def member(self, params):
        return self.inner.member(params)

    def constraint(self):
        return "patches, wrapped"
