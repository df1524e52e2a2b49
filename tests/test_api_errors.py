"""Bad input to the public API gives tailguard's own errors, naming the problem."""

import math

import pytest
import torch
from torch import nn

import tailguard as tg


class NaNModel(nn.Module):
    def forward(self, x):
        y = x.reshape(x.shape[0], -1)[:, :2].clone()
        y[0, 0] = float("nan")
        return y


class WrongBatchModel(nn.Module):
    def forward(self, x):
        return torch.zeros(3, 2)


def _linear(d_in=4, d_out=2):
    torch.manual_seed(0)
    return nn.Linear(d_in, d_out)


def test_input_shape_mismatch_between_dist_and_model():
    with pytest.raises(tg.ShapeMismatchError, match="model failed on inputs of shape"):
        tg.estimate(_linear(4), tg.Gaussian(torch.zeros(7)), tg.ClassIs(1), method="mc", budget=100)


def test_nan_model_output_is_reported():
    with pytest.raises(tg.ModelOutputError, match="NaN or inf"):
        tg.estimate(NaNModel(), tg.Gaussian(torch.zeros(4)), tg.ClassIs(1), method="mc", budget=100)


def test_model_returning_wrong_batch_size():
    with pytest.raises(tg.ModelOutputError, match="batch of"):
        tg.estimate(WrongBatchModel(), tg.Gaussian(torch.zeros(4)), tg.ClassIs(1), "mc", 100)


def test_spec_returning_wrong_shape():
    bad = tg.Predicate(lambda x, y: torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(tg.ShapeMismatchError, match="Predicate fn returned shape"):
        tg.estimate(_linear(), tg.Gaussian(torch.zeros(4)), bad, method="mc", budget=10)


def test_predicate_returning_a_margin_instead_of_a_verdict_is_refused():
    """A float answer would be truthy almost everywhere: p = 1, silently, without the check."""
    margin = tg.Predicate(lambda x, y: y[:, 0])
    with pytest.raises(tg.InvalidArgumentError, match="must return booleans"):
        tg.estimate(_linear(), tg.Gaussian(torch.zeros(4)), margin, method="mc", budget=100)
    as_ints = tg.Predicate(lambda x, y: (y[:, 0] > 0).int())
    as_bools = tg.Predicate(lambda x, y: y[:, 0] > 0)
    dist = tg.Gaussian(torch.zeros(4))
    assert (tg.estimate(_linear(), dist, as_ints, method="mc", budget=1000, seed=0).log10_p
            == tg.estimate(_linear(), dist, as_bools, method="mc", budget=1000, seed=0).log10_p)


@pytest.mark.parametrize("text, named", [
    ("{not json", "not an estimate's JSON"),
    ('{"a": 1}', "missing fields"),
    ("[1, 2]", "JSON object"),
    ('{"log10_p": "x", "ci_log10": [0, 1], "n_model_calls": 1, "method": "mc"}', "log10_p"),
    ('{"log10_p": -1, "ci_log10": [0], "n_model_calls": 1, "method": "mc"}', "ci_log10"),
    ('{"log10_p": -1, "ci_log10": [-2, 0], "n_model_calls": -3, "method": "mc"}', "n_model_calls"),
])
def test_estimate_from_json_refuses_what_is_not_an_estimate(text, named):
    with pytest.raises(tg.InvalidArgumentError, match=named):
        tg.Estimate.from_json(text)


def test_class_index_beyond_model_outputs():
    with pytest.raises(tg.ShapeMismatchError, match="only 2 outputs"):
        tg.estimate(_linear(), tg.Gaussian(torch.zeros(4)), tg.ClassIs(5), method="mc", budget=10)


def test_output_index_out_of_range():
    with pytest.raises(tg.ShapeMismatchError, match="out of range"):
        tg.estimate(_linear(), tg.Gaussian(torch.zeros(4)), tg.OutputAbove(9, 0.0), "mc", 10)


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(tg.InvalidArgumentError, match="unknown method 'splittin'.*mc"):
        tg.estimate(_linear(), tg.Gaussian(torch.zeros(4)), tg.ClassIs(1), method="splittin")


def test_misspelt_setting_is_an_error_not_ignored():
    with pytest.raises(tg.InvalidArgumentError, match="no setting.*batchsize"):
        tg.estimate(_linear(), tg.Gaussian(torch.zeros(4)), tg.ClassIs(1), "mc", 10, batchsize=5)


@pytest.mark.parametrize("budget", [0, -5, 2.5, True])
def test_invalid_budget(budget):
    with pytest.raises(tg.BudgetError, match="budget"):
        tg.estimate(_linear(), tg.Gaussian(torch.zeros(4)), tg.ClassIs(1), "mc", budget)


def test_invalid_arguments_name_themselves():
    dist = tg.Gaussian(torch.zeros(4))
    with pytest.raises(tg.InvalidArgumentError, match="model"):
        tg.estimate("not a model", dist, tg.ClassIs(1))
    with pytest.raises(tg.InvalidArgumentError, match="dist"):
        tg.estimate(_linear(), torch.zeros(4), tg.ClassIs(1))
    with pytest.raises(tg.InvalidArgumentError, match="spec"):
        tg.estimate(_linear(), dist, lambda x, y: x)
    with pytest.raises(tg.InvalidArgumentError, match="seed"):
        tg.estimate(_linear(), dist, tg.ClassIs(1), "mc", 10, seed="zero")
    with pytest.raises(tg.InvalidArgumentError, match="confidence"):
        tg.estimate(_linear(), dist, tg.ClassIs(1), "mc", 10, confidence=95)
    with pytest.raises(tg.InvalidArgumentError, match="k must"):
        tg.ClassIs(-1)
    with pytest.raises(tg.InvalidArgumentError, match="threshold"):
        tg.OutputAbove(0, float("inf"))


def test_errors_are_value_or_type_errors():
    assert issubclass(tg.ShapeMismatchError, ValueError)
    assert issubclass(tg.UnsupportedError, TypeError)
    assert issubclass(tg.BudgetError, ValueError)


def test_mc_estimate_matches_exact_linear_probability():
    model = nn.Linear(3, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0, -2.0]]))
        model.bias.zero_()
    est = tg.estimate(model, tg.Gaussian(torch.zeros(3)), tg.OutputAbove(0, 6.0), "mc", 400_000)
    exact = math.log10(0.5 * math.erfc(6.0 / 3.0 / math.sqrt(2)))
    assert est.ci_log10[0] <= exact <= est.ci_log10[1]
    assert abs(est.log10_p - exact) < 0.05
    assert est.n_model_calls == 400_000


def test_model_mode_is_restored_after_estimation():
    model = nn.Sequential(nn.Linear(4, 2), nn.Dropout(0.5))
    model.train()
    tg.estimate(model, tg.Gaussian(torch.zeros(4)), tg.ClassIs(1), "mc", 100)
    assert model.training


@pytest.mark.parametrize("make", [lambda: tg.ClassIs(-1), lambda: tg.OutputAbove(-1, 0.0)])
def test_negative_indices_are_refused_alike(make):
    with pytest.raises(tg.InvalidArgumentError, match=r"must be a non-negative int, got -1"):
        make()


def test_output_index_counts_from_zero_only():
    y = torch.tensor([[1.0, 5.0]])
    assert tg.OutputAbove(1, 2.0).score(torch.zeros(1, 2), y).item() == 3.0
    with pytest.raises(tg.ShapeMismatchError, match="out of range"):
        tg.OutputAbove(2, 0.0).score(torch.zeros(1, 2), y)


class CountingModel(nn.Module):
    """Counts forward calls: a bad argument must be refused before the first one."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def _game():
    from ._toy_backdoor import toy_task

    return toy_task()


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"budget": 0}, "budget must be a positive int"),
        ({"budget": 500}, "budget 500 is too small"),
        ({"seed": "zero"}, "seed must be"),
        ({"method": "magic"}, "method: unknown method 'magic'"),
        ({"method": "splitting", "final_fraction": 0.02}, "method .splitting. needs at least 1,400"),
        ({"steps": 0}, "steps must be a positive int"),
        ({"samples": 2.5}, "samples must be a positive int"),
        ({"lr": float("nan")}, "lr must be a finite number > 0"),
        ({"on_step": 3}, "on_step must be callable"),
        ({"colour": 1}, "unknown attack setting"),
    ],
)
def test_attack_refuses_bad_arguments_before_calling_the_model(kwargs, named):
    _, family = _game()
    model = CountingModel()
    with pytest.raises(tg.InvalidArgumentError, match=named):
        tg.attack(model, tg.ClassIs(1), family, **{"budget": 30_000, **kwargs})
    assert model.calls == 0


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"steps": 0}, "steps must be a positive int"),
        ({"held_out": 0}, "held_out must be a positive int"),
        ({"eval_every": True}, "eval_every must be a positive int"),
        ({"eval_method": "magic"}, "eval_method: unknown method 'magic'"),
        ({"eval_method": "splitting", "eval_budget": 10}, "eval_method 'splitting' needs at least"),
        ({"eval_method": "qld"}, "eval_method 'qld' cannot be used here"),
        ({"lam": -1.0}, "lam must be a finite number > 0"),
        ({"deploy_weight": -1.0}, "deploy_weight must be >= 0"),
        ({"adversary_floor": float("-inf")}, "adversary_floor must be a finite number"),
        ({"seed": 1.5}, "seed must be an int"),
        ({"resume": "yes", "checkpoint_dir": "x"}, "resume must be True or False"),
        ({"test": (torch.zeros(3, 5, 5), torch.zeros(3))}, "test X has inputs of shape"),
        ({"test": (torch.zeros(3, 4, 4), torch.zeros(2))}, "test X has 3 rows but y has 2"),
        ({"deployment": torch.zeros(4, 4)}, "deployment must be a tailguard distribution"),
    ],
)
def test_harden_refuses_bad_arguments_before_any_training(kwargs, named):
    train, family = _game()
    model = CountingModel()
    with pytest.raises(tg.TailguardError, match=named):
        tg.harden(model, train=train, spec=tg.ClassIs(1), family=family, **{"steps": 2, **kwargs})
    assert model.calls == 0


@pytest.mark.parametrize("labels, named", [
    (torch.full((10,), 12), "must be in \\[0, 9\\]"),
    (torch.full((10,), -1), "must be in \\[0, 9\\]"),
    (torch.full((10,), 0.5), "whole class indices"),
    (torch.zeros(10, 2, dtype=torch.long), "shape \\(n,\\)"),
])
def test_harden_refuses_labels_that_are_not_class_indices_of_the_model(labels, named):
    """Out-of-range labels reached cross-entropy as a torch IndexError; 0.5 was truncated to 0."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    family = tg.PatchFamily(torch.rand(5, 8, 8), 3, 0.1)
    with pytest.raises(tg.InvalidArgumentError, match=named):
        tg.harden(model, train=(torch.rand(10, 8, 8), labels), spec=tg.ClassIs(1), family=family, steps=1)


def test_harden_resume_checks_its_checkpoint_before_any_training(tmp_path):
    train, family = _game()
    model = CountingModel()
    with pytest.raises(tg.InvalidArgumentError, match="no checkpoint at"):
        tg.harden(model, train=train, spec=tg.ClassIs(1), family=family, checkpoint_dir=tmp_path, resume=True)
    assert model.calls == 0
