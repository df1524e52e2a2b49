"""Case files and weights: valid files build working objects, every mistake names its key or file."""

import math
import pickle
import re
from pathlib import Path

import pytest
import torch
from scipy.special import log_ndtr
from torch import nn

import tailguard as tg
from tailguard.io import load_case, load_config
from tailguard.models import digits_classifier, linear, mlp
from tailguard.weights import load_weights, save_weights, weights_metadata

LINEAR_CASE = """
[model]
factory = "tailguard.models:linear"
kwargs = {{ weight = [[0.6, 0.8]], bias = [0.0] }}

[distribution]
kind = "gaussian"
mean = {mean}
std = {std}

[spec]
kind = "output_above"
index = 0
threshold = 1.0

[estimate]
method = "mc"
budget = 20000
seed = 3
"""


def write(tmp_path: Path, text: str, name: str = "case.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def linear_case(tmp_path: Path, mean: str = "[0.0, 0.0]", std: str = "1.0") -> Path:
    return write(tmp_path, LINEAR_CASE.format(mean=mean, std=std))


def test_valid_case_runs_and_matches_the_exact_answer(tmp_path):
    case = load_case(linear_case(tmp_path))
    est = case.estimate()
    exact = float(log_ndtr(-1.0)) / math.log(10)  # y = 0.6 x1 + 0.8 x2 ~ N(0, 1)
    assert est.method == "mc" and est.n_model_calls == 20000 and est.seed == 3
    assert est.ci_log10[0] <= exact <= est.ci_log10[1]
    assert abs(est.log10_p - exact) < 0.03
    again = case.estimate()
    assert again.log10_p == est.log10_p  # same seed, same answer


def test_overrides_replace_file_options(tmp_path):
    est = load_case(linear_case(tmp_path)).estimate(budget=500, seed=1)
    assert est.n_model_calls == 500 and est.seed == 1


def test_constant_mean_and_per_dim_std(tmp_path):
    case = load_case(linear_case(tmp_path, mean="{ dim = 2, value = 0.5 }", std="[1.0, 2.0]"))
    assert torch.equal(case.dist.mean, torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert torch.equal(case.dist.covariance().diagonal(), torch.tensor([1.0, 4.0], dtype=torch.float64))


def test_full_covariance(tmp_path):
    text = LINEAR_CASE.format(mean="[0.0, 0.0]", std="1.0").replace(
        "std = 1.0", "cov = [[1.0, 0.5], [0.5, 2.0]]"
    )
    case = load_case(write(tmp_path, text))
    assert torch.allclose(case.dist.covariance(), torch.tensor([[1.0, 0.5], [0.5, 2.0]], dtype=torch.float64))


def test_noisy_empirical_from_a_tensor_file(tmp_path):
    from safetensors.torch import save_file

    centres = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    save_file({"centres": centres}, tmp_path / "pts.safetensors")
    text = LINEAR_CASE.format(mean="0", std="0").split("[distribution]")[0] + (
        '[distribution]\nkind = "noisy_empirical"\npoints = "pts.safetensors"\nnoise_std = 0.2\n'
        '[spec]\nkind = "class_is"\nk = 0\n'
    )
    text = text.replace("[[0.6, 0.8]], bias = [0.0]", "[[1.0, 0.0], [0.0, 1.0]]")
    case = load_case(write(tmp_path, text))
    assert isinstance(case.dist, tg.NoisyEmpirical) and case.dist.n_components == 5
    assert case.options.method == "auto"


def test_weights_are_loaded_relative_to_the_config(tmp_path):
    source = mlp(2, 4, 1, depth=1, seed=7)
    (tmp_path / "w").mkdir()
    save_weights(source, tmp_path / "w" / "m.safetensors")
    text = LINEAR_CASE.format(mean="[0.0, 0.0]", std="1.0").replace(
        'factory = "tailguard.models:linear"\nkwargs = { weight = [[0.6, 0.8]], bias = [0.0] }',
        'factory = "tailguard.models:mlp"\nkwargs = { in_dim = 2, hidden = 4, out_dim = 1, depth = 1 }\n'
        'weights = "w/m.safetensors"',
    )
    case = load_case(write(tmp_path, text))
    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(case.model(x), source(x))


BAD_CASES = {
    "unknown key": (
        ("threshold = 1.0", "threshold = 1.0\nthreshhold = 2.0"),
        r"spec\.threshhold: Extra inputs",
    ),
    "wrong type": (
        ("budget = 20000", 'budget = "many"'),
        r"estimate\.budget: Input should be a valid integer",
    ),
    "float budget": (("budget = 20000", "budget = 2.5"), r"estimate\.budget"),
    "negative std": (("std = 1.0", "std = -1.0"), r"distribution\.std: must be a number > 0"),
    "negative std entry": (("std = 1.0", "std = [1.0, -2.0]"), r"distribution\.std: must be > 0"),
    "unregistered factory": (
        ("tailguard.models:linear", "tailguard.models:nope"),
        r"model\.factory: factory 'tailguard\.models:nope' is not a registered model factory",
    ),
    "unregistered module": (
        ("tailguard.models:linear", "no_such_package.mod:f"),
        r"model\.factory: .*--trust-module no_such_package\.mod",
    ),
    "empty factory": (('"tailguard.models:linear"', '""'), r"model\.factory: String should have at least 1"),
    "negative output index": (("index = 0", "index = -1"), r"spec\.index: Input should be greater than"),
    "bad kwargs": (("bias = [0.0]", "bias = [0.0], colour = 1"), r"model\.kwargs"),
    "unknown kind": (('kind = "gaussian"', 'kind = "gaussan"'), r"distribution: Input tag 'gaussan'"),
    "unknown method": (('method = "mc"', 'method = "magic"'), r"estimate\.method: unknown method 'magic'"),
    "bad setting": (
        ("seed = 3", "seed = 3\nsettings = { batch_sise = 10 }"),
        r"estimate\.settings: .*batch_sise",
    ),
    "confidence out of range": (("seed = 3", "seed = 3\nconfidence = 1.5"), r"estimate\.confidence"),
    "missing section": (("[spec]", "[spek]"), r"spec: Field required"),
    "mean and std disagree": (("std = 1.0", "std = [1.0, 1.0, 1.0]"), r"distribution: std has 3 entries"),
    "bad weights path": (("bias = [0.0] }", "bias = [0.0] }\nweights = 'none.safetensors'"), None),
}


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_each_bad_config_names_its_key_and_file(tmp_path, name):
    (old, new), pattern = BAD_CASES[name]
    text = LINEAR_CASE.format(mean="[0.0, 0.0]", std="1.0")
    assert old in text
    path = write(tmp_path, text.replace(old, new, 1))
    if pattern is None:  # a weights file that is not there is a WeightsError naming it
        with pytest.raises(tg.WeightsError, match="none.safetensors"):
            load_case(path)
        return
    with pytest.raises(tg.ConfigError) as info:
        load_case(path)
    message = str(info.value)
    assert str(path) in message
    assert re.search(pattern, message), message


def test_malformed_toml_names_the_line(tmp_path):
    path = write(tmp_path, '[model]\nfactory = "x:y"\nkwargs = {in_dim = \n')
    with pytest.raises(tg.ConfigError, match=r"malformed TOML.*line 3"):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(tg.ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml")


# --- weights ------------------------------------------------------------------------------


def test_weights_round_trip_with_metadata(tmp_path):
    source = mlp(64, 8, 10, seed=1)
    path = save_weights(source, tmp_path / "m.safetensors", metadata={"factory": "tailguard.models:mlp"})
    target = load_weights(mlp(64, 8, 10, seed=2), path)
    for (k, a), b in zip(source.state_dict().items(), target.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert weights_metadata(path) == {"factory": "tailguard.models:mlp"}


class _Marker:
    """Unpickling this would create a file: proof that a loader ran code from the file."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good = save_weights(mlp(4, 3, 2), tmp_path / "good.safetensors").read_bytes()
    files = {
        "pickle": pickle.dumps({"1.weight": _Marker(str(tmp_path / "ran"))}),
        "random bytes": torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0))
        .to(torch.uint8)
        .numpy()
        .tobytes(),
        "truncated": good[: len(good) - 16],
        "empty": b"",
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"{name.replace(' ', '_')}.safetensors"
        paths[name].write_bytes(data)
    paths["torch.save zip"] = tmp_path / "model.pt"
    torch.save(mlp(4, 3, 2).state_dict(), paths["torch.save zip"])
    return paths


def test_files_that_are_not_safetensors_raise_weights_error(tmp_path):
    for name, path in _bad_files(tmp_path).items():
        with pytest.raises(tg.WeightsError, match=re.escape(str(path))):
            load_weights(mlp(4, 3, 2), path)
        assert not (tmp_path / "ran").exists(), f"loading the {name} file executed code"


@pytest.mark.parametrize(
    ("name", "named"),
    [
        ("pickle", r"looks like a pickle \(torch\.save\) file"),
        ("torch.save zip", r"looks like a zip archive holding a pickle \(what torch\.save writes\)"),
        ("legacy torch.save", r"looks like a pickle \(torch\.save\) file"),
        ("empty", r"looks like an empty file"),
    ],
)
def test_a_pickle_or_zip_given_as_weights_is_named_and_never_unpickled(tmp_path, name, named):
    paths = _bad_files(tmp_path)
    paths["legacy torch.save"] = tmp_path / "legacy.pt"
    torch.save({"1.weight": _Marker(str(tmp_path / "ran"))}, paths["legacy torch.save"],
               _use_new_zipfile_serialization=False)
    with pytest.raises(tg.WeightsError) as info:
        load_weights(mlp(4, 3, 2), paths[name])
    message = str(info.value)
    assert re.search(named, message), message
    assert "reads weights only from .safetensors" in message and "safetensors.torch.save_file" in message
    assert not (tmp_path / "ran").exists()


def test_a_safetensors_file_whose_header_begins_like_a_pickle_still_loads(tmp_path):
    """Formats are sniffed only after safetensors refused a file: header length 640 is b"\\x80\\x02"."""
    source = mlp(4, 3, 2, seed=3)
    for pad in range(400):
        path = save_weights(source, tmp_path / "m.safetensors", metadata={"pad": "x" * pad})
        if path.read_bytes()[:2] == b"\x80\x02":
            break
    else:
        pytest.fail("no padding gave a header length of 640")
    loaded = load_weights(mlp(4, 3, 2, seed=4), path)
    assert torch.equal(loaded[1].weight, source[1].weight)


def test_shape_mismatch_lists_the_keys(tmp_path):
    path = save_weights(mlp(4, 3, 2, depth=1), tmp_path / "m.safetensors")
    with pytest.raises(tg.WeightsError, match=r"1\.weight: file \(3, 4\) vs model \(5, 4\)"):
        load_weights(mlp(4, 5, 2, depth=1), path)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    path = save_weights(mlp(4, 3, 2, depth=1), tmp_path / "m.safetensors")
    deeper = mlp(4, 3, 2, depth=2)  # has 5.weight and 5.bias that the file lacks
    with pytest.raises(tg.WeightsError, match=r"missing 5\.weight; missing 5\.bias"):
        load_weights(deeper, path)
    renamed = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))  # keys 0.*, 2.*
    with pytest.raises(tg.WeightsError, match=r"unexpected 1\.weight"):
        load_weights(renamed, path)


# --- built-in models ------------------------------------------------------------------------


def test_mlp_is_deterministic_and_takes_images():
    a, b = mlp(64, 16, 10, seed=4), mlp(64, 16, 10, seed=4)
    x = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a(x), b(x)) and a(x).shape == (3, 10)
    assert not torch.equal(a(x), mlp(64, 16, 10, seed=5)(x))


def test_mlp_rejects_unknown_activation():
    with pytest.raises(tg.InvalidArgumentError, match="activation"):
        mlp(4, 4, 2, activation="swish")


def test_linear_has_exactly_the_given_parameters():
    model = linear([[1.0, -2.0]], [0.5])
    assert model(torch.tensor([[3.0, 1.0]])).item() == pytest.approx(1.5)


@pytest.mark.slow
def test_digits_classifier_is_accurate_and_deterministic():
    from tailguard.tasks.digits import accuracy, load_digits_data

    data = load_digits_data()
    model = digits_classifier(epochs=12)
    assert accuracy(model, data.x_test, data.y_test) > 0.9
    again = digits_classifier(epochs=12)
    assert torch.equal(model[1].weight, again[1].weight)
