"""Catastrophe specifications C(x, y) as scores: catastrophe iff score > 0.

A continuous score lets rare-event methods climb towards the catastrophe region
(splitting's levels, cross-entropy IS's elite set). ``soft`` turns it into a
smooth surrogate of the indicator for gradients. Specs that are linear in the
model output also describe their region as {y : A y + b > 0 for all rows},
which is what the ``moments`` estimator integrates.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor

from .errors import InvalidArgumentError, ShapeMismatchError, UnsupportedError


class Spec(ABC):
    """A catastrophe specification: ``score(x, y) > 0`` iff catastrophic."""

    #: whether the score grades how close an input is to catastrophe (not just 0/1)
    continuous: bool = True

    @abstractmethod
    def score(self, x: Tensor, y: Tensor) -> Tensor:
        """(n, ...) inputs and (n, ...) model outputs -> (n,) scores."""

    def soft(self, x: Tensor, y: Tensor, temperature: float = 1.0) -> Tensor:
        """log of a smooth surrogate of 1[score > 0]: log sigmoid(score / temperature), (n,)."""
        return torch.nn.functional.logsigmoid(self.score(x, y) / temperature)

    def linear_region(self, out_dim: int) -> tuple[Tensor, Tensor]:
        """(A (m, out_dim), b (m,)) with catastrophe iff all(A @ y + b > 0)."""
        raise UnsupportedError(f"{type(self).__name__} is not linear in the model output")

    def check_output(self, y: Tensor) -> None:
        """Raise ShapeMismatchError if the model output cannot be scored."""


class ClassIs(Spec):
    """The model's argmax is class ``k``: score = y_k - max_{j != k} y_j.

    y has shape (n, classes); a token model's (n, vocab) logits work the same way.
    """

    def __init__(self, k: int):
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise InvalidArgumentError(f"k must be a non-negative int, got {k!r}")
        self.k = k

    def check_output(self, y: Tensor) -> None:
        if y.dim() != 2 or y.shape[1] < 2:
            raise ShapeMismatchError(
                f"ClassIs needs model outputs of shape (n, classes >= 2), got {tuple(y.shape)}"
            )
        if self.k >= y.shape[1]:
            raise ShapeMismatchError(
                f"ClassIs({self.k}) but the model has only {y.shape[1]} outputs"
            )

    def score(self, x: Tensor, y: Tensor) -> Tensor:
        self.check_output(y)
        target = y[:, self.k]
        others = torch.cat([y[:, : self.k], y[:, self.k + 1 :]], dim=1)
        return target - others.max(dim=1).values

    def linear_region(self, out_dim: int) -> tuple[Tensor, Tensor]:
        if self.k >= out_dim:
            raise ShapeMismatchError(f"ClassIs({self.k}) but the model has only {out_dim} outputs")
        others = [j for j in range(out_dim) if j != self.k]
        a = torch.zeros(len(others), out_dim, dtype=torch.float64)
        a[:, self.k] = 1.0
        a[torch.arange(len(others)), others] = -1.0
        return a, torch.zeros(len(others), dtype=torch.float64)

    def __repr__(self) -> str:
        return f"ClassIs({self.k})"


class OutputAbove(Spec):
    """``y[..., index] > threshold``: score = y[:, index] - threshold.

    ``index`` counts from 0; negative indices are refused (as ``ClassIs`` refuses
    them) rather than wrapping silently to the last outputs.
    """

    def __init__(self, index: int, threshold: float):
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise InvalidArgumentError(f"index must be a non-negative int, got {index!r}")
        try:
            self.threshold = float(threshold)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"threshold must be a number, got {threshold!r}") from exc
        if not torch.isfinite(torch.tensor(self.threshold)):
            raise InvalidArgumentError("threshold must be finite")
        self.index = index

    def check_output(self, y: Tensor) -> None:
        if y.dim() < 1 or y.dim() > 2:
            raise ShapeMismatchError(
                f"OutputAbove needs outputs (n,) or (n, m), got {tuple(y.shape)}"
            )
        width = 1 if y.dim() == 1 else y.shape[1]
        if self.index >= width:
            raise ShapeMismatchError(
                f"OutputAbove index {self.index} is out of range for outputs of width {width}"
            )

    def score(self, x: Tensor, y: Tensor) -> Tensor:
        self.check_output(y)
        col = y if y.dim() == 1 else y[:, self.index]
        return col - self.threshold

    def linear_region(self, out_dim: int) -> tuple[Tensor, Tensor]:
        if self.index >= out_dim:
            raise ShapeMismatchError(
                f"OutputAbove index {self.index} out of range for {out_dim} outputs"
            )
        a = torch.zeros(1, out_dim, dtype=torch.float64)
        a[0, self.index] = 1.0
        return a, torch.tensor([-self.threshold], dtype=torch.float64)

    def __repr__(self) -> str:
        return f"OutputAbove({self.index}, {self.threshold})"


class Predicate(Spec):
    """A black-box boolean ``fn(x, y) -> (n,) bool``: usable by plain sampling only."""

    continuous = False

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor]):
        if not callable(fn):
            raise InvalidArgumentError("fn must be callable")
        self.fn = fn

    def score(self, x: Tensor, y: Tensor) -> Tensor:
        out = torch.as_tensor(self.fn(x, y))
        if out.shape != (x.shape[0],):
            raise ShapeMismatchError(
                f"Predicate fn returned shape {tuple(out.shape)}; expected ({x.shape[0]},)"
            )
        if out.dtype != torch.bool:
            # a float or int answer is truthy wherever it is non-zero: read as a verdict, a margin
            # like y[:, 0] would make almost every input a catastrophe
            values = out[(out != 0) & (out != 1)]
            if values.numel():
                raise InvalidArgumentError(
                    f"Predicate fn must return booleans (or 0/1), got {out.dtype} values such as "
                    f"{values.flatten()[0].item():.4g}; return a bool tensor, e.g. y[:, 0] > t")
        return torch.where(out.bool(), 1.0, -1.0).double()

    def soft(self, x: Tensor, y: Tensor, temperature: float = 1.0) -> Tensor:
        raise UnsupportedError("Predicate is a black box: it has no smooth surrogate")

    def __repr__(self) -> str:
        return f"Predicate({getattr(self.fn, '__name__', 'fn')})"
