"""Estimators of P[C]; importing this package registers every one of them."""

from . import mc  # noqa: F401
from . import splitting  # noqa: F401
from . import importance  # noqa: F401
from . import moments  # noqa: F401
