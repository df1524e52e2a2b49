"""Argument validation shared by the distributions."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InvalidArgumentError


def as_float_tensor(value: object, name: str) -> Tensor:
    """Convert to a floating tensor (keeping autograd) and reject NaN/inf."""
    try:
        t = value if isinstance(value, Tensor) else torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InvalidArgumentError(f"{name} must be a tensor or array of numbers") from exc
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if not torch.isfinite(t.detach()).all():
        raise InvalidArgumentError(f"{name} contains NaN or inf")
    return t


def positive(t: Tensor, name: str) -> Tensor:
    if (t.detach() <= 0).any():
        raise InvalidArgumentError(f"{name} must be > 0, got min {t.detach().min().item():.3g}")
    return t
