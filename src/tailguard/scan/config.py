"""Scan files: TOML naming a model and clean images, validated by pydantic, nothing imported.

A scan file::

    [model]                                # as in a case file (tailguard.io)
    factory = "tailguard.models:mlp"
    kwargs = { in_dim = 64, hidden = 32, out_dim = 10, depth = 2 }
    weights = "digits_mlp.safetensors"

    [images]
    source = "sklearn:digits"              # held-out digits with labels, or a .safetensors
    count = 200                            # file with "images" (and optionally "labels")

    [scan]
    budget = 360000
    seed = 0
    settings = { restarts = 4 }            # optional: tailguard.scan.ScanSettings

The model is built exactly as for ``tailguard estimate``: only registered or
explicitly trusted factories, weights through safetensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor, nn

from ..errors import ConfigError, TailguardError, WeightsError
from ..io import ModelSection, build_model, read_toml
from ..tasks.digits import load_digits_data
from ..weights import read_safetensors
from .run import ScanSettings

DIGITS = "sklearn:digits"


class _Strict(BaseModel):
    """Misspelt keys and wrongly typed values are errors, never ignored."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ImagesSection(_Strict):
    source: Annotated[str, Field(min_length=1)]
    count: Annotated[int, Field(ge=2)] | None = None


class ScanSection(_Strict):
    budget: Annotated[int, Field(ge=1)] = 360_000
    seed: Annotated[int, Field(ge=0)] = 0
    settings: dict[str, Any] = Field(default_factory=dict)


class ScanConfig(_Strict):
    model: ModelSection
    images: ImagesSection
    scan: ScanSection = ScanSection()


@dataclass(frozen=True)
class ScanCase:
    """What a scan file describes, built: the model, its clean images and labels, the scan's options."""

    model: nn.Module
    images: Tensor  # (N, H, W) or (N, C, H, W)
    labels: Tensor | None  # (N,)
    options: ScanSection
    path: Path


def _describe(path: Path, exc: ValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return f"{path}: " + "; ".join(parts)


def _images(section: ImagesSection, path: Path) -> tuple[Tensor, Tensor | None]:
    labels: Tensor | None
    if section.source == DIGITS:
        data = load_digits_data()
        images, labels = data.x_test, data.y_test
    else:
        try:
            tensors, _ = read_safetensors(path.parent / section.source)
        except WeightsError as exc:
            raise ConfigError(f"{path}: images.source: {exc}") from exc
        if "images" not in tensors:
            raise ConfigError(f"{path}: images.source: {section.source} holds no tensor named 'images'")
        images, labels = tensors["images"], tensors.get("labels")
    if section.count is not None:
        if section.count > len(images):
            raise ConfigError(f"{path}: images.count: {section.count} asked, {len(images)} available")
        images = images[: section.count]
        labels = None if labels is None else labels[: section.count]
    return images, labels


def load_scan_case(path: str | Path, trust_modules: Sequence[str] = ()) -> ScanCase:
    """Read and check a scan file, then build its model and load its images; ConfigError on any mistake."""
    path = Path(path)
    raw = read_toml(path, "scan file")
    try:
        config = ScanConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(path, exc)) from exc
    try:
        ScanSettings(**config.scan.settings)
    except (TailguardError, TypeError) as exc:
        raise ConfigError(f"{path}: scan.settings: {exc}") from exc
    images, labels = _images(config.images, path)
    model = build_model(config.model, path, trust_modules)
    return ScanCase(model, images, labels, config.scan, path)
