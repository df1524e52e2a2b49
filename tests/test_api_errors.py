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
