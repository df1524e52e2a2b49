"""Which backend, if any, runs whole pieces of work (draws, model calls, scores) for a model now.

Why a context variable: the oracle is built deep inside an estimator, long after
``tailguard.estimate`` chose the backend. A backend that can run work where the
model's copies live says so here for the duration of its ``serving(model)``, and
the oracle asks by model; nothing is passed through the estimators' signatures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import torch
from torch import nn

if TYPE_CHECKING:
    from ..oracle import ScoreOracle

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class ShardTask(Protocol[T_co]):
    """Work that runs whole beside one copy of the model: it draws, scores and returns a small result.

    Called with an oracle over that copy (same D, spec and checks as the caller's)
    and a generator of its own; it must draw every random number from that generator.
    """

    def __call__(self, oracle: ScoreOracle, generator: torch.Generator) -> T_co: ...


#: a function of the number of shards k giving k tasks (piece i of the work for shard i)
TasksFor = Callable[[int], Sequence[ShardTask[T]]]


class Sharder(Protocol):
    def run_tasks(self, oracle: ScoreOracle, tasks_for: TasksFor[Any],
                  generator: torch.Generator) -> tuple[list[Any], int] | None:
        """Each task's result, in order, and the model calls they made; None when the work cannot travel."""


_SHARDING: ContextVar[tuple[nn.Module, Sharder] | None] = ContextVar("tailguard_sharding", default=None)


def shares(total: int, k: int) -> list[int]:
    """``total`` (draws, runs, calls) cut into k whole shares that differ by at most one, larger first."""
    return [total // k + (i < total % k) for i in range(k)]


def sharder_for(model: nn.Module) -> Sharder | None:
    """The backend that runs tasks for this model now, if any."""
    active = _SHARDING.get()
    return active[1] if active is not None and active[0] is model else None


@contextmanager
def sharding(model: nn.Module, sharder: Sharder) -> Iterator[None]:
    """While inside, ``ScoreOracle.spread`` on this model hands its tasks to ``sharder``."""
    token = _SHARDING.set((model, sharder))
    try:
        yield
    finally:
        _SHARDING.reset(token)
