"""Case configurations (TOML validated by pydantic), and the weights they name (``tailguard.weights``).

A case file names everything one estimate needs::

    [model]
    factory = "tailguard.models:mlp"     # a registered factory returning an nn.Module
    kwargs = { in_dim = 64, hidden = 32, out_dim = 10 }
    weights = "digits_mlp.safetensors"   # optional, relative to this file

    [distribution]
    kind = "noisy_empirical"             # or "gaussian" (mean, std | cov)
    points = "sklearn:digits"            # or a .safetensors tensor file
    noise_std = 0.3

    [spec]
    kind = "class_is"                    # or "output_above" (index, threshold)
    k = 0

    [estimate]
    method = "auto"
    budget = 100000

Configuration is data. ``factory`` names a factory the user registered
(``@tailguard.register_model`` or a ``tailguard.models`` entry point) or a public
function of a module the user trusts explicitly (``trust_modules``, the CLI's
``--trust-module``); nothing else is imported or called (see tailguard.models).
Weight files are read with safetensors, which holds only tensors and a JSON
header, so a hostile file cannot run code the way an unpickled ``torch.load``
file can. Every mistake becomes a ConfigError naming the file and the key, or a
WeightsError naming the weight file.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import Tensor, nn

from .dists import Distribution, Gaussian, NoisyEmpirical
from .errors import ConfigError, InvalidArgumentError, TailguardError, WeightsError, require_extra
from .estimate import estimate
from .estimators.base import available, build
from .families import Family, GaussianShift, PatchFamily, PerturbationBall
from .models import find_factory
from .result import Estimate
from .specs import ClassIs, OutputAbove, Spec
from .weights import load_weights, read_safetensors

# --------------------------------------------------------------------------------------------
# config schema
# --------------------------------------------------------------------------------------------


class _Section(BaseModel):
    """Strict tables: misspelt keys and wrongly typed values are errors, never ignored."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _finite_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _number_list(v: Any, positive: bool = False) -> list[Any]:
    """A (possibly nested) non-empty list of finite numbers, each > 0 if ``positive``."""
    if not isinstance(v, list) or not v:
        raise ValueError("must be a non-empty list of numbers")
    flat = [x for row in v for x in (row if isinstance(row, list) else [row])]
    if not all(_finite_number(x) for x in flat):
        raise ValueError("must contain only finite numbers")
    if positive and min(flat) <= 0:
        raise ValueError(f"must be > 0 everywhere, got {min(flat)}")
    return v


class ModelSection(_Section):
    """factory: a registered name (tailguard.models.find_factory decides what it may be)."""

    factory: Annotated[str, Field(min_length=1)]
    kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = None


class GaussianSection(_Section):
    """mean: a list (nested for image shapes) or {dim = d, value = c}; std scalar/list, or cov."""

    kind: Literal["gaussian"]
    mean: Any
    std: Any = None
    cov: Any = None

    @field_validator("mean")
    @classmethod
    def _mean(cls, v: Any) -> Any:
        if isinstance(v, dict):
            if set(v) != {"dim", "value"}:
                raise ValueError("a constant mean needs exactly the keys 'dim' and 'value'")
            if not isinstance(v["dim"], int) or isinstance(v["dim"], bool) or v["dim"] < 1:
                raise ValueError(f"dim must be a positive int, got {v['dim']!r}")
            if not _finite_number(v["value"]):
                raise ValueError(f"value must be a finite number, got {v['value']!r}")
            return [float(v["value"])] * v["dim"]
        return _number_list(v)

    @field_validator("std")
    @classmethod
    def _std(cls, v: Any) -> Any:
        if v is None or isinstance(v, list):
            return v if v is None else _number_list(v, positive=True)
        if not _finite_number(v) or v <= 0:
            raise ValueError(f"must be a number > 0 or a list of them, got {v!r}")
        return float(v)

    @field_validator("cov")
    @classmethod
    def _cov(cls, v: Any) -> Any:
        if v is None:
            return v
        if not isinstance(v, list) or not all(isinstance(row, list) for row in v):
            raise ValueError("must be a matrix: a list of rows")
        return _number_list(v)


class NoisyEmpiricalSection(_Section):
    """points: "sklearn:digits" (optionally filtered by ``classes``) or a .safetensors file."""

    kind: Literal["noisy_empirical"]
    points: str
    tensor: str | None = None
    classes: list[Annotated[int, Field(ge=0, le=9)]] | None = None
    noise_std: Annotated[float, Field(gt=0, allow_inf_nan=False)]


class ClassIsSection(_Section):
    kind: Literal["class_is"]
    k: Annotated[int, Field(ge=0)]


class OutputAboveSection(_Section):
    kind: Literal["output_above"]
    index: Annotated[int, Field(ge=0)]
    threshold: Annotated[float, Field(allow_inf_nan=False)]


class EstimateSection(_Section):
    method: str = "auto"
    budget: Annotated[int, Field(ge=1)] = 300_000
    seed: Annotated[int, Field(ge=0)] = 0
    confidence: Annotated[float, Field(gt=0, lt=1)] = 0.95
    settings: dict[str, Any] = Field(default_factory=dict)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v != "auto" and v not in available():
            raise ValueError(f"unknown method {v!r}; choose one of auto, {', '.join(available())}")
        return v


class CaseConfig(_Section):
    model: ModelSection
    distribution: Annotated[GaussianSection | NoisyEmpiricalSection, Field(discriminator="kind")]
    spec: Annotated[ClassIsSection | OutputAboveSection, Field(discriminator="kind")]
    estimate: EstimateSection = Field(default_factory=EstimateSection)


class ExamplesSection(_Section):
    """Labelled examples: "sklearn:digits" (optionally some ``classes``) or a .safetensors file
    holding tensors ``inputs`` (N, *shape) and ``labels`` (N,)."""

    points: str
    inputs: str = "inputs"
    labels: str = "labels"
    classes: list[Annotated[int, Field(ge=0, le=9)]] | None = None


class PatchFamilySection(_Section):
    """Any k x k patch anywhere on the base images (the training inputs of ``base_classes``)."""

    kind: Literal["patch"]
    patch_size: Annotated[int, Field(ge=1)]
    noise_std: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    base_classes: list[Annotated[int, Field(ge=0)]] | None = None


class PerturbationFamilySection(_Section):
    """One universal perturbation of the base images within an l_inf or l2 ball."""

    kind: Literal["perturbation"]
    epsilon: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    noise_std: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    norm: Literal["linf", "l2"] = "linf"
    clamp: tuple[float, float] | None = None
    base_classes: list[Annotated[int, Field(ge=0)]] | None = None


class ShiftFamilySection(_Section):
    """Gaussians within a KL ball of ``max_kl`` nats around the base Gaussian."""

    kind: Literal["gaussian_shift"]
    base: GaussianSection
    max_kl: Annotated[float, Field(gt=0, allow_inf_nan=False)]


class HardenSection(_Section):
    """Seed and ``tailguard.harden`` settings (HardenSettings names)."""

    seed: Annotated[int, Field(ge=0)] = 0
    settings: dict[str, Any] = Field(default_factory=dict)


FamilySection = PatchFamilySection | PerturbationFamilySection | ShiftFamilySection


class HardenConfig(_Section):
    model: ModelSection
    train: ExamplesSection
    test: ExamplesSection | None = None
    spec: Annotated[ClassIsSection | OutputAboveSection, Field(discriminator="kind")]
    family: Annotated[FamilySection, Field(discriminator="kind")]
    deployment: Annotated[GaussianSection | NoisyEmpiricalSection, Field(discriminator="kind")] | None = None
    harden: HardenSection = Field(default_factory=HardenSection)


_TAGGED = ("distribution", "spec", "family", "deployment")


def _key(loc: tuple[Any, ...]) -> str:
    """pydantic's error location as a dotted TOML key (the union's ``kind`` tag dropped)."""
    parts: list[str] = []
    for i, p in enumerate(loc):
        if isinstance(p, int):
            parts.append(f"[{p}]")
        elif not (i == 1 and loc[0] in _TAGGED):
            parts.append(("." if parts else "") + str(p))
    return "".join(parts) or "(top level)"


def _describe(exc: ValidationError) -> str:
    msgs = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        msgs.append(f"{_key(err['loc'])}: {msg}")
    return "; ".join(msgs)


def read_toml(path: Path, what: str = "config file") -> dict[str, Any]:
    """The parsed TOML file, or ConfigError naming the file (``what`` says which kind it is)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read {what} ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}") from exc


def load_config(path: str | Path) -> CaseConfig:
    """Parse and validate a case file; ConfigError naming the file and the key on any mistake."""
    path = Path(path)
    raw = read_toml(path)
    try:
        config = CaseConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc)}") from exc
    if config.estimate.settings:
        if config.estimate.method == "auto":
            raise ConfigError(f"{path}: estimate.settings: need an explicit estimate.method")
        try:
            build(config.estimate.method, config.estimate.settings)
        except (TailguardError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: estimate.settings: {exc}") from exc
    return config


# --------------------------------------------------------------------------------------------
# building the objects
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EstimateOptions:
    """The keyword arguments of ``tailguard.estimate`` a case file sets."""

    method: str = "auto"
    budget: int = 300_000
    seed: int = 0
    confidence: float = 0.95
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    """A model, a distribution, a spec and estimate options, as built from a case file."""

    model: nn.Module
    dist: Distribution
    spec: Spec
    options: EstimateOptions
    config: CaseConfig
    path: Path

    def estimate(self, progress: bool = False, **overrides: Any) -> Estimate:
        """Run ``tailguard.estimate`` with the file's options; ``overrides`` replace any of them.

        Settings apply only to the file's own method: overriding ``method`` drops them.
        """
        opts = {**self.options.__dict__, **overrides}
        settings = opts.pop("settings") if opts["method"] == self.options.method else {}
        opts.pop("settings", None)
        return estimate(self.model, self.dist, self.spec, progress=progress, **opts, **settings)


def build_model(section: ModelSection, path: Path, trust_modules: Sequence[str] = ()) -> nn.Module:
    """Call the allowed factory with its kwargs, check it made an nn.Module, load weights if given."""
    try:
        factory = find_factory(section.factory, trust_modules)
    except InvalidArgumentError as exc:
        raise ConfigError(f"{path}: model.factory: {exc}") from exc
    try:
        model = factory(**section.kwargs)
    except (TailguardError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: model.kwargs: {section.factory} rejected them ({exc})") from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"{path}: model.factory: {section.factory} returned {type(model).__name__}, "
            "not a torch.nn.Module"
        )
    if section.weights is not None:
        load_weights(model, path.parent / section.weights)
    model.eval()
    return model


def digits_examples(classes: list[int] | None) -> tuple[Tensor, Tensor]:
    """scikit-learn's digits: images (N, 8, 8) float64 in [0, 1] and labels (N,), optionally some classes."""
    datasets: Any = require_extra("sklearn.datasets", "bench")
    bunch = datasets.load_digits()
    images, labels = torch.tensor(bunch.images, dtype=torch.float64) / 16.0, torch.tensor(bunch.target)
    if classes is None:
        return images, labels
    keep = torch.isin(labels, torch.tensor(classes))
    return images[keep], labels[keep]


def digits_points(classes: list[int] | None) -> Tensor:
    """scikit-learn's digits as (N, 8, 8) float64 in [0, 1], optionally only some classes."""
    return digits_examples(classes)[0]


def _tensor_file(points: str, classes: list[int] | None, path: Path, key: str) -> dict[str, Tensor]:
    """The tensors of the .safetensors file a table names (``classes`` belong to sklearn:digits only)."""
    if classes is not None:
        raise ConfigError(f"{path}: {key}.classes: only valid with points = 'sklearn:digits'")
    try:
        return read_safetensors(path.parent / points)[0]
    except WeightsError as exc:
        raise ConfigError(f"{path}: {key}.points: {exc}") from exc


def _points(section: NoisyEmpiricalSection, path: Path) -> Tensor:
    """The mixture centres (N, *event_shape) a noisy_empirical distribution is built on."""
    if section.points == "sklearn:digits":
        if section.tensor is not None:
            raise ConfigError(f"{path}: distribution.tensor: only valid with a tensor file")
        return digits_points(section.classes)
    tensors = _tensor_file(section.points, section.classes, path, "distribution")
    name = section.tensor
    if name is None and len(tensors) != 1:
        raise ConfigError(
            f"{path}: distribution.tensor: {section.points} holds {len(tensors)} tensors; name one"
        )
    name = name if name is not None else next(iter(tensors))
    if name not in tensors:
        raise ConfigError(f"{path}: distribution.tensor: no tensor {name!r} in {section.points}")
    return tensors[name].double()


def build_distribution(section: GaussianSection | NoisyEmpiricalSection, path: Path) -> Distribution:
    try:
        if isinstance(section, GaussianSection):
            cov = None if section.cov is None else torch.tensor(section.cov, dtype=torch.float64)
            return Gaussian(torch.tensor(section.mean, dtype=torch.float64), section.std, cov)
        return NoisyEmpirical(_points(section, path), section.noise_std)
    except (TailguardError, ValueError, TypeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{path}: distribution: {exc}") from exc


def build_spec(section: ClassIsSection | OutputAboveSection) -> Spec:
    if isinstance(section, ClassIsSection):
        return ClassIs(section.k)
    return OutputAbove(section.index, section.threshold)


def load_case(path: str | Path, trust_modules: Sequence[str] = ()) -> Case:
    """Read a case file and build its model (with weights), distribution and spec.

    ``trust_modules``: modules whose public functions the file may name as
    ``"module:function"`` factories, besides the registered ones. Trust only code
    you would run yourself: the file chooses which function and its arguments.
    """
    path = Path(path)
    config = load_config(path)
    model = build_model(config.model, path, trust_modules)
    dist = build_distribution(config.distribution, path)
    est = config.estimate
    options = EstimateOptions(est.method, est.budget, est.seed, est.confidence, dict(est.settings))
    return Case(model, dist, build_spec(config.spec), options, config, path)


@dataclass(frozen=True)
class HardenRun:
    """What ``tailguard.harden`` needs, as built from a harden file (``tailguard harden --config``)."""

    model: nn.Module
    train: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor] | None
    spec: Spec
    family: Family
    deployment: Distribution | None
    seed: int
    settings: dict[str, Any]


def _examples(section: ExamplesSection, path: Path, key: str) -> tuple[Tensor, Tensor]:
    """(inputs, labels) of a ``train`` or ``test`` table."""
    if section.points == "sklearn:digits":
        x, y = digits_examples(section.classes)
        return x.float(), y
    tensors = _tensor_file(section.points, section.classes, path, key)
    for name in (section.inputs, section.labels):
        if name not in tensors:
            raise ConfigError(f"{path}: {key}: no tensor {name!r} in {section.points}")
    return tensors[section.inputs], tensors[section.labels]


def _base(train: tuple[Tensor, Tensor], classes: list[int] | None) -> Tensor:
    x, y = train
    return x if classes is None else x[torch.isin(y, torch.tensor(classes))]


def build_family(section: FamilySection, train: tuple[Tensor, Tensor], path: Path) -> Family:
    try:
        if isinstance(section, PatchFamilySection):
            return PatchFamily(_base(train, section.base_classes), section.patch_size, section.noise_std)
        if isinstance(section, PerturbationFamilySection):
            return PerturbationBall(_base(train, section.base_classes), section.epsilon, section.noise_std,
                                    section.norm, section.clamp)
        base = build_distribution(section.base, path)
        assert isinstance(base, Gaussian)
        return GaussianShift(base, section.max_kl)
    except (TailguardError, ValueError, TypeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{path}: family: {exc}") from exc


def load_harden_run(path: str | Path, trust_modules: Sequence[str] = ()) -> HardenRun:
    """Read a harden file and build its model, data, spec, family and deployment distribution.

    The settings are checked here (unknown names and bad values are ConfigErrors);
    ``trust_modules`` as for ``load_case``.
    """
    from .harden.trainer import HardenSettings, reject_unknown_settings

    path = Path(path)
    try:
        config = HardenConfig.model_validate(read_toml(path))
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc)}") from exc
    try:
        reject_unknown_settings(HardenSettings, config.harden.settings, "harden")
        HardenSettings(**config.harden.settings)
    except (TailguardError, TypeError) as exc:
        raise ConfigError(f"{path}: harden.settings: {exc}") from exc
    model = build_model(config.model, path, trust_modules)
    train = _examples(config.train, path, "train")
    test = None if config.test is None else _examples(config.test, path, "test")
    deployment = None if config.deployment is None else build_distribution(config.deployment, path)
    return HardenRun(model, train, test, build_spec(config.spec), build_family(config.family, train, path),
                     deployment, config.harden.seed, dict(config.harden.settings))
