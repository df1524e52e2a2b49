"""How a batch of inputs becomes model outputs: in this process, or sharded over Ray workers.

Estimators and the ScoreOracle stay unaware of where the model runs: while
``tailguard.estimate`` holds a backend's ``serving(model)`` context, calling the
model (the very module the estimators inspect) runs its forward pass where the
backend puts it. A backend may only change where a no-grad forward pass runs,
never what it computes: passes that build an autograd graph (the gradient steps
of ``is``' mode search, ``tsis``' gradient pass, ``log_prob``) always run on the
model in this process.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

from torch import nn

from ..errors import InvalidArgumentError
from .local import LocalBackend
from .ray import RayBackend


@runtime_checkable
class Backend(Protocol):
    name: str

    def serving(self, model: nn.Module) -> AbstractContextManager[None]:
        """Inside the context, the model's no-grad forward passes run where this backend puts them."""

    def describe(self) -> dict[str, Any]:
        """The settings that, with the seed, fix the result (recorded in the Estimate)."""


#: the names ``estimate(backend=...)`` accepts, each built with its defaults
BACKENDS: dict[str, Callable[[], Backend]] = {"local": LocalBackend, "ray": RayBackend.shared}


def resolve_backend(backend: str | Backend) -> Backend:
    """A backend from its name or passed through; anything else names the choices."""
    if isinstance(backend, str) and backend in BACKENDS:
        return BACKENDS[backend]()
    if not isinstance(backend, str) and isinstance(backend, Backend):
        return backend
    raise InvalidArgumentError(
        f"backend must be one of {sorted(BACKENDS)} or a backend object "
        f"(LocalBackend(), RayBackend(shards=...)), got {backend!r}"
    )


__all__ = ["BACKENDS", "Backend", "LocalBackend", "RayBackend", "resolve_backend"]
