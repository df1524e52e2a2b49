"""Checks of a scan's inputs, made before any search: clear errors, never a deep traceback."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import InvalidArgumentError, ModelOutputError, ShapeMismatchError
from ..oracle import ScoreOracle, eval_mode
from ..specs import ClassIs


def check_images(images: object) -> Tensor:
    """Clean images (N, H, W) or (N, C, H, W), finite, in [0, 1], as float64."""
    if not isinstance(images, Tensor):
        raise InvalidArgumentError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise InvalidArgumentError(f"images must be floating point, got {images.dtype}")
    if images.dim() not in (3, 4) or images.shape[0] < 2:
        raise ShapeMismatchError(
            f"images must have shape (N, H, W) or (N, C, H, W) with N >= 2, got {tuple(images.shape)}"
        )
    x = images.detach().double().cpu()
    if not torch.isfinite(x).all():
        raise InvalidArgumentError("images contain NaN or inf")
    if x.min() < 0 or x.max() > 1:
        raise InvalidArgumentError(
            f"images must have values in [0, 1], got [{float(x.min()):.3g}, {float(x.max()):.3g}]"
        )
    return x


def clean_outputs(model: nn.Module, images: Tensor) -> tuple[Tensor, int]:
    """The model's outputs on the clean images (N, classes) through the oracle, and the class count."""
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    # the spec is not used: outputs() only runs the model through the gate that checks it
    oracle = ScoreOracle.for_model(model, ClassIs(0))
    with torch.no_grad(), eval_mode(model):
        y = oracle.outputs(images)
    if y.dim() != 2 or y.shape[1] < 3:
        raise ModelOutputError(
            f"the model must return (N, classes) scores with at least 3 classes, got {tuple(y.shape)}"
        )
    return y.detach().double().cpu(), int(y.shape[1])


def check_labels(labels: object, n_images: int, n_classes: int) -> Tensor:
    """Integer labels (N,) in [0, classes)."""
    if not isinstance(labels, Tensor):
        raise InvalidArgumentError(f"labels must be a torch.Tensor or None, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise InvalidArgumentError(f"labels must be integers, got {labels.dtype}")
    if labels.shape != (n_images,):
        raise ShapeMismatchError(
            f"labels must have shape ({n_images},), one per image, got {tuple(labels.shape)}"
        )
    if labels.min() < 0 or labels.max() >= n_classes:
        raise InvalidArgumentError(
            f"labels must be in [0, {n_classes}) for a model with {n_classes} outputs, "
            f"got [{int(labels.min())}, {int(labels.max())}]"
        )
    return labels.long().cpu()
