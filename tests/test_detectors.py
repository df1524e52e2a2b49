"""Neural Cleanse and ABS behave as published on a small trojaned digits model and its clean twin."""

import pytest
import torch
from torch import nn

from tailguard.bench import trojan_zoo as tz
from tailguard.bench.detectors import AbsSettings, NeuralCleanseSettings, abs_scan, neural_cleanse
from tailguard.bench.detectors.neural_cleanse import anomaly_index
from tailguard.errors import InvalidArgumentError, ModelOutputError, ShapeMismatchError, UnsupportedError
from tailguard.tasks.digits import Trigger, load_digits_data, poison, train_classifier, trigger_rate

pytest.importorskip("sklearn")

TARGET = 3
PATCH = Trigger("3x3 checker at (5,1)", torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 0, 1]]), 5, 1)


@pytest.fixture(scope="module")
def twins():
    """(trojaned, clean) MLPs of one seed; the trojan's 3x3 patch sends digits to class 3."""
    data = load_digits_data(test_fraction=0.25, seed=0)
    x_bad, y_bad = poison(data, PATCH, 0.08, seed=1, target=TARGET)
    trojaned = train_classifier(tz.build_model("mlp", 64, 0), x_bad, y_bad, epochs=40, seed=0)
    clean = train_classifier(tz.build_model("mlp", 64, 0), data.x_train, data.y_train, epochs=40, seed=0)
    others = data.x_test[data.y_test != TARGET]
    assert trigger_rate(trojaned, others, PATCH, TARGET) > 0.95
    assert trigger_rate(clean, others, PATCH, TARGET) < 0.2
    return trojaned, clean


@pytest.fixture(scope="module")
def scan_set():
    return tz.scan_inputs(150, seed=0)


def _patch_mask() -> torch.Tensor:
    mask = torch.zeros(8, 8)
    mask[5:8, 1:4] = 1.0
    return mask


def test_neural_cleanse_flags_a_small_patch_and_not_the_clean_twin(twins, scan_set):
    trojaned, clean = twins
    x, y = scan_set
    bad = neural_cleanse(trojaned, x, y, seed=0)
    good = neural_cleanse(clean, x, y, seed=0)
    assert bad.score > 2.0 > good.score  # the paper's threshold on the anomaly index
    assert bad.target == TARGET and bad.details["flagged"] and not good.details["flagged"]
    norms = bad.details["norms"]
    assert norms[TARGET] == min(norms) < 0.6 * sorted(norms)[1]
    # most of the recovered mask lies on the planted patch
    assert bad.trigger_mask is not None and bad.trigger_mask.shape == (8, 8)
    assert float((bad.trigger_mask * _patch_mask()).sum() / bad.trigger_mask.sum()) > 0.4  # chance: 0.14
    assert bad.seconds > 0 and bad.details["cpu_seconds"] > 0 and bad.details["model_calls"] > 0


def test_abs_finds_the_compromised_label_and_scores_the_trojan_higher(twins, scan_set):
    trojaned, clean = twins
    x, y = scan_set
    bad = abs_scan(trojaned, x, y, seed=0)
    good = abs_scan(clean, x, y, seed=0)
    assert bad.target == TARGET
    assert bad.score > 0.9 and bad.score > good.score + 0.05
    assert bad.trigger_mask is not None
    assert float(bad.trigger_mask.sum()) <= 1.5 * AbsSettings().max_mask_fraction * 64
    assert any(c["label"] == TARGET for c in bad.details["candidates"])


def test_verdicts_are_seeded(twins, scan_set):
    trojaned, _ = twins
    x, y = scan_set
    quick = NeuralCleanseSettings(epochs=3)
    a = neural_cleanse(trojaned, x, y, seed=5, settings=quick)
    b = neural_cleanse(trojaned, x, y, seed=5, settings=quick)
    assert a.score == b.score and torch.equal(a.trigger_mask, b.trigger_mask)


def test_labels_default_to_the_models_predictions(twins, scan_set):
    trojaned, _ = twins
    x, _ = scan_set
    verdict = abs_scan(trojaned, x, seed=0, settings=AbsSettings(steps=5, top_neurons=2))
    assert 0.0 <= verdict.score <= 1.0 and verdict.target is not None


def test_anomaly_index_is_the_median_absolute_deviation_of_the_smallest_norm():
    norms = torch.tensor([1.0, 5, 5, 6, 4, 5, 6, 4, 5, 5])
    # median 5; deviations sorted 0,0,0,0,0,1,1,1,1,4 have median 0.5: (5 - 1) / (1.4826 * 0.5)
    assert anomaly_index(norms) == pytest.approx(4 / (1.4826 * 0.5))
    assert anomaly_index(torch.full((10,), 7.0)) == 0.0


def test_images_with_channels_are_accepted():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 10))
    x = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    nc = neural_cleanse(model, x, seed=0, settings=NeuralCleanseSettings(epochs=2))
    ab = abs_scan(model, x, seed=0, settings=AbsSettings(steps=3, top_neurons=1))
    assert nc.trigger_mask.shape == (8, 8) and ab.trigger_mask.shape == (8, 8)


class _NaNModel(nn.Module):
    def forward(self, x):
        return torch.full((x.shape[0], 10), float("nan"))


def test_bad_input_gets_named_errors(twins, scan_set):
    trojaned, _ = twins
    x, y = scan_set
    with pytest.raises(ModelOutputError, match="NaN"):
        neural_cleanse(nn.Sequential(nn.Flatten(), nn.Linear(64, 10), _NaNModel()), x)
    with pytest.raises(ShapeMismatchError, match="images"):
        neural_cleanse(trojaned, x.reshape(-1, 64))
    with pytest.raises(InvalidArgumentError, match=r"\[0, 1\]"):
        abs_scan(trojaned, 2 * x + 1)
    with pytest.raises(InvalidArgumentError, match="NaN"):
        abs_scan(trojaned, torch.full_like(x, float("nan")))
    with pytest.raises(ShapeMismatchError, match="labels"):
        neural_cleanse(trojaned, x, y[:10])
    with pytest.raises(InvalidArgumentError, match="labels"):
        neural_cleanse(trojaned, x, y + 10)
    with pytest.raises(InvalidArgumentError, match="model"):
        abs_scan("not a model", x)  # type: ignore[arg-type]
    with pytest.raises(UnsupportedError, match="nn.ReLU"):
        abs_scan(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), x)
    with pytest.raises(ModelOutputError, match="3 classes"):
        neural_cleanse(nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), x)
    with pytest.raises(InvalidArgumentError, match="epochs"):
        NeuralCleanseSettings(epochs=0)
    with pytest.raises(InvalidArgumentError, match="max_mask_fraction"):
        AbsSettings(max_mask_fraction=0.0)
