"""The default backend: the model runs in this process, batch by batch as the oracle sends them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn


class LocalBackend:
    """Calls the model itself; nothing is copied or sent anywhere."""

    name = "local"

    @contextmanager
    def serving(self, model: nn.Module) -> Iterator[None]:
        yield

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}
