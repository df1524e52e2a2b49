"""The one place where inputs meet the model: batching, dtype, call counting, checks.

Estimators never call the model directly. They ask a ScoreOracle for scores, so
model calls are counted the same way everywhere (one call = one input row pushed
through M) and bad model outputs are caught with a clear error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import Tensor, nn

from .backends.active import TasksFor, sharder_for
from .dists.base import Distribution
from .errors import InvalidArgumentError, ModelOutputError, ShapeMismatchError
from .specs import Spec

T = TypeVar("T")

@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put the model in eval mode for the duration, restoring its previous mode after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def model_dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    for p in model.parameters():
        return p.dtype, p.device
    return torch.get_default_dtype(), torch.device("cpu")


class ScoreOracle:
    """Scores inputs under (model, spec) and counts model calls.

    The oracle binds a model and a spec; the distribution the inputs come from is
    either fixed at construction (an estimator's D) or handed over per call
    (``dist=``), so one oracle serves every member of a family and keeps one call
    count across them (``for_model``). Inputs from D are checked against it.
    ``on_calls(n)`` is called after every batch with the number of rows it cost,
    which is how progress bars follow long estimates.
    """

    def __init__(
        self,
        model: nn.Module,
        dist: Distribution | None,
        spec: Spec,
        batch_size: int = 32_768,
        on_calls: Callable[[int], None] | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise ShapeMismatchError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self._dist = dist
        self.spec = spec
        self.batch_size = batch_size
        self.on_calls = on_calls
        self.n_calls = 0
        self.dtype, self.device = model_dtype_device(model)

    @property
    def dist(self) -> Distribution:
        """The fixed D of an estimator's oracle (an oracle ``for_model`` has none)."""
        if self._dist is None:
            raise InvalidArgumentError("this oracle has no fixed distribution; pass dist= with each call")
        return self._dist

    @classmethod
    def for_model(cls, model: nn.Module, spec: Spec, batch_size: int = 32_768) -> ScoreOracle:
        """An oracle with no fixed D: every call names the distribution its inputs come from."""
        return cls(model, None, spec, batch_size)

    def _source(self, x: Tensor, dist: Distribution | None) -> Distribution | None:
        """The distribution x is drawn from (the call's, else the oracle's), after checking x against it."""
        source = dist if dist is not None else self._dist
        if source is not None:
            source.check_inputs(x)
        return source

    def _prepare(self, x: Tensor, source: Distribution | None) -> Tensor:
        """x on the model's device; continuous inputs in its dtype, discrete ones (token ids) as they are."""
        discrete = source.is_discrete if source is not None else not x.is_floating_point()
        if discrete:
            return x.to(self.device)
        return x.to(device=self.device, dtype=self.dtype)

    def outputs(self, x: Tensor, dist: Distribution | None = None) -> Tensor:
        """Model outputs for x (n, *event_shape), in one pass, with autograd left on."""
        source = self._source(x, dist)
        n = x.shape[0]
        try:
            y = self.model(self._prepare(x, source))
        except (RuntimeError, ValueError, IndexError, TypeError) as exc:
            origin = f" drawn from {source!r}" if source is not None else ""
            raise ShapeMismatchError(
                f"the model failed on inputs of shape {tuple(x.shape)}{origin}: {exc}"
            ) from exc
        self.n_calls += n
        if self.on_calls is not None:
            self.on_calls(n)
        if not isinstance(y, Tensor) or y.dim() == 0 or y.shape[0] != n:
            shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ModelOutputError(f"the model returned {shape} for a batch of {n} inputs")
        bad = ~torch.isfinite(y.detach())
        if bad.any():
            rows = int(bad.reshape(n, -1).any(1).sum())
            raise ModelOutputError(f"the model returned NaN or inf for {rows} of {n} inputs")
        return y

    def spread(self, tasks_for: TasksFor[T], generator: torch.Generator) -> list[T]:
        """Results of whole tasks (draw, score, reduce): one per worker of the backend serving the
        model, each with a seed drawn from ``generator``; else one task run here with ``generator``.

        Work that can run whole beside a copy of the model (plain sampling's counts,
        importance sampling's final stage, splitting's independent repeats) sends the
        workers a seed and gets back scores or counts, not inputs and outputs, so this
        process stays nearly idle. The calls the workers made are counted here.
        """
        sharder = sharder_for(self.model)
        done = sharder.run_tasks(self, tasks_for, generator) if sharder is not None else None
        if done is None:
            return [task(self, generator) for task in tasks_for(1)]
        results, calls = done
        self.n_calls += calls
        if self.on_calls is not None:
            self.on_calls(calls)
        return results

    def features(self, x: Tensor, fn: Callable[[Tensor], Tensor], dist: Distribution | None = None) -> Tensor:
        """``fn`` (a part of the model, e.g. its final activations) on x, batched, counted as model calls."""
        source = self._source(x, dist)
        parts = []
        with torch.no_grad(), eval_mode(self.model):
            for start in range(0, x.shape[0], self.batch_size):
                chunk = x[start : start + self.batch_size]
                out = fn(self._prepare(chunk, source))
                self.n_calls += chunk.shape[0]
                if self.on_calls is not None:
                    self.on_calls(chunk.shape[0])
                if not torch.isfinite(out).all():
                    raise ModelOutputError("the model's activations hold NaN or inf")
                parts.append(out.double().cpu())
        return torch.cat(parts)

    def scores_with_grad(self, x: Tensor, dist: Distribution | None = None) -> Tensor:
        """Scores (n,) float64 with gradients to the model (one batch, for differentiable use)."""
        y = self.outputs(x, dist)
        return self._check_scores(self.spec.score(x, y), x.shape[0]).double()

    def scores(self, x: Tensor, dist: Distribution | None = None) -> Tensor:
        """Scores (n,) float64, batched, without gradients."""
        parts = []
        with torch.no_grad(), eval_mode(self.model):
            for start in range(0, x.shape[0], self.batch_size):
                chunk = x[start : start + self.batch_size]
                s = self.spec.score(chunk, self.outputs(chunk, dist))
                parts.append(self._check_scores(s, chunk.shape[0]).double().cpu())
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)

    @staticmethod
    def _check_scores(s: Tensor, n: int) -> Tensor:
        if not isinstance(s, Tensor) or s.shape != (n,):
            shape = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
            raise ShapeMismatchError(f"the spec returned scores of shape {shape}; expected ({n},)")
        if torch.isnan(s).any():
            raise ModelOutputError("the spec returned NaN scores")
        return s
