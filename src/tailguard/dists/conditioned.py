"""D0 restricted to where a recogniser fires: inputs we can recognise but not synthesise.

``Conditioned(base, recogniser)`` is base conditioned on R = {x : recogniser(x) > 0}.
When P_base[R] is 1e-10, rejection sampling would need 1e10 draws per sample, so this
distribution has no sampler at all. What it has is enough for the rare-event methods:
base's own sampler, density and moves, and R's graded score. ``tailguard.estimate``
turns P[C | R] into P_base[C and R] / P_base[R] and estimates both terms on base
(docs/design/010-conditioned.md says how their errors combine).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..errors import InvalidArgumentError, ModelOutputError, ShapeMismatchError, UnsupportedError
from .base import Distribution

Recogniser = Callable[[Tensor], Tensor] | nn.Module


class Conditioned(Distribution):
    """``base`` restricted to R = {x : recogniser(x) > 0}, normalised by P_base[R].

    recogniser: an nn.Module or callable mapping x (n, *event_shape) to scores (n,).
    Like a spec's score it should be graded (how close x is to being recognised), so
    that the rare-event methods can climb towards R; a plain 0/1 recogniser leaves
    them only plain sampling.
    """

    def __init__(self, base: Distribution, recogniser: Recogniser):
        if not isinstance(base, Distribution):
            raise InvalidArgumentError(
                f"base must be a tailguard distribution, got {type(base).__name__}"
            )
        if not callable(recogniser):
            raise InvalidArgumentError(
                f"recogniser must be an nn.Module or a callable x -> scores, got {type(recogniser).__name__}"
            )
        self.base = base
        self.recogniser = recogniser
        self.event_shape = base.event_shape

    @property
    def is_discrete(self) -> bool:
        return self.base.is_discrete

    def recognise(self, x: Tensor) -> Tensor:
        """The recogniser's scores (n,) float64 for x (n, *event_shape); x is in R iff > 0."""
        self.check_inputs(x)
        with torch.no_grad():
            try:
                s = self.recogniser(x)
            except (RuntimeError, ValueError, IndexError, TypeError) as exc:
                raise ShapeMismatchError(
                    f"the recogniser failed on inputs of shape {tuple(x.shape)}: {exc}"
                ) from exc
        if not isinstance(s, Tensor) or tuple(s.shape) != (x.shape[0],):
            shape = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
            raise ShapeMismatchError(
                f"the recogniser returned {shape} for {x.shape[0]} inputs; expected scores ({x.shape[0]},)"
            )
        if torch.isnan(s).any():
            raise ModelOutputError("the recogniser returned NaN scores")
        return s.double()

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        raise UnsupportedError(
            "Conditioned has no sampler (R may be far too rare for rejection); estimate with "
            "tg.estimate(model, D, spec) or tg.log_prob(model, D, spec, method='is'), which work on the base "
            "distribution and the recogniser's score"
        )

    def log_prob(self, x: Tensor) -> Tensor:
        """ln p_base(x) where R fires, -inf elsewhere: the density up to its constant -ln P_base[R].

        P_base[R] is unknown until estimated, so this is unnormalised; no estimator
        uses it as a density (they work on ``base``).
        """
        inside = self.recognise(x) > 0
        log_p = self.base.log_prob(x)
        return torch.where(inside.to(log_p.device), log_p, torch.full_like(log_p, -math.inf))

    def __repr__(self) -> str:
        name = getattr(self.recogniser, "__name__", type(self.recogniser).__name__)
        return f"Conditioned({self.base!r}, {name})"
